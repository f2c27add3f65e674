"""Probes trained on cached embeddings (SPEC §4) other than the R² probes: fixed seeded evaluation pairs and the
linear classification probe. The R² probes follow the published protocol exactly (paper_probes.py).

The encoder has already run once (`ctxssl embed`); a probe sees cached embeddings. The classification probe
trains a fixed number of epochs with Adam and a cosine learning-rate decay. No early stopping, no
validation-driven choice, so nothing of the validation split leaks into a probe. Same inputs, settings and
device -> same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import nn

from ctxssl_cli.errors import CtxsslError
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
    """Settings of the linear classification probe (SPEC §4 "Invariance"): multinomial logistic regression on
    one embedding, Adam with a cosine decay, as SIE's linear classifier (Adam, lr 1e-3, batch 256) but with
    larger batches on cached features."""

    cls_epochs: int = 30
    cls_lr: float = 1e-2
    cls_weight_decay: float = 0.0
    cls_batch_size: int = 1024
    # Seeds the initialisation and the batch order.
    seed: int = 0

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            integer = f.type in ("int", int)
            if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)):
                raise CtxsslError(f"probe setting {f.name} = {v!r} is not {'an integer' if integer else 'a number'}",
                                  f"give {f.name} a value like its default, {f.default}")
            may_be_zero = f.name == "seed" or f.name.endswith("weight_decay")
            if not (v >= 0 if may_be_zero else v > 0):
                raise CtxsslError(f"probe setting {f.name} = {v} is out of range",
                                  f"use a {'non-negative' if may_be_zero else 'positive'} value")


def _standardiser(x: torch.Tensor):
    """Per-column (mean, std) of the train inputs; a constant column is left unscaled."""
    mean = x.mean(0, keepdim=True)
    std = x.std(0, keepdim=True)
    return mean, torch.where(std > 1e-8, std, torch.ones_like(std))


class _Standardise(nn.Module):
    """x -> (x - mean) / std with fixed train statistics (no parameters)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


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
    g = torch.Generator().manual_seed(settings.seed)
    # standardised batch by batch inside the model: no standardised copy of the train split (8 GB at 3DIEBench)
    model = nn.Sequential(_Standardise(mean, std), _linear(x_tr.shape[1], int(n_classes), g)).to(dev)
    s = settings
    _train(model, x_tr, y_tr, nn.functional.cross_entropy, s.cls_epochs, s.cls_lr, s.cls_weight_decay,
           s.cls_batch_size, g)
    pred = _predict(model, x_va).argmax(1).cpu()
    return float((pred == y_va).double().mean())
