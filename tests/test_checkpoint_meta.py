"""Checkpoint format 2: the sha256 covers the metadata (step, spec and its meta block, param_groups), format-1
files are refused with the fix, embeddings files are covered the same way, CUDA RNG states restore in device
order."""

import json

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ctxssl_cli import checkpoint as C
from ctxssl_cli.checkpoint import content_hash, load_checkpoint, restore_rng, save_checkpoint
from ctxssl_cli.errors import CtxsslError

SPEC = yaml.safe_dump({"name": "x", "meta": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                                             "data_manifest_sha256": "ab" * 32}}, sort_keys=False)


def _saved(tmp_path):
    torch.manual_seed(0)
    m = nn.Linear(3, 2)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    m(torch.randn(4, 3)).sum().backward()
    opt.step()
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, m, opt, SPEC, {"step": 3, "epoch": 0})
    return path


def _rewrite(path, edit):
    """Rewrite `path` with its tensors unchanged and `edit(meta)` as metadata (content_sha256 kept as stored)."""
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    edit(meta)
    save_file(tensors, str(path), metadata=meta)


def _edit_spec_meta(key, value):
    def edit(meta):
        spec = yaml.safe_load(meta["spec"])
        spec["meta"][key] = value
        meta["spec"] = yaml.safe_dump(spec, sort_keys=False)
    return edit


def _edit_lr(meta):
    groups = json.loads(meta["param_groups"])
    groups[0]["lr"] = 1.0
    meta["param_groups"] = json.dumps(groups)


@pytest.mark.parametrize("edit", [
    lambda meta: meta.update(step="999"),
    _edit_spec_meta("mean", [0.0, 0.0, 0.0]),
    _edit_spec_meta("data_manifest_sha256", "cd" * 32),
    _edit_lr,
    lambda meta: meta.update(extra="added"),
    lambda meta: meta.pop("epoch"),
], ids=["step", "spec-meta-mean", "spec-meta-data_manifest_sha256", "param_groups", "added-key", "removed-key"])
def test_edited_metadata_fails_the_integrity_check(tmp_path, edit):
    path = _saved(tmp_path)
    assert load_checkpoint(path).step == 3  # untouched: fine
    _rewrite(path, edit)
    with pytest.raises(CtxsslError, match="failed its integrity check"):
        load_checkpoint(path)
    load_checkpoint(path, verify=False)  # a quick look at the metadata still works


def test_the_stored_hash_covers_every_other_key_and_the_tensors(tmp_path):
    path = _saved(tmp_path)
    ck = load_checkpoint(path)
    assert ck.meta["format_version"] == C.FORMAT_VERSION == "2"
    assert ck.meta["content_sha256"] == content_hash(ck.tensors, ck.meta)
    assert ck.meta["content_sha256"] != content_hash(ck.tensors)  # not the tensors-only hash of format 1
    # the hash does not depend on the order of the metadata keys
    assert content_hash(ck.tensors, dict(reversed(list(ck.meta.items())))) == ck.meta["content_sha256"]


def test_format_1_checkpoint_is_refused_with_the_fix(tmp_path):
    path = _saved(tmp_path)

    def as_format_1(meta):  # what ctxssl wrote before: version 1, a tensors-only sha256
        meta["format_version"] = "1"
        meta["content_sha256"] = content_hash(load_file(str(path)))

    _rewrite(path, as_format_1)
    with pytest.raises(CtxsslError, match="format 1.*does not cover its metadata") as e:
        load_checkpoint(path)
    assert "train the run again" in e.value.message


def test_future_format_is_refused(tmp_path):
    path = _saved(tmp_path)
    _rewrite(path, lambda meta: meta.update(format_version="3"))
    with pytest.raises(CtxsslError, match="format 3"):
        load_checkpoint(path)


def test_embeddings_metadata_is_covered_too(tmp_path):
    from ctxssl_cli.embed import load_embeddings, save_embeddings

    path = tmp_path / "e.safetensors"
    save_embeddings(path, {"z.rotation.0": torch.randn(3, 2, 4)},
                    {"format": "ctxssl-embeddings", "split": "val", "checkpoint_sha256": "ab" * 32})
    tensors, meta = load_embeddings(path)
    assert meta["split"] == "val"
    _rewrite(path, lambda m: m.update(split="train"))
    with pytest.raises(CtxsslError, match="failed its integrity check"):
        load_embeddings(path)


def test_restore_rng_orders_cuda_states_by_device_number(tmp_path, monkeypatch):
    n = 12  # rng.cuda.10 and rng.cuda.11 sort before rng.cuda.2 as text
    tensors = {"rng.torch_cpu": torch.get_rng_state()}
    for i in range(n):
        tensors[f"rng.cuda.{i}"] = torch.full((4,), i, dtype=torch.uint8)
    ck = C.Checkpoint(path=tmp_path / "c.safetensors", tensors=tensors, meta={})
    got = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: got.extend(states))
    restore_rng(ck)
    assert [int(s[0]) for s in got] == list(range(n))
