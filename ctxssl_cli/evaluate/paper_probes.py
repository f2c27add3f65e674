"""The published R² probe protocol (SPEC §4 "Paper probes"), on cached embeddings.

What the published `eval_equivariance.py` does, setting for setting:
- inputs: concat(e(x), e(y)) of a view pair of one object, e = h (encoder features, raw) or z (transformer
  outputs, L2-normalised; `ctxssl embed` stores them so); no standardisation;
- colour probe: Linear(2F -> 2) with bias; rotation probe: Linear(2F -> 1024), ReLU, Linear(1024 -> 1024),
  ReLU, Linear(1024 -> 4); PyTorch's default Linear initialisation;
- one probe per (embedding, context mode, context length);
- Adam, lr 1e-3, betas (0.9, 0.999), no weight decay, MSE with mean reduction, batch 256, shuffled, the last
  partial batch of every epoch dropped (kept when the train split holds fewer objects than one batch);
  300 epochs, seed 42;
- every epoch draws one fresh view pair (v1 != v2) per training object;
- targets: the relative quaternion R1^-1 R2 in (x, y, z, w) with scipy's own sign (data/rotations.py,
  canonical=False) and the plain differences of the two hues;
- R² on fixed, seeded val pairs, under both definitions (one global mean, as published; per-dimension means).

Other action schemas (evaluate/factors.py): one probe per factor of the schema, a linear one or the MLP above with
the factor's width as output; augment2d: crop MLP (-> 4), colour linear (-> 4), blur linear (-> 1), targets the
relative view parameters (data/actions.py). The probes' initialisations are drawn from one seeded generator in
factors.py's order (views3d: colour, then rotation, as always).

ctxssl computes the embeddings once (`ctxssl embed`) instead of re-encoding every image in every epoch, and
trains the probes of many embeddings at once (all of them unless memory bounds a group: GROUP_BYTES): their
weights are stacked along a leading "probe" axis and trained with batched matrix products, every probe seeing
the same batches (as the published loop does). Adam's update
is element-wise and every probe's loss depends only on its own weights, so one Adam over the stacked weights
and the summed losses is exactly one Adam per probe (the published code also sums the probes' losses).
One h probe is trained (the published script trains one per mode on identical inputs).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from ctxssl_cli.data.actions import relative_action_for
from ctxssl_cli.data.schema import VIEWS3D, ActionSchema
from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.evaluate.factors import MLP, probes_of
from ctxssl_cli.evaluate.metrics import R2_KINDS, r2_score
from ctxssl_cli.schedule import adam
from ctxssl_cli.tensorfile import nbytes_of, shape_of

# The published settings; only the number of epochs may be changed (--probe-epochs).
PAPER_LR = 1e-3
PAPER_BETAS = (0.9, 0.999)
PAPER_BATCH = 256
PAPER_HIDDEN = 1024
PAPER_SEED = 42
PAPER_EPOCHS = 300
# Embedding bytes (train + val) whose probes train together by default (evaluate's --probe-memory): all of them at
# the demo's size (14 embeddings of ~50 MB, one stack: fastest), one at a time at 3DIEBench's (~5.4 GB each at
# F = 512), which bounds memory.
GROUP_BYTES = 2 << 30


@dataclass
class PaperProbeSettings:
    epochs: int = PAPER_EPOCHS
    schema: ActionSchema = VIEWS3D  # whose factors are probed, with which targets (evaluate/factors.py)

    def __post_init__(self):
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or not 1 <= self.epochs <= 100_000:
            raise CtxsslError(f"--probe-epochs {self.epochs!r} is out of range", "use an integer from 1 to 100000 "
                              f"(the published protocol: {PAPER_EPOCHS})")


class StackedMLP(torch.nn.Module):
    """P independent MLPs in_dim -> hidden... -> out_dim (ReLU between layers), applied to (P, B, in_dim).

    Layer sizes `dims` = [in, h1, ..., out]; each probe's Linear layers initialised as nn.Linear does
    (weight and bias uniform in +-1/sqrt(fan_in)), drawn from `generator` probe by probe, layer by layer."""

    def __init__(self, n_probes: int, dims: list[int], generator: torch.Generator):
        super().__init__()
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        ws = [torch.empty(n_probes, a, b) for a, b in zip(dims[:-1], dims[1:])]
        bs = [torch.empty(n_probes, 1, b) for b in dims[1:]]
        for p in range(n_probes):
            for w, b in zip(ws, bs):
                bound = 1.0 / math.sqrt(w.shape[1])
                w[p].uniform_(-bound, bound, generator=generator)
                b[p].uniform_(-bound, bound, generator=generator)
        for w, b in zip(ws, bs):
            self.weights.append(torch.nn.Parameter(w))
            self.biases.append(torch.nn.Parameter(b))

    def select(self, first: int, stop: int) -> "StackedMLP":
        """A new StackedMLP of probes first..stop-1 (copies of their current weights)."""
        part = StackedMLP.__new__(StackedMLP)
        torch.nn.Module.__init__(part)
        part.weights = torch.nn.ParameterList([torch.nn.Parameter(w[first:stop].detach().clone()) for w in self.weights])
        part.biases = torch.nn.ParameterList([torch.nn.Parameter(b[first:stop].detach().clone()) for b in self.biases])
        return part

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (P, B, in) -> (P, B, out)."""
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = torch.relu(x)
        return x


