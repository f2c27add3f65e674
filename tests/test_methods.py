"""The baselines (SPEC §7): heads, each loss against a naive computation and decreasing on a toy problem, SIE's
split and the hypernetwork's shapes, DDP 1 process = 2 processes, bit-exact resume, the spec's refusals."""

import math
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from ctxssl_cli.checkpoint import load_checkpoint
from ctxssl_cli.data.pairs import PairBatch
from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.methods import METHODS
from ctxssl_cli.methods.equimod import equimod_loss
from ctxssl_cli.methods.heads import LinearHypernetwork, Projector
from ctxssl_cli.methods.sie import sie_loss
from ctxssl_cli.methods.simclr import nt_xent
from ctxssl_cli.methods.vicreg import covariance_term, variance_term, vicreg_loss
from ctxssl_cli.model.build import build_model
from ctxssl_cli.spec import (ENCODER_FEATURES, METHODS as SPEC_METHODS, load_spec, preset_names, spec_from_yaml_text,
                             to_yaml)
from ctxssl_cli.train.dist import DistInfo
from ctxssl_cli.train.loop import pretrain
from ctxssl_cli.train.step import compute_method_loss

# tiny heads on the CPU demo's encoder, 16 px, batch 8
TINY = {"simclr": ["simclr.mlp=32-16"], "vicreg": ["vicreg.mlp=32-16"], "equimod": ["equimod.mlp=32-16"],
        "sie": ["sie.mlp=32-16", "sie.equi_dim=64"], "sen": ["sen.mlp=32-16"]}
COMMON = ["train.batch_size=8", "data.workers=0", "data.resolution=16"]


def tiny_spec(method, extra=()):
    return load_spec(f"demo/{method}", COMMON + TINY[method] + list(extra))


def _batch(n, res=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return PairBatch(x=torch.randint(0, 256, (n, 3, res, res), dtype=torch.uint8, generator=g),
                     y=torch.randint(0, 256, (n, 3, res, res), dtype=torch.uint8, generator=g),
                     action=torch.randn(n, 6, generator=g), target_x=torch.randn(n, 6, generator=g),
                     target_y=torch.randn(n, 6, generator=g), label=torch.zeros(n, dtype=torch.int64),
                     obj=torch.arange(n), view_x=torch.zeros(n, dtype=torch.int64),
                     view_y=torch.ones(n, dtype=torch.int64))


# ---- heads --------------------------------------------------------------------------------------------------


def test_projector_is_linear_bn_relu_then_a_linear_without_bias():
    p = Projector(10, [16, 8, 4])
    kinds = [type(m).__name__ for m in p]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert p[-1].bias is None and p[0].bias is not None and p.out_dim == 4
    assert p(torch.randn(5, 10)).shape == (5, 4)
    assert [type(m).__name__ for m in Projector(10, [4])] == ["Linear"]  # one layer: the last alone


def test_hypernetwork_is_a_linear_map_of_the_action_applied_to_z():
    torch.manual_seed(0)
    hyp = LinearHypernetwork(6, 5)
    assert hyp.hyper.weight.shape == (25, 6) and hyp.hyper.bias is None
    z, a = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 6, dtype=torch.float64)
    hyp = hyp.double()
    w = (a @ hyp.hyper.weight.T).reshape(7, 5, 5)  # W(a) = reshape(Linear(a)), row-major
    naive = torch.stack([w[i] @ z[i] for i in range(7)])
    assert torch.allclose(hyp(z, a), naive, atol=1e-12)
    assert torch.allclose(hyp.matrices(a), w)
    # linear in a, no bias: W(0) z = 0 and W(2a) = 2 W(a)
    assert torch.equal(hyp(z, torch.zeros_like(a)), torch.zeros_like(z))
    assert torch.allclose(hyp(z, 2 * a), 2 * hyp(z, a))


