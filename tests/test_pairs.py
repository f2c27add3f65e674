"""Training pairs and evaluation views: actions, distinct views, determinism, DDP sharding, DataLoader
workers, iter_views coverage, to_model_input."""

import numpy as np
import pytest
import torch

from ctxssl_cli.data import rotations
from ctxssl_cli.data.pairs import PairBatchDataset, PairSampler, iter_views, to_model_input
from ctxssl_cli.data.prepared import PreparedDataset, PreparedWriter, encode_views
from ctxssl_cli.errors import CtxsslError

V, R, N = 5, 8, 26


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs") / "d"
    rng = np.random.default_rng(0)
    lat = np.empty((N, V, 7), np.float32)
    lat[..., :3] = rng.uniform(-1.5, 1.5, (N, V, 3))
    lat[..., 3:] = rng.uniform(0, 0.7, (N, V, 4))
    w = PreparedWriter(root, dataset="synthetic", resolution=R, codec="raw", settings={})
    w.plan(n_views=V, classes=["a", "b", "c"], splits={"train": ([f"s/{i}" for i in range(N)], np.arange(N) % 3)},
           split_source="test", source={})
    for c in w.pending():
        # each image encodes its (object, view) so the tests can check which image came back
        objs = []
        for i in range(c.start, c.stop):
            imgs = np.stack([np.full((R, R, 3), (i, v, 7), np.uint8) for v in range(V)])  # (V, H, W, 3)
            objs.append((encode_views(imgs, "raw")[0], lat[i], np.zeros((3, 256), np.int64)))
        w.write_chunk(c, objs)
    w.finalize()
    return PreparedDataset(root).split("train")


def _ids(images):  # (B, 3, H, W) uint8 -> (obj, view) written into the pixels
    return images[:, 0, 0, 0].numpy().astype(int), images[:, 1, 0, 0].numpy().astype(int)


def test_pairs_actions_targets_and_images(split):
    s = PairSampler(split, global_batch_size=8, seed=3)
    assert s.steps_per_epoch == N // 8
    b = s.batch(epoch=0, step=1)
    obj, vx, vy = b.obj.numpy(), b.view_x.numpy(), b.view_y.numpy()
    assert (vx != vy).all() and len(set(obj.tolist())) == 8
    lx, ly = split.latents[obj, vx], split.latents[obj, vy]
    np.testing.assert_array_equal(b.action.numpy(), rotations.relative_action(lx, ly))
    np.testing.assert_array_equal(b.target_x.numpy(), rotations.absolute_latent(lx))
    np.testing.assert_array_equal(b.target_y.numpy(), rotations.absolute_latent(ly))
    assert b.action.dtype == torch.float32 and b.action.shape == (8, 6)
    assert b.label.tolist() == (obj % 3).tolist() and b.label.dtype == torch.int64
    assert (_ids(b.x)[0] == obj).all() and (_ids(b.x)[1] == vx).all()
    assert (_ids(b.y)[0] == obj).all() and (_ids(b.y)[1] == vy).all()
    raw = PairSampler(split, 8, seed=3, canonical_quat=False).batch(0, 1)
    np.testing.assert_array_equal(raw.action.numpy(), rotations.relative_action(lx, ly, canonical=False))
    assert (b.action[:, 3] >= 0).all()


def test_views_distinct_and_cover_all_pairs(split):
    s = PairSampler(split, global_batch_size=26, seed=0)
    pairs = set()
    for e in range(60):
        b = s.batch(e, 0)
        assert (b.view_x != b.view_y).all()
        pairs |= set(zip(b.view_x.tolist(), b.view_y.tolist()))
    assert len(pairs) == V * (V - 1)  # every ordered pair of distinct views is drawn