def draw_epoch_pairs(n_objects: int, n_views: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One view pair (v1 != v2, uniform) per object: two (n_objects,) int64 arrays."""
    v1 = rng.integers(0, n_views, size=n_objects)
    v2 = (v1 + rng.integers(1, n_views, size=n_objects)) % n_views
    return v1, v2


def pair_targets(latents: np.ndarray, obj: np.ndarray, v1: np.ndarray, v2: np.ndarray,
                 schema: ActionSchema = VIEWS3D) -> tuple[np.ndarray, ...]:
    """The targets of pairs, one (n, width) float32 array per factor in schema order: views3d the published
    rotation (n, 4) with scipy's sign and hue differences (n, 2); augment2d the relative crop, colour, blur."""
    act = relative_action_for(schema, latents[obj, v1], latents[obj, v2], canonical=False)
    return tuple(act[:, list(schema.indices(f))] for f in schema.factor_names)


class _Embeddings:
    """The P embeddings of one split as given ((N, V, F) each, any float dtype, on any device), read pair by pair:
    no stacked or normalised copy of the whole split is made (at 3DIEBench scale one copy of every embedding of
    the train split is tens of GB); each batch is gathered, cast to float32, normalised where asked and moved
    to the probes' device."""

    def __init__(self, tensors: list[torch.Tensor], normalise: list[bool], device: torch.device):
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) != 1 or len(next(iter(shapes))) != 3:
            raise ValueError(f"embeddings must share one shape (N, V, F), got {sorted(shapes)}")
        self.tensors, self.normalise, self.device = tensors, normalise, device
        self.shape = (len(tensors), *next(iter(shapes)))  # (P, N, V, F)

    def _views(self, obj, v) -> torch.Tensor:
        obj, v = torch.as_tensor(obj), torch.as_tensor(v)
        rows = [t[obj.to(t.device), v.to(t.device)].to(self.device, torch.float32) for t in self.tensors]
        return torch.stack([_unit(r) if n else r for r, n in zip(rows, self.normalise)])  # (P, n, F)

    def pairs(self, obj, v1, v2) -> torch.Tensor:
        """concat(e(x), e(y)) (P, n, 2F) for pairs (obj, v1, v2)."""
        return torch.cat([self._views(obj, v1), self._views(obj, v2)], dim=-1)