def test_sie_split_and_predictor_shapes():
    spec = tiny_spec("sie")  # convnet: h of 256 = 192 invariant + 64 equivariant; mlp 32-16 scaled 3/4 and 1/4
    torch.manual_seed(0)
    model = build_model(spec, 6)
    assert (model.inv_dim, model.equi_dim) == (192, 64)
    assert model.projector_inv[0].in_features == 192 and model.projector_inv.out_dim == 12
    assert model.projector_equi[0].in_features == 64 and model.projector_equi.out_dim == 4
    assert model.predictor.hyper.weight.shape == (4 * 4, 6)
    model.eval()
    h = torch.randn(3, 256)
    inv, equi = model.split(h)
    assert torch.equal(inv, h[:, :192]) and torch.equal(equi, h[:, 192:])
    other = h.clone()
    other[:, :192] = 0  # z_e reads only the equivariant part
    assert torch.equal(model.equivariant(h), model.equivariant(other))
    out = model(torch.randn(3, 3, 16, 16), torch.randn(3, 3, 16, 16), torch.randn(3, 6))
    assert [tuple(t.shape) for t in out] == [(3, 12), (3, 12), (3, 4), (3, 4), (3, 4)]
    rot = build_model(tiny_spec("sie", ["sie.action=rotation"]), 6)
    assert rot.predictor.hyper.weight.shape == (16, 4) and rot.action_columns == [0, 1, 2, 3]


@pytest.mark.parametrize("method", sorted(TINY))
def test_every_method_builds_and_steps(method):
    torch.manual_seed(0)
    spec = tiny_spec(method)
    model = build_model(spec, 6)
    out = compute_method_loss(model, _batch(8), spec, DistInfo(), (0.5,) * 3, (0.25,) * 3, 16, None)
    assert out.loss.ndim == 0 and math.isfinite(out.loss.item()) and out.terms
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())  # DDP needs every parameter used


def test_registry_and_encoder_widths_agree_with_the_spec():
    from ctxssl_cli.model.encoder import build_encoder

    assert set(SPEC_METHODS) == {"contextssl", *METHODS}
    for name, width in ENCODER_FEATURES.items():
        assert build_encoder(name)[1] == width, name
    assert {load_spec(p).method for p in preset_names()} == set(SPEC_METHODS)


# ---- losses against naive computations ------------------------------------------------------------------------


def naive_nt_xent(z1, z2, t):
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        pos = (i + n2 // 2) % n2
        denom = sum(math.exp(z[i] @ z[k] / t) for k in range(n2) if k != i)
        total += -math.log(math.exp(z[i] @ z[pos] / t) / denom)
    return total / n2


def naive_var_cov(z):
    z = z.astype(np.float64)
    n, d = z.shape
    m = z.mean(0)
    var = ((z - m) ** 2).sum(0) / (n - 1)
    std_term = np.mean([max(0.0, 1 - math.sqrt(v + 1e-4)) for v in var])
    cov = sum(((z[:, i] - m[i]) * (z[:, j] - m[j])).sum() / (n - 1) for i in range(d) for j in range(d))
    off = sum((((z[:, i] - m[i]) * (z[:, j] - m[j])).sum() / (n - 1)) ** 2
              for i in range(d) for j in range(d) if i != j)
    return std_term, off / d, cov


def test_nt_xent_matches_a_naive_loop():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    assert nt_xent(z1, z2, 0.1).item() == pytest.approx(naive_nt_xent(z1.numpy(), z2.numpy(), 0.1), rel=1e-5)
    # no clamp: negatives with negative cosines still count (ContextSSL's published loss clamps them)
    assert nt_xent(z1, -z1, 0.5).item() == pytest.approx(naive_nt_xent(z1.numpy(), -z1.numpy(), 0.5), rel=1e-5)


def test_vicreg_matches_a_naive_computation():
    g = torch.Generator().manual_seed(2)
    z1, z2 = 0.3 * torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g) * torch.tensor([0.1, 1, 2, 0.5])
    s1, c1, _ = naive_var_cov(z1.numpy())
    s2, c2, _ = naive_var_cov(z2.numpy())
    assert variance_term(z1).item() == pytest.approx(s1, rel=1e-5)
    assert covariance_term(z1).item() == pytest.approx(c1, rel=1e-5)
    inv = float(((z1 - z2) ** 2).mean())
    out = vicreg_loss(z1, z2, 10.0, 10.0, 1.0)
    assert out["inv"].item() == pytest.approx(inv, rel=1e-6)
    assert out["std"].item() == pytest.approx(s1 / 2 + s2 / 2, rel=1e-5)
    assert out["cov"].item() == pytest.approx(c1 + c2, rel=1e-5)
    assert out["loss"].item() == pytest.approx(10 * inv + 10 * (s1 + s2) / 2 + (c1 + c2), rel=1e-5)