def test_deterministic_and_epochs_are_permutations(split):
    a, b = PairSampler(split, 8, seed=5), PairSampler(split, 8, seed=5)
    for e, st in [(0, 0), (0, 2), (3, 1)]:
        x, y = a.batch(e, st), b.batch(e, st)
        for f in ("x", "y", "action", "obj", "view_x", "view_y"):
            assert torch.equal(getattr(x, f), getattr(y, f))
    assert not torch.equal(a.batch(0, 0).obj, a.batch(1, 0).obj)
    assert not torch.equal(a.batch(0, 0).obj, PairSampler(split, 8, seed=6).batch(0, 0).obj)
    seen = np.concatenate([a.batch(2, st).obj.numpy() for st in range(a.steps_per_epoch)])
    assert len(seen) == len(set(seen.tolist())) == 24  # no object twice in an epoch; ragged tail dropped
    with pytest.raises(IndexError):
        a.batch(0, a.steps_per_epoch)


def test_ddp_ranks_disjoint_and_concat_equals_one_process(split):
    one = PairSampler(split, 12, seed=1)
    ranks = [PairSampler(split, 12, seed=1, rank=r, world_size=2) for r in range(2)]
    for e, st in [(0, 0), (4, 1)]:
        full, parts = one.batch(e, st), [r.batch(e, st) for r in ranks]
        assert not set(parts[0].obj.tolist()) & set(parts[1].obj.tolist())
        for f in ("x", "y", "action", "target_x", "target_y", "label", "obj", "view_x", "view_y"):
            assert torch.equal(torch.cat([getattr(p, f) for p in parts]), getattr(full, f)), f


def test_bad_batch_setups(split):
    with pytest.raises(CtxsslError, match="does not divide"):
        PairSampler(split, 9, seed=0, rank=0, world_size=2)



def test_batch_larger_than_the_split(split):
    s = PairSampler(split, 2 * N + 4, seed=0)  # several permutations end to end, one step per epoch
    assert s.steps_per_epoch == 1
    obj = s.batch(0, 0).obj.numpy()
    assert len(obj) == 2 * N + 4 and set(obj.tolist()) == set(range(N))
    assert np.array_equal(s.permutation(0)[:N], PairSampler(split, 4, seed=0).permutation(0))


@pytest.mark.parametrize("workers", [2])
def test_dataloader_workers_do_not_change_batches(split, workers):
    s = PairSampler(split, 6, seed=2)
    ref = list(torch.utils.data.DataLoader(PairBatchDataset(s, epoch=1), batch_size=None, num_workers=0))
    got = list(torch.utils.data.DataLoader(PairBatchDataset(s, epoch=1), batch_size=None, num_workers=workers))
    assert len(ref) == len(got) == s.steps_per_epoch
    for a, b in zip(ref, got):
        for f in ("x", "y", "action", "obj", "view_x", "view_y", "label"):
            assert torch.equal(getattr(a, f), getattr(b, f))
    tail = PairBatchDataset(s, epoch=1, start_step=2)
    assert len(tail) == s.steps_per_epoch - 2 and torch.equal(tail[0].obj, ref[2].obj)
    moved = ref[0].to("cpu")
    assert torch.equal(moved.x, ref[0].x) and len(moved) == 6


def test_iter_views_covers_every_view_once_with_ragged_tail(split):
    batches = list(iter_views(split, batch_size=7))
    assert [len(o) for o, _, _ in batches] == [7] * (N * V // 7) + [N * V % 7]
    obj = np.concatenate([o for o, _, _ in batches])
    view = np.concatenate([v for _, v, _ in batches])
    assert (obj * V + view).tolist() == list(range(N * V))  # object-major, each exactly once
    imgs = torch.cat([im for _, _, im in batches])
    assert (_ids(imgs)[0] == obj).all() and (_ids(imgs)[1] == view).all()


def test_to_model_input():
    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.1, 0.25)
    y = to_model_input(x, mean, std)
    want = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert y.dtype == torch.float32 and torch.allclose(y, want, atol=1e-5)
    z = to_model_input(x, mean, std, size=8)
    assert z.shape == (2, 3, 8, 8)
    flat = torch.full((1, 3, 16, 16), 200, dtype=torch.uint8)
    assert torch.allclose(to_model_input(flat, mean, std, size=8), to_model_input(flat[..., :8, :8], mean, std))