def _unit(e: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(e, dim=-1)


def probe_groups(nbytes: list[int], budget: int = GROUP_BYTES) -> list[tuple[int, int]]:
    """Consecutive groups [first, stop) of embeddings whose bytes (train + val, as stored) add up to at most
    `budget`, at least one embedding each: the probes of a group train together, reading its embeddings once."""
    groups, first, total = [], 0, 0
    for i, b in enumerate(nbytes):
        if i > first and total + b > budget:
            groups.append((first, i))
            first, total = i, 0
        total += b
    if nbytes:
        groups.append((first, len(nbytes)))
    return groups


def fit_paper_probes(train, train_latents: np.ndarray, val, val_latents: np.ndarray,
                     val_pairs: tuple[np.ndarray, np.ndarray, np.ndarray], normalise: dict[str, bool],
                     settings: PaperProbeSettings = PaperProbeSettings(), device="cpu", on_epoch=None,
                     group_bytes: int = GROUP_BYTES) -> dict:
    """Train the published probes of every factor of `settings.schema` (views3d: colour and rotation) for every
    embedding in `train` and score them on val.

    train[name] (N, V, F) and val[name] (M, W, F) embeddings of the same F for every name (h and the z of
    each mode and length); `normalise[name]`: L2-normalise before probing (z: True, h: False; the published
    code normalises only the transformer outputs). train_latents (N, V, L), val_latents (M, W, L) (views3d: the
    7 stored values, augment2d: the 9 view parameters); val_pairs (obj, v1, v2) fixed. Returns {name: {factor:
    {r2 kind: R²}}} (factors in schema order) plus, under "_meta", epochs, steps, drop_last and seconds.

    `train` and `val` may be lazy mappings (an embeddings file read tensor by tensor): the probes train in
    groups of embeddings of at most `group_bytes` (probe_groups), each group reading only its own tensors, so
    memory is bounded by one group whatever the number of modes and lengths. Every probe's initialisation and
    batches are those of one stack of all probes (the same generator draws, the same pair draws per group), so
    the grouping does not change the result. `on_epoch(epoch)` is called after every epoch of every group
    (epochs x groups calls in all; progress)."""
    t0 = time.perf_counter()
    names = list(train)
    if not names:
        raise ValueError("no embeddings to probe")
    dev = torch.device(device)
    shapes = {shape_of(train, n) for n in names}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise ValueError(f"embeddings must share one shape (N, V, F), got {sorted(shapes)}")
    N, V, F = next(iter(shapes))
    P = len(names)
    if V < 2:
        raise CtxsslError(f"the train embeddings hold {V} view per object; the probes need pairs",
                          "embed at least 2 train views per object")
    schema = settings.schema
    factors = schema.factor_names
    width = dict(schema.factors)
    g = torch.Generator().manual_seed(PAPER_SEED)
    stacks = {}  # factor -> StackedMLP of all P probes, created (and so initialised) in factors.py's order
    for f, kind in probes_of(schema):
        hidden = [PAPER_HIDDEN, PAPER_HIDDEN] if kind == MLP else []
        stacks[f] = StackedMLP(P, [2 * F, *hidden, width[f]], g)
    # the published loader drops the last partial batch; with fewer objects than one batch that would leave
    # nothing, so then the one (partial) batch is kept
    drop_last = N >= PAPER_BATCH
    n_batches = N // PAPER_BATCH if drop_last else 1
    obj_va, w1, w2 = val_pairs
    truth = dict(zip(factors, pair_targets(val_latents, obj_va, w1, w2, schema)))
    groups = probe_groups([nbytes_of(train, n) + nbytes_of(val, n) for n in names], group_bytes)
    out: dict = {}
    steps = 0
    for first, stop in groups:
        part = names[first:stop]
        tr = _Embeddings([train[n] for n in part], [normalise[n] for n in part], dev)  # (p, N, V, F)
        va = _Embeddings([val[n] for n in part], [normalise[n] for n in part], dev)  # (p, M, W, F)
        probes = {f: m.select(first, stop).to(dev) for f, m in stacks.items()}
        # fused Adam: the published update in one kernel over all stacked probe weights (the unfused one was 37% of
        # a probe step on the CPU with 16 probes of 1.6 M weights)
        opts = [adam(m.parameters(), lr=PAPER_LR, betas=PAPER_BETAS) for m in probes.values()]
        rng = np.random.default_rng([PAPER_SEED, 0xE7A1])  # every group sees the batches of the whole stack
        steps = 0
        for epoch in range(settings.epochs):
            v1, v2 = draw_epoch_pairs(N, V, rng)
            order = rng.permutation(N)
            for b in range(n_batches):
                obj = order[b * PAPER_BATCH:(b + 1) * PAPER_BATCH]
                targets = pair_targets(train_latents, obj, v1[obj], v2[obj], schema)
                target = {f: torch.as_tensor(t).to(dev) for f, t in zip(factors, targets)}
                x = tr.pairs(obj, v1[obj], v2[obj])  # (p, B, 2F)
                # per probe the mean over its batch and outputs, as nn.MSELoss; summed over probes (creation order)
                loss = sum((m(x) - target[f]).square().mean(dim=(1, 2)).sum() for f, m in probes.items())
                for opt in opts:
                    opt.zero_grad(set_to_none=True)
                loss.backward()
                for opt in opts:
                    opt.step()
                steps += 1
            if on_epoch is not None:
                on_epoch(epoch + 1)
        with torch.no_grad():
            preds = {f: [] for f in probes}
            chunk = max(256, 2 ** 22 // (len(part) * PAPER_HIDDEN))  # bounded memory: ~16 MB per hidden layer
            for s in range(0, len(obj_va), chunk):
                x = va.pairs(obj_va[s:s + chunk], w1[s:s + chunk], w2[s:s + chunk])
                for f, m in probes.items():
                    preds[f].append(m(x).cpu())
            pred = {f: torch.cat(p, dim=1).numpy() for f, p in preds.items()}  # (p, n, width)
        for i, name in enumerate(part):
            out[name] = {f: {k: r2_score(truth[f], pred[f][i], k) for k in R2_KINDS} for f in factors}
        del tr, va, probes, opts
    out = {name: out[name] for name in names}
    out["_meta"] = {"epochs": settings.epochs, "steps": steps, "drop_last": drop_last, "groups": len(groups),
                    "train_objects": int(N), "train_views": int(V), "seconds": time.perf_counter() - t0}
    return out