def test_sie_loss_matches_a_naive_computation():
    g = torch.Generator().manual_seed(3)
    zi1, zi2, ze1, ze2, pred = (torch.randn(6, d, generator=g) * 0.7 for d in (3, 3, 2, 2, 2))
    out = sie_loss(zi1, zi2, ze1, ze2, pred, equi_factor=0.45, sim_coeff=10, std_coeff=10, cov_coeff=1)
    s1, c1, _ = naive_var_cov(torch.cat([zi1, ze1], 1).numpy())
    s2, c2, _ = naive_var_cov(torch.cat([zi2, ze2], 1).numpy())
    sp, _, _ = naive_var_cov(pred.numpy())
    inv, equi = float(((zi1 - zi2) ** 2).mean()), float(((pred - ze2) ** 2).mean())
    want = 10 * inv + 0.45 * 10 * equi + 10 * (s1 + s2) / 2 + 10 * sp / 2 + (c1 + c2)
    assert out["loss"].item() == pytest.approx(want, rel=1e-5)
    assert out["pred_std"].item() == pytest.approx(sp / 2, rel=1e-5)


def test_equimod_and_sen_losses_are_the_nt_xent_terms():
    g = torch.Generator().manual_seed(4)
    zi1, zi2, pred, ze2 = (torch.randn(4, 3, generator=g) for _ in range(4))
    inv, equi = naive_nt_xent(zi1.numpy(), zi2.numpy(), 0.1), naive_nt_xent(pred.numpy(), ze2.numpy(), 0.1)
    out = equimod_loss(nt_xent(zi1, zi2, 0.1), nt_xent(pred, ze2, 0.1), 0.5)
    assert out["loss"].item() == pytest.approx(inv + 0.5 * equi, rel=1e-5)
    from ctxssl_cli.methods.sen import SENOutputs, step_loss
    from ctxssl_cli.spec import SENSpec

    assert step_loss(SENOutputs(pred, ze2), SENSpec(), DistInfo())["loss"].item() == pytest.approx(equi, rel=1e-5)


