"""Probes trained on cached embeddings (SPEC §4): pair probes for R², a linear classification probe.

The published protocol (SIE, Garrido et al. 2023; reused by ContextSSL) trains each probe for 300 epochs
and re-encodes every image in every epoch, drawing a fresh random view pair each time (SPEC §5b). Here the
encoder has already run once (`ctxssl embed`); a probe sees fixed, seeded pairs of cached embeddings. The
MLP and classification probes train a fixed number of epochs with Adam and a cosine learning-rate decay;
the linear regression probe is solved in closed form. No early stopping, no validation-driven choice, so
nothing of the validation split leaks into a probe. Same inputs, settings and device -> same numbers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import nn

from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.evaluate.metrics import r2_score
from ctxssl_cli.schedule import warmup_cosine


def eval_pairs(n_objects: int, n_views: int, pairs_per_object: int,
               seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed evaluation pairs (obj, v1, v2), `pairs_per_object` per object, object-major, v1 != v2.

    v1 is uniform over the views and v2 uniform over the other n_views - 1 views, drawn from
    `numpy.random.default_rng(seed)`: the same arguments always give the same pairs (SPEC §5b: the
    published code drew a fresh pair on every validation call). Returns three (n_objects * pairs_per_object,)
    int64 arrays.
    """
    if n_views < 2:
        raise CtxsslError(f"pairs need at least 2 views per object, got {n_views}",
                          "embed at least 2 views per object")
    if n_objects < 1 or pairs_per_object < 1:
        raise CtxsslError(f"no pairs to draw ({n_objects} objects, {pairs_per_object} pairs per object)",
                          "use a split with objects and pairs_per_object >= 1")
    rng = np.random.default_rng(seed)
    n = n_objects * pairs_per_object
    obj = np.repeat(np.arange(n_objects, dtype=np.int64), pairs_per_object)
    v1 = rng.integers(0, n_views, size=n, dtype=np.int64)
    v2 = (v1 + rng.integers(1, n_views, size=n, dtype=np.int64)) % n_views  # never v1, uniform otherwise
    return obj, v1, v2


@dataclass
class ProbeSettings:
    """Probe hyper-parameters. Defaults follow the spirit of the published protocol (SIE's probe scripts:
    Adam, lr 1e-3, no weight decay, batch 256; ReLU MLP of width 1024 for rotation, linear heads for color
    and classes) but train on cached embeddings with larger batches and fewer, fixed epochs, so that one
    rotation probe on 20,000 pairs of 512-d embeddings takes about 5 s on a 2-core CPU."""

    # Rotation probe: MLP concat(e1, e2) -> hidden -> ReLU -> 4. SIE's "--deep-end" head has two hidden
    # layers of 1024; one layer of 1024 keeps the probe nonlinear at half the cost.
    mlp_hidden: int = 1024
    # Fixed epochs over the fixed train pairs, lr cosine-decayed to 0 over them. 5 epochs of 20,000 pairs cost
    # about 5 s on 2 CPU cores; more epochs mostly raise the train R² (the probe starts to memorise the pairs).
    mlp_epochs: int = 5
    # Adam learning rate at the start of the cosine decay (SIE: 1e-3 at batch 256; 2e-3 suits batch 512).
    mlp_lr: float = 2e-3
    # L2 penalty (Adam weight_decay); SIE uses 0.
    mlp_weight_decay: float = 0.0
    # Pairs per step: larger than SIE's 256 for throughput on cached embeddings.
    mlp_batch_size: int = 512
    # Color probe: linear concat(e1, e2) -> 2, fitted in closed form (ridge least squares): the exact optimum
    # of the MSE that SIE's 300 Adam epochs approach, in well under a second. The ridge is relative to the
    # sample count on standardised inputs (0.1% shrinkage): negligible, but it keeps the solve well posed
    # when features are constant or collinear (collapsed embeddings).
    linear_ridge: float = 1e-3
    # Classification probe: multinomial logistic regression on one embedding (SPEC §4 "Invariance"); Adam
    # with a cosine decay, as SIE's linear classifier (Adam, lr 1e-3, batch 256) but larger batches.
    cls_epochs: int = 30
    cls_lr: float = 1e-2
    cls_weight_decay: float = 0.0
    cls_batch_size: int = 1024
    # Seeds the initialisation and the batch order of every probe.
    seed: int = 0

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            integer = f.type in ("int", int)
            if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)):
                raise CtxsslError(f"probe setting {f.name} = {v!r} is not {'an integer' if integer else 'a number'}",
                                  f"give {f.name} a value like its default, {f.default}")
            may_be_zero = f.name in ("seed", "linear_ridge") or f.name.endswith("weight_decay")
            if not (v >= 0 if may_be_zero else v > 0):
                raise CtxsslError(f"probe setting {f.name} = {v} is out of range",
                                  f"use a {'non-negative' if may_be_zero else 'positive'} value")


