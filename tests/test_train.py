"""Training: schedules, environments, DDP equivalence (2 gloo processes), exact resume, non-finite stop."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from ctxssl_cli.checkpoint import load_checkpoint
from ctxssl_cli.data.pairs import PairBatch
from ctxssl_cli.errors import CtxsslError, NonFiniteLossError
from ctxssl_cli.spec import load_spec
from ctxssl_cli.train.dist import DistInfo
from ctxssl_cli.model.build import build_model
from ctxssl_cli.train.loop import pretrain
from ctxssl_cli.schedule import warmup_cosine
from ctxssl_cli.data.schema import revealed_mask
from ctxssl_cli.train.step import compute_loss, sample_env, step_mask

TINY = ["train.batch_size=16", "model.block_size=8", "model.n_embd=32", "model.n_layer=1", "model.n_head=2",
        "model.encoder=convnet", "model.aux_hidden=32", "data.workers=0"]


def test_warmup_cosine_shape():
    lrs = warmup_cosine(1.0, 100, 10)
    assert lrs[9] == pytest.approx(1.0) and lrs[0] == pytest.approx(0.1)
    assert np.all(np.diff(lrs[10:]) <= 1e-12) and lrs[-1] < 1e-3
    assert len(warmup_cosine(1.0, 4, 40)) == 4  # warm-up longer than the run is cut to the run


def test_environment_sampling_follows_the_mixture():
    envs = {"rotation": 0.25, "invariant": 0.75}
    draws = [sample_env(envs, 0, s) for s in range(4000)]
    assert abs(draws.count("rotation") / 4000 - 0.25) < 0.03
    assert draws == [sample_env(envs, 0, s) for s in range(4000)]  # a pure function of (seed, step)
    assert revealed_mask("rotation", 6).tolist() == [True] * 4 + [False] * 2
    assert revealed_mask("color", 6).tolist() == [False] * 4 + [True] * 2
    assert not revealed_mask("invariant", 6).any()


def _batch(n, res=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    act = torch.randn(n, 6, generator=g)
    return PairBatch(x=torch.randint(0, 256, (n, 3, res, res), dtype=torch.uint8, generator=g),
                     y=torch.randint(0, 256, (n, 3, res, res), dtype=torch.uint8, generator=g),
                     action=act, target_x=torch.randn(n, 6, generator=g), target_y=torch.randn(n, 6, generator=g),
                     label=torch.zeros(n, dtype=torch.int64), obj=torch.arange(n), view_x=torch.zeros(n, dtype=torch.int64),
                     view_y=torch.ones(n, dtype=torch.int64))


def _step_grads(spec, batch, info, fwd, model):
    mask = step_mask(spec, 3, spec.train.batch_size // spec.pairs_per_seq, info, info.device)
    out = compute_loss(fwd, batch, spec, "rotcolor", mask, info, (0.5,) * 3, (0.25,) * 3, 16, None)
    out.loss.backward()
    return out.loss.detach(), {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


# The published defaults (a fresh mask per layer, clamped cosines) and the alternatives, for the equivalence
# and resume tests.
MASK_AND_CLAMP = [[], ["train.mask_draw=per_sequence", "train.nce_clamp=false"]]


def _ddp_worker(rank, world, port, path, extra):
    from safetensors.torch import save_file
    from torch.nn.parallel import DistributedDataParallel as DDP

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    spec = load_spec("demo", TINY + extra)
    torch.manual_seed(0)
    model = build_model(spec, 6)
    model.encoder.eval()  # BatchNorm with running stats: per-rank batch statistics would differ by design
    info = DistInfo(rank=rank, world_size=world)
    full = _batch(16)
    n = 16 // world
    local = PairBatch(**{k: getattr(full, k)[rank * n:(rank + 1) * n] for k in full.__dataclass_fields__})
    loss, grads = _step_grads(spec, local, info, DDP(model), model)
    losses = [torch.zeros(()) for _ in range(world)]
    torch.distributed.all_gather(losses, loss)
    if rank == 0:
        save_file({"loss": torch.stack(losses).mean(), **grads}, path)
    torch.distributed.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("extra", MASK_AND_CLAMP, ids=["published", "per_sequence-unclamped"])
def test_two_process_step_equals_one_process_step(tmp_path, extra):
    """InfoNCE negatives are gathered across ranks with correct gradients (no 1/world_size error), and both
    mask draws give every rank its part of the one global mask."""
    from safetensors.torch import load_file

    path = str(tmp_path / "ddp.safetensors")
    mp.spawn(_ddp_worker, args=(2, _free_port(), path, extra), nprocs=2, join=True)
    ddp = load_file(path)
    spec = load_spec("demo", TINY + extra)
    assert spec.train.mask_prob > 0  # the draw is exercised
    torch.manual_seed(0)
    model = build_model(spec, 6)
    model.encoder.eval()
    loss, grads = _step_grads(spec, _batch(16), DistInfo(), model, model)
    assert ddp["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    for k, g in grads.items():
        # float32 sums in another order: the error is relative to the tensor's scale, not to each element (a bias
        # gradient of max 15 differed by 3.6e-6 in an element near 0); a 1/world_size error would be 50% off
        scale = max(1.0, g.abs().max().item())
        assert torch.allclose(ddp[k], g, rtol=1e-4, atol=1e-6 * scale), (k, (ddp[k] - g).abs().max().item(), scale)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from ctxssl_cli.data.prepared import PreparedDataset
    from ctxssl_cli.data.synthetic import prepare_synthetic

    root = tmp_path_factory.mktemp("data") / "s"
    prepare_synthetic(root, classes=4, objects_per_class=10, views=6, resolution=16, seed=0, workers=1, progress=False)
    return PreparedDataset(root)


def _spec(steps, extra=()):
    return load_spec("rotation", TINY + [f"train.max_steps={steps}", "train.checkpoint_every=1",
                                         "train.warmup_epochs=1", "train.lr=1e-3", *extra])


def _tensors(run_dir):
    return load_checkpoint(run_dir).tensors


@pytest.mark.parametrize("extra", MASK_AND_CLAMP, ids=["published", "per_sequence-unclamped"])
def test_resume_after_crash_is_bit_exact(tiny_data, tmp_path, monkeypatch, extra):
    pretrain(_spec(6, extra), tiny_data, tmp_path / "full", DistInfo())
    import ctxssl_cli.train.loop as loop

    real = loop.sample_env

    def crash_at_4(envs, seed, step):
        if step == 4:
            raise RuntimeError("simulated crash")
        return real(envs, seed, step)

    monkeypatch.setattr(loop, "sample_env", crash_at_4)
    with pytest.raises(RuntimeError, match="simulated"):
        pretrain(_spec(6, extra), tiny_data, tmp_path / "cut", DistInfo())
    assert load_checkpoint(tmp_path / "cut").step == 4
    monkeypatch.setattr(loop, "sample_env", real)
    pretrain(_spec(6, extra), tiny_data, tmp_path / "cut", DistInfo(), resume=True)
    a, b = _tensors(tmp_path / "full"), _tensors(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        if not k.startswith("rng."):
            assert torch.equal(a[k], b[k]), k


def test_resume_refuses_a_changed_spec_and_new_run_refuses_existing(tiny_data, tmp_path):
    pretrain(_spec(2), tiny_data, tmp_path / "r", DistInfo())
    with pytest.raises(CtxsslError, match="train.mask_prob"):
        pretrain(_spec(4, ["train.mask_prob=0.5"]), tiny_data, tmp_path / "r", DistInfo(), resume=True)
    with pytest.raises(CtxsslError, match="already holds a run"):
        pretrain(_spec(2), tiny_data, tmp_path / "r", DistInfo())
    summary = pretrain(_spec(4), tiny_data, tmp_path / "r", DistInfo(), resume=True)  # longer: allowed
    assert summary["final_step"] == 4 and load_checkpoint(tmp_path / "r").step == 4


def test_resume_refuses_a_dataset_that_changed_since_the_checkpoint(tiny_data, tmp_path):
    from ctxssl_cli.data.prepared import PreparedDataset
    from ctxssl_cli.data.synthetic import prepare_synthetic

    pretrain(_spec(2), tiny_data, tmp_path / "r", DistInfo())
    other = tmp_path / "other"  # same shapes, another seed: other images, another manifest
    prepare_synthetic(other, classes=4, objects_per_class=10, views=6, resolution=16, seed=1, workers=1,
                      progress=False)
    with pytest.raises(CtxsslError, match="not the one"):
        pretrain(_spec(4), PreparedDataset(other), tmp_path / "r", DistInfo(), resume=True)
    assert load_checkpoint(tmp_path / "r").step == 2  # nothing trained, nothing written
    assert pretrain(_spec(4), tiny_data, tmp_path / "r", DistInfo(), resume=True)["final_step"] == 4


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    import ctxssl_cli.train.loop as loop

    real = loop.compute_loss

    def nan_at_3(fwd, batch, spec, env, mask, info, *a, **k):
        out = real(fwd, batch, spec, env, mask, info, *a, **k)
        if nan_at_3.calls == 3:
            out.loss = out.loss * float("nan")
        nan_at_3.calls += 1
        return out

    nan_at_3.calls = 0
    monkeypatch.setattr(loop, "compute_loss", nan_at_3)
    with pytest.raises(NonFiniteLossError, match="step 3"):
        pretrain(_spec(6), tiny_data, tmp_path / "n", DistInfo())
    assert load_checkpoint(tmp_path / "n").step == 3


def test_short_run_lowers_the_loss(tiny_data, tmp_path):
    import json

    pretrain(_spec(30, ["train.log_every=1", "train.envs={rotcolor: 1.0}", "train.mask_prob=0.0"]),
             tiny_data, tmp_path / "l", DistInfo())
    rows = [json.loads(line) for line in (tmp_path / "l" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 30
    first, last = np.mean([r["loss"] for r in rows[:5]]), np.mean([r["loss"] for r in rows[-5:]])
    assert last < first


def test_aux_target_encodings():
    from ctxssl_cli.data.rotations import absolute_latent, euler_xyz_to_matrix
    from ctxssl_cli.train.step import aux_revealed, aux_target

    rng = np.random.default_rng(0)
    lat = np.concatenate([rng.uniform(-1.5, 1.5, (20, 3)), rng.uniform(0, 1, (20, 1)), rng.uniform(0, 0.7, (20, 1)),
                          rng.uniform(0, 6, (20, 1)), rng.uniform(0, 1, (20, 1))], axis=1)
    t6 = torch.as_tensor(absolute_latent(lat))
    spec = load_spec("demo", ["train.aux_rotation=matrix", "train.aux_hue=circular"])
    t = aux_target(t6, spec)
    assert t.shape == (20, 13)
    assert torch.allclose(t[:, :9], torch.as_tensor(euler_xyz_to_matrix(lat[:, :3]).reshape(20, 9)).float(), atol=1e-5)
    assert torch.allclose(t[:, 9], torch.cos(2 * torch.pi * t6[:, 4]), atol=1e-6)
    assert torch.allclose(aux_target(t6, load_spec("demo")), t6)  # the paper's encoding is the 6-d latent itself
    assert aux_revealed("rotation", spec, "cpu").tolist() == [True] * 9 + [False] * 4
    assert aux_revealed("color", spec, "cpu").tolist() == [False] * 9 + [True] * 4


def test_the_fused_adam_is_the_per_tensor_adam():
    """schedule.adam uses the fused kernel (CPU and CUDA): the same update as PyTorch's per-tensor Adam, weight decay
    included, to float32 rounding, over several steps."""
    from ctxssl_cli.schedule import adam

    g = torch.Generator().manual_seed(0)
    init = [torch.randn(5, 3, generator=g), torch.randn(7, generator=g)]
    grads = [[torch.randn(p.shape, generator=g) for p in init] for _ in range(4)]
    params = {}
    for fused in (True, False):
        ps = [torch.nn.Parameter(p.clone()) for p in init]
        opt = adam(ps, lr=1e-2, weight_decay=1e-3) if fused else torch.optim.Adam(
            ps, lr=1e-2, betas=(0.9, 0.999), weight_decay=1e-3, foreach=False, fused=False)
        assert bool(opt.defaults["fused"]) == fused
        for step in grads:
            for p, gr in zip(ps, step):
                p.grad = gr.clone()
            opt.step()
        params[fused] = [p.detach() for p in ps]
    assert all(torch.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(params[True], params[False]))
    assert not torch.allclose(params[True][0], init[0])  # it moved