@pytest.mark.parametrize("method", sorted(TINY))
def test_each_loss_decreases_on_a_toy_problem(method):
    """Linear maps of two noisy copies of random inputs, trained on the method's own loss for 40 Adam steps."""
    from ctxssl_cli.methods import equimod, sen, sie, simclr, vicreg
    from ctxssl_cli.spec import SECTIONS

    g = torch.Generator().manual_seed(5)
    x = torch.randn(16, 6, generator=g)
    x1, x2 = x + 0.1 * torch.randn(16, 6, generator=g), x + 0.1 * torch.randn(16, 6, generator=g)
    a = torch.randn(16, 6, generator=g)
    torch.manual_seed(0)
    lin, lin_e = torch.nn.Linear(6, 8), torch.nn.Linear(6, 4)
    hyp = LinearHypernetwork(6, 4)
    cfg = SECTIONS[method]()
    outputs = {
        "simclr": lambda: simclr.SimCLROutputs(lin(x1), lin(x2)),
        "vicreg": lambda: vicreg.VICRegOutputs(lin(x1), lin(x2)),
        "equimod": lambda: equimod.EquiModOutputs(lin(x1), lin(x2), hyp(lin_e(x1), a), lin_e(x2)),
        "sen": lambda: sen.SENOutputs(hyp(lin_e(x1), a), lin_e(x2)),
        "sie": lambda: sie.SIEOutputs(lin(x1), lin(x2), lin_e(x1), lin_e(x2), hyp(lin_e(x1), a)),
    }[method]
    params = [*lin.parameters(), *lin_e.parameters(), *hyp.parameters()]
    opt = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(40):
        loss = METHODS[method].loss(outputs(), cfg, DistInfo())["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5]), losses


# ---- DDP: 2 gloo processes = 1 process (global-batch negatives and statistics) --------------------------------


DDP_METHODS = ("simclr", "vicreg", "sie")  # NT-Xent negatives; VICReg's and SIE's batch statistics


def _ddp_worker(rank, world, port, path):
    from safetensors.torch import save_file
    from torch.nn.parallel import DistributedDataParallel as DDP

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    found = {}
    for method in DDP_METHODS:  # one spawn for all: starting the processes is most of the cost
        loss, grads = _step(method, rank, world, lambda m: DDP(m))
        losses = [torch.zeros(()) for _ in range(world)]
        torch.distributed.all_gather(losses, loss)
        found |= {f"{method}/loss": torch.stack(losses).mean(), **{f"{method}/{k}": g for k, g in grads.items()}}
    if rank == 0:
        save_file(found, path)
    torch.distributed.destroy_process_group()


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _step(method, rank, world, wrap):
    spec = tiny_spec(method)
    torch.manual_seed(0)
    model = build_model(spec, 6)
    model.eval()  # BatchNorm with running stats: per-rank batch statistics would differ by design
    full, n = _batch(8), 8 // world
    local = PairBatch(**{k: getattr(full, k)[rank * n:(rank + 1) * n] for k in full.__dataclass_fields__})
    fwd = wrap(model)  # kept alive through backward: a DDP wrapper that is collected takes its gradient hooks along
    out = compute_method_loss(fwd, local, spec, DistInfo(rank=rank, world_size=world), (0.5,) * 3, (0.25,) * 3, 16,
                              None)
    out.loss.backward()
    return out.loss.detach(), {k: p.grad.detach().clone() for k, p in model.named_parameters()}


def test_two_process_step_equals_one_process_step(tmp_path):
    """Negatives and batch statistics over the global batch, with gradients: 2 ranks of 4 pairs = 1 of 8."""
    from safetensors.torch import load_file

    path = str(tmp_path / "ddp.safetensors")
    mp.spawn(_ddp_worker, args=(2, _free_port(), path), nprocs=2, join=True)
    ddp = load_file(path)
    for method in DDP_METHODS:
        loss, grads = _step(method, 0, 1, lambda m: m)
        assert ddp[f"{method}/loss"].item() == pytest.approx(loss.item(), rel=1e-5), method
        for k, g in grads.items():
            assert torch.allclose(ddp[f"{method}/{k}"], g, rtol=1e-4, atol=1e-6), (method, k)


# ---- training: bit-exact resume, refused changes ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from ctxssl_cli.data.prepared import PreparedDataset
    from ctxssl_cli.data.synthetic import prepare_synthetic

    root = tmp_path_factory.mktemp("data") / "s"
    prepare_synthetic(root, classes=4, objects_per_class=4, views=4, resolution=16, seed=0, workers=1, progress=False)
    return PreparedDataset(root)


def test_baseline_resume_after_crash_is_bit_exact(tiny_data, tmp_path, monkeypatch):
    import ctxssl_cli.train.loop as loop

    spec = lambda extra=(): tiny_spec("sie", ["train.max_steps=5", "train.checkpoint_every=1", *extra])  # noqa: E731
    pretrain(spec(), tiny_data, tmp_path / "full", DistInfo())
    real, calls = loop.compute_method_loss, []

    def crash_at_3(*a, **k):
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(loop, "compute_method_loss", crash_at_3)
    with pytest.raises(RuntimeError, match="simulated"):
        pretrain(spec(), tiny_data, tmp_path / "cut", DistInfo())
    assert load_checkpoint(tmp_path / "cut").step == 3
    monkeypatch.setattr(loop, "compute_method_loss", real)
    with pytest.raises(CtxsslError, match="sie.equi_factor"):  # the method's own keys are part of the run
        pretrain(spec(["sie.equi_factor=1.0"]), tiny_data, tmp_path / "cut", DistInfo(), resume=True)
    with pytest.raises(CtxsslError, match="method"):
        pretrain(tiny_spec("sen", ["train.max_steps=5"]), tiny_data, tmp_path / "cut", DistInfo(), resume=True)
    pretrain(spec(), tiny_data, tmp_path / "cut", DistInfo(), resume=True)
    a, b = load_checkpoint(tmp_path / "full").tensors, load_checkpoint(tmp_path / "cut").tensors
    assert a.keys() == b.keys() and any(k.startswith("model.predictor") for k in a)
    for k in a:
        if not k.startswith("rng."):
            assert torch.equal(a[k], b[k]), k
    rows = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    assert '"pred_std"' in rows[-1] and '"env"' not in rows[-1]


# ---- the spec's refusals ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset, override, words", [
    ("demo/simclr", "train.mask_prob=0.5", ["train.mask_prob", "ContextSSL", "simclr"]),
    ("simclr", "train.mask_prob=0.5", ["train.mask_prob", "simclr"]),
    ("demo/simclr", "model.n_embd=512", ["model.n_embd", "simclr"]),
    ("demo/simclr", "train.envs={rotation: 1.0}", ["train.envs", "simclr"]),
    ("demo/simclr", "sie.equi_dim=64", ["sie.equi_dim", "method sie", "simclr"]),
    ("demo", "simclr.temperature=0.2", ["simclr.temperature", "method simclr", "contextssl"]),
    ("demo", "method=simclr", ["are ContextSSL keys", "simclr"]),  # the ContextSSL demo's own settings
    ("demo/sie", "sie.equi_dim=256", ["sie.equi_dim", "smaller than the representation", "256"]),
    ("sie", "sie.equi_dim=600", ["sie.equi_dim", "512"]),
    ("demo/sie", "sie.equi_dim=0", ["sie.equi_dim", "[1, "]),
    ("demo/simclr", "method=simcrl", ["unknown method", "simclr"]),
    ("demo/vicreg", "vicreg.mlp=20x48", ["vicreg.mlp", "2048-2048-2048"]),
    ("demo/equimod", "equimod.action=color", ["equimod.action", "rotcolor"]),
    ("demo/sen", "sen.mlp=256-20000", ["predictor", "weights"]),
    ("demo/vicreg", "train.batch_size=1", ["train.batch_size", "at least 2"]),
    ("demo/simclr", "simclr.temperature=0", ["simclr.temperature", "(0, 100]"]),
    ("demo/sie", "model.encoder=resnet19", ["model.encoder", "resnet18"]),
])
def test_keys_that_do_not_apply_are_refused(preset, override, words):
    with pytest.raises(CtxsslError) as e:
        load_spec(preset, [override])
    for w in words:
        assert w in e.value.message, (w, e.value.message)