def _standardiser(x: torch.Tensor):
    """Per-column (mean, std) of the train inputs; a constant column is left unscaled."""
    mean = x.mean(0, keepdim=True)
    std = x.std(0, keepdim=True)
    return mean, torch.where(std > 1e-8, std, torch.ones_like(std))


def _linear(in_dim: int, out_dim: int, g: torch.Generator) -> nn.Linear:
    """nn.Linear with PyTorch's default init U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn from `g`."""
    layer = nn.Linear(in_dim, out_dim)
    bound = 1.0 / math.sqrt(in_dim)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=g)
        layer.bias.uniform_(-bound, bound, generator=g)
    return layer


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, epochs: int, lr: float, wd: float,
           batch: int, g: torch.Generator) -> None:
    """Adam, fixed epochs, lr cosine-decayed per step from `lr` to 0; batch order from `g` (on CPU)."""
    n = len(x)
    schedule = warmup_cosine(lr, epochs * math.ceil(n / batch), 0)  # precomputed per step, no warm-up
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    model.train()
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g).to(x.device)
        for s in range(0, n, batch):
            idx = perm[s:s + batch]
            for group in opt.param_groups:
                group["lr"] = float(schedule[step])
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    model.eval()


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """model(x) in chunks (bounded memory for hundreds of thousands of pairs)."""
    return torch.cat([model(x[i:i + chunk]) for i in range(0, len(x), chunk)])


def _tensor(a, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float32).to(device)


def _ridge(x: torch.Tensor, y: torch.Tensor, ridge: float, chunk: int = 65536) -> nn.Linear:
    """Least squares x -> y (both centred) with penalty ridge * N * |W|², as a bias-free nn.Linear.

    The Gram matrix accumulates in float32 chunks on x's device; the solve runs in float64.
    """
    d = x.shape[1]
    gram = torch.zeros(d, d, dtype=torch.float64, device=x.device)
    xty = torch.zeros(d, y.shape[1], dtype=torch.float64, device=x.device)
    for i in range(0, len(x), chunk):
        xc, yc = x[i:i + chunk], y[i:i + chunk]
        gram += (xc.T @ xc).double()  # (d, d)
        xty += (xc.T @ yc).double()  # (d, A)
    gram += ridge * len(x) * torch.eye(d, dtype=torch.float64, device=x.device)
    w = torch.linalg.solve(gram, xty)  # (d, A)
    layer = nn.Linear(d, y.shape[1], bias=False).to(x.device)
    with torch.no_grad():
        layer.weight.copy_(w.T.float())
    return layer


