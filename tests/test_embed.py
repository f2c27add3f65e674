"""Embedding: determinism, KV-cached contexts, context files, integrity, dataset/checkpoint mismatches."""

import pickle

import numpy as np
import pytest
import torch

from ctxssl_cli import embed
from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.runs import load_run
from ctxssl_cli.spec import load_spec
from ctxssl_cli.train.dist import DistInfo
from ctxssl_cli.train.loop import pretrain

TINY = ["train.batch_size=16", "model.block_size=8", "model.n_embd=32", "model.n_layer=1", "model.n_head=2",
        "model.encoder=convnet", "model.aux_hidden=32", "data.workers=0", "train.max_steps=2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from ctxssl_cli.data.prepared import PreparedDataset
    from ctxssl_cli.data.synthetic import prepare_synthetic

    tmp = tmp_path_factory.mktemp("embed")
    prepare_synthetic(tmp / "s", classes=3, objects_per_class=6, views=5, resolution=16, seed=0, workers=1,
                      progress=False)
    pretrain(load_spec("rotcolor", TINY), PreparedDataset(tmp / "s"), tmp / "run", DistInfo())
    return load_run(tmp / "run", None, torch.device("cpu"))


def test_lengths_are_checked(run):
    assert embed.check_lengths([2, 0, 2], 8) == [0, 2]
    with pytest.raises(CtxsslError, match="even"):
        embed.check_lengths([3], 8)
    with pytest.raises(CtxsslError, match="block size"):
        embed.check_lengths([8], 8)
    assert embed.default_lengths(32) == [0, 2, 14, 30]


def test_embed_is_deterministic_and_matches_an_uncached_forward(run):
    ctx = embed.default_context(run)
    a = embed.embed_split(run, "val", ["rotation", "none"], [0, 2, 6], ctx, retrieval=True)
    b = embed.embed_split(run, "val", ["rotation", "none"], [0, 2, 6], ctx, retrieval=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    split = run.data.split("val")
    n, v = split.n_objects, split.n_views
    assert a["h"].shape[:2] == (n, v) and a["z.rotation.6"].shape[:2] == (n, v)  # nothing dropped
    # the cached-context path equals running [context, query] through the transformer as one sequence
    m = run.model
    k = 3  # pairs of context for length 6
    ctx_h = embed.encode_views(run, "train", np.concatenate([ctx.obj[:k], ctx.obj[:k]]),
                           np.concatenate([ctx.view_a[:k], ctx.view_b[:k]]), 64)
    keep = embed.mode_mask("rotation")
    tokens = m.make_tokens(ctx_h[:k], ctx_h[k:], torch.as_tensor(ctx.action[:k]) * keep, k)[0]  # (6, F+A)
    q = a["h"][1, 2]
    seq = torch.cat([tokens, torch.cat([q, torch.zeros(6)])[None]])[None]  # (1, 7, F+A)
    from ctxssl_cli.model.context import pair_attention_mask

    mask = pair_attention_mask(1, 4, 0.0, None)[:, :7, :7]  # the query sits at an x position of pair 4
    with torch.no_grad():
        full = torch.nn.functional.normalize(m.transformer(seq, mask)[0, -1], dim=-1)
    assert torch.allclose(full, a["z.rotation.6"][1, 2], atol=1e-5)
    # a query under a 'none' context of length 0 ignores the context entirely: the same for every mode
    assert torch.allclose(a["z.none.0"], a["z.rotation.0"])


def test_context_file(run, tmp_path):
    split = run.data.split("train")
    f = tmp_path / "ctx.yaml"
    f.write_text(f"pairs:\n  - {{object: '{split.object_ids[1]}', from: 0, to: 3}}\n  - {{object: 2, from: 4, to: 1}}\n")
    ctx = embed.load_context_file(run, f)
    assert ctx.obj.tolist() == [1, 2] and ctx.view_a.tolist() == [0, 4] and ctx.view_b.tolist() == [3, 1]
    for text, words in [("pairs: []\n", "no 'pairs'"),
                        ("pairs:\n  - {object: 'nope/1', from: 0, to: 1}\n", "not in split"),
                        ("pairs:\n  - {object: 0, from: 0, to: 99}\n", "to=99"),
                        ("pairs:\n  - {object: 0, from: 0}\n", "exactly the keys"),
                        ("split: test\npairs:\n  - {object: 0, from: 0, to: 1}\n", "test"),
                        ("extra: 1\npairs:\n  - {object: 0, from: 0, to: 1}\n", "unknown key")]:
        f.write_text(text)
        with pytest.raises(CtxsslError, match=words):
            embed.load_context_file(run, f)


def test_embeddings_file_integrity(run, tmp_path):
    ctx = embed.default_context(run)
    t = embed.embed_split(run, "val", ["color"], [0], ctx)
    meta = embed.embeddings_metadata(run, "val", ["color"], [0], ctx, False, None)
    path = tmp_path / "e.safetensors"
    embed.save_embeddings(path, t, meta)
    back, m = embed.load_embeddings(path)
    assert torch.equal(back["h"], t["h"]) and m["checkpoint_sha256"] == run.checkpoint_sha256
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CtxsslError, match="integrity"):
        embed.load_embeddings(path)
    path.write_bytes(pickle.dumps({"h": [1, 2, 3]}))
    with pytest.raises(CtxsslError, match="not a readable safetensors"):
        embed.load_embeddings(path)
    with pytest.raises(CtxsslError, match=r"\.safetensors"):
        embed.save_embeddings(tmp_path / "e.pt", t, meta)


def test_checkpoint_and_dataset_mismatch(run, tmp_path):
    from ctxssl_cli.data.synthetic import prepare_synthetic

    prepare_synthetic(tmp_path / "other", classes=4, objects_per_class=3, views=5, resolution=16, seed=0,
                      workers=1, progress=False)
    with pytest.raises(CtxsslError, match="3 classes"):
        load_run(run.checkpoint, tmp_path / "other", torch.device("cpu"))
    with pytest.raises(CtxsslError, match="split"):
        run.data.split("test")


def test_a_streamed_file_holds_the_split_in_memory(run, tmp_path):
    """embed_split_into a StreamWriter (z and q in pieces of 4 x batch_size queries, z at c = 0 copied within
    the file) writes the tensors embed_split makes in memory; a retrieval query with no action revealed is its
    object's view 0 (checks the view-0 gather behind q)."""
    ctx = embed.default_context(run)
    modes, lengths = ["rotation", "none"], [0, 2, 6]
    mem = embed.embed_split(run, "val", modes, lengths, ctx, retrieval=True)  # one piece per tensor
    path = tmp_path / "e.safetensors"
    meta = embed.embeddings_metadata(run, "val", modes, lengths, ctx, True, None)
    with embed.embeddings_writer(path, meta, embed.n_tensors(modes, lengths, True)) as w:
        embed.embed_split_into(w, run, "val", modes, lengths, ctx, retrieval=True, batch_size=2)  # pieces of 8
    back, _ = embed.load_embeddings(path)
    assert set(back) == set(mem)
    for k in mem:
        assert back[k].dtype == mem[k].dtype and torch.allclose(back[k], mem[k], atol=1e-5), k
    assert torch.equal(back["z.none.0"], back["z.rotation.0"])
    q, z = back["q.none.6"], back["z.none.6"]
    assert torch.allclose(q, z[:, :1].expand_as(q), atol=1e-5)