def test_contextssl_keys_at_their_defaults_are_accepted(tmp_path):
    """Only what is written and changed is refused: a chain that repeats a default (rotcolor writes the paper's
    defaults) is a valid baseline spec, and so is an explicit default on the command line."""
    f = tmp_path / "mine.yaml"
    f.write_text("extends: rotcolor\nmethod: simclr\ntrain:\n  batch_size: 64\n")
    s = load_spec(str(f), ["train.mask_prob=0.9", "train.temperature=0.1"])
    assert s.method == "simclr" and s.train.batch_size == 64 and s.simclr.temperature == 0.1
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: demo\nmethod: simclr\n")  # the ContextSSL demo changes aux_weight, n_embd, ...
    with pytest.raises(CtxsslError, match="train.aux_weight|model.n_layer"):
        load_spec(str(bad))


def test_a_baseline_spec_stores_only_what_it_uses_and_reloads(tmp_path):
    s = load_spec("demo/sie", ["train.seed=3", "sie.equi_factor=0.5"])
    d = s.to_dict()
    assert d["method"] == "sie" and "sie" in d and "simclr" not in d
    assert "mask_prob" not in d["train"] and "block_size" not in d["model"] and "lr" in d["train"]
    text = to_yaml(s, meta={"ctxssl_version": "0.3.0"})
    (tmp_path / "spec.yaml").write_text(text)
    assert spec_from_yaml_text(text) == s == load_spec(str(tmp_path / "spec.yaml"))  # no legacy keys filled in
    assert "method: contextssl" in to_yaml(load_spec("demo"))
    assert "simclr" not in load_spec("demo").to_dict()


def test_demo_presets_share_the_contextssl_demo_budget():
    demo = load_spec("demo")
    for m in TINY:
        s = load_spec(f"demo/{m}")
        assert s.method == m and s.name == f"demo-{m}"
        assert (s.model.encoder, s.data.resolution, s.train.batch_size, s.train.epochs) == (
            demo.model.encoder, demo.data.resolution, demo.train.batch_size, demo.train.epochs)
        assert s.train.lr * s.train.batch_size / 256 == pytest.approx(1e-3)  # the published Adam lr
        paper = load_spec(m)
        assert paper.train.lr * paper.train.batch_size / 256 == pytest.approx(1e-3)
        assert (paper.train.batch_size, paper.train.epochs, paper.train.weight_decay) == (1024, 2000, 1e-6)
    assert load_spec("sie").sie.equi_dim == 256 and load_spec("sie").sie.equi_factor == 0.45


def test_a_spec_built_in_python_is_checked_the_same_way():
    from ctxssl_cli.spec import RunSpec, SIESpec, TrainSpec

    with pytest.raises(CtxsslError, match="train.mask_prob is a ContextSSL key"):
        RunSpec(method="simclr", train=TrainSpec(mask_prob=0.5, batch_size=8))
    with pytest.raises(CtxsslError, match="'sie.equi_dim' belongs to method sie"):
        RunSpec(method="vicreg", train=TrainSpec(batch_size=8), sie=SIESpec(equi_dim=3))
    with pytest.raises(CtxsslError, match="'sie.equi_dim' belongs to method sie"):
        RunSpec(sie=SIESpec(equi_dim=3))  # on ContextSSL too
    assert RunSpec(method="sie", train=TrainSpec(batch_size=8)).sie.equi_dim == 256