def fit_pair_probe(train_e1, train_e2, train_target, val_e1, val_e2, val_target, kind: str,
                   settings: ProbeSettings, r2_kind: str = "sklearn", device="cpu") -> dict:
    """Fit a probe concat(e1, e2) -> target on train pairs, report R² on val pairs (SPEC §4 "Equivariance").

    kind "mlp" (the rotation probe, 4 quaternion outputs): one hidden layer of `settings.mlp_hidden` with
    ReLU, MSE, Adam for `settings.mlp_epochs` fixed epochs, seeded. kind "linear" (the color probe, 2 hue
    differences): one linear map fitted in closed form (ridge least squares, `settings.linear_ridge`).
    Inputs are standardised with the train pairs' mean and std; targets are centred per dimension (and, for
    the MLP, divided by one global scale, which keeps the raw weighting of the dimensions in the MSE).
    Only train pairs are fitted. Returns {"r2": val R², "train_r2": train R², "seconds": wall time}, R² as
    `metrics.r2_score(kind=r2_kind)`.
    """
    if kind not in ("mlp", "linear"):
        raise ValueError(f"unknown pair-probe kind {kind!r}; expected 'mlp' or 'linear'")
    t0 = time.perf_counter()
    dev = torch.device(device)
    x_tr = torch.cat([_tensor(train_e1, dev), _tensor(train_e2, dev)], dim=1)  # (N, 2F)
    x_va = torch.cat([_tensor(val_e1, dev), _tensor(val_e2, dev)], dim=1)  # (M, 2F)
    y_tr = _tensor(train_target, dev).reshape(len(x_tr), -1)  # (N, A)
    y_va = np.asarray(val_target, dtype=np.float64).reshape(len(x_va), -1)  # (M, A)
    mean, std = _standardiser(x_tr)
    x_tr, x_va = (x_tr - mean) / std, (x_va - mean) / std
    y_mean = y_tr.mean(0, keepdim=True)
    y_scale = (y_tr - y_mean).square().mean().sqrt().clamp_min(1e-8) if kind == "mlp" else torch.ones(())
    y_fit = (y_tr - y_mean) / y_scale
    if kind == "mlp":
        s = settings
        g = torch.Generator().manual_seed(s.seed)
        model = nn.Sequential(_linear(x_tr.shape[1], s.mlp_hidden, g), nn.ReLU(),
                              _linear(s.mlp_hidden, y_fit.shape[1], g)).to(dev)
        _train(model, x_tr, y_fit, nn.functional.mse_loss, s.mlp_epochs, s.mlp_lr, s.mlp_weight_decay,
               s.mlp_batch_size, g)
    else:
        model = _ridge(x_tr, y_fit, settings.linear_ridge)
    pred_tr = (_predict(model, x_tr) * y_scale + y_mean).cpu().numpy()
    pred_va = (_predict(model, x_va) * y_scale + y_mean).cpu().numpy()
    return {"r2": r2_score(y_va, pred_va, r2_kind),
            "train_r2": r2_score(y_tr.cpu().numpy(), pred_tr, r2_kind),
            "seconds": time.perf_counter() - t0}


def linear_probe_top1(train_x, train_y, val_x, val_y, n_classes, settings: ProbeSettings, device="cpu") -> float:
    """Linear classification probe top-1 on val (SPEC §4 "Invariance"), as a fraction in [0, 1].

    Multinomial logistic regression (one linear layer, cross-entropy) on train-standardised cached features,
    Adam with mini-batches of `settings.cls_batch_size`, `settings.cls_epochs` fixed epochs, seeded. Every
    val sample counts (no drop_last; SPEC §5b).
    """
    dev = torch.device(device)
    x_tr, x_va = _tensor(train_x, dev), _tensor(val_x, dev)
    y_tr = torch.as_tensor(np.asarray(train_y), dtype=torch.long).to(dev)
    y_va = torch.as_tensor(np.asarray(val_y), dtype=torch.long)
    if len(x_tr) != len(y_tr) or len(x_va) != len(y_va) or len(x_va) == 0:
        raise ValueError("linear_probe_top1 needs non-empty features with one label each")
    mean, std = _standardiser(x_tr)
    x_tr, x_va = (x_tr - mean) / std, (x_va - mean) / std
    g = torch.Generator().manual_seed(settings.seed)
    model = _linear(x_tr.shape[1], int(n_classes), g).to(dev)
    s = settings
    _train(model, x_tr, y_tr, nn.functional.cross_entropy, s.cls_epochs, s.cls_lr, s.cls_weight_decay,
           s.cls_batch_size, g)
    pred = _predict(model, x_va).argmax(1).cpu()
    return float((pred == y_va).double().mean())
