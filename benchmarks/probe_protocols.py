"""Why two R² probe protocols disagree, measured on one run's cached embeddings (issue 18, part 3).

    python benchmarks/probe_protocols.py RUN [--data DIR] [--noise 0 0.01 0.05 0.2] [--out FILE.json]

For the embeddings h, z at c = 0 (a control: every mode is the same there) and z under rotation and colour
context at the largest c, it fits
- the published probes (`ctxssl evaluate`'s protocol, evaluate/paper_probes.py), and
- ctxssl 0.2's "fast" protocol, removed from the product because it disagreed: a closed-form ridge on
  standardised inputs for colour and a one-hidden-layer MLP trained 5 epochs on standardised inputs for
  rotation (kept here, and only here, to measure the disagreement),
and reports every cell under both R² definitions, plus each protocol's colour gap (colour R² under colour
context minus under rotation context) and rotation gap. With --noise, isotropic Gaussian noise of each given
fraction of the embedding's total variance is added to its train and val embeddings (seeded) before the
probes are re-fitted: a probe that reads a faint direction loses it as the noise floor rises.

The embeddings come from RUN/embeddings (the cache `ctxssl evaluate` fills), computed if missing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ctxssl_cli.data.rotations import relative_action
from ctxssl_cli.data.schema import COLOR, ROTATION
from ctxssl_cli.devices import resolve_device
from ctxssl_cli.context_pairs import default_context
from ctxssl_cli.evaluate.metrics import R2_KINDS, r2_score
from ctxssl_cli.evaluate.paper_probes import PaperProbeSettings, fit_paper_probes
from ctxssl_cli.evaluate.pipeline import EvalSettings, _embeddings
from ctxssl_cli.evaluate.probes import _linear, _standardiser, eval_pairs
from ctxssl_cli.runs import load_run
from ctxssl_cli.schedule import warmup_cosine


# ---- ctxssl 0.2's fast protocol (removed from the product; here only to measure it) --------------------------
def _fast_mlp(x_tr, y_tr, g, hidden=1024, epochs=5, lr=2e-3, batch=512):
    model = nn.Sequential(_linear(x_tr.shape[1], hidden, g), nn.ReLU(), _linear(hidden, y_tr.shape[1], g))
    n = len(x_tr)
    schedule = warmup_cosine(lr, epochs * math.ceil(n / batch), 0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for s in range(0, n, batch):
            idx = perm[s:s + batch]
            for group in opt.param_groups:
                group["lr"] = float(schedule[step])
            loss = nn.functional.mse_loss(model(x_tr[idx]), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return model


def _fast_ridge(x, y, ridge=1e-3):
    gram = (x.T @ x).double() + ridge * len(x) * torch.eye(x.shape[1], dtype=torch.float64)
    w = torch.linalg.solve(gram, (x.T @ y).double()).float()
    return lambda inp: inp @ w


def fast_protocol(train: dict, lat_tr, val: dict, lat_va, tr_pairs, va_pairs) -> dict:
    """The 0.2 protocol: inputs standardised on train pairs, targets centred (the MLP's also scaled)."""
    out = {}
    for name in train:
        def arrays(e, lat, pairs):
            obj, a, b = pairs
            x = torch.cat([e[obj, a], e[obj, b]], dim=1).float()
            act = torch.as_tensor(relative_action(lat[obj, a], lat[obj, b], canonical=False))
            return x, act[:, list(ROTATION)], act[:, list(COLOR)]

        x_tr, r_tr, c_tr = arrays(train[name], lat_tr, tr_pairs)
        x_va, r_va, c_va = arrays(val[name], lat_va, va_pairs)
        mean, std = _standardiser(x_tr)
        x_tr, x_va = (x_tr - mean) / std, (x_va - mean) / std
        cells = {}
        r_mean = r_tr.mean(0, keepdim=True)
        r_scale = (r_tr - r_mean).square().mean().sqrt().clamp_min(1e-8)
        mlp = _fast_mlp(x_tr, (r_tr - r_mean) / r_scale, torch.Generator().manual_seed(0))
        with torch.no_grad():
            pred = (mlp(x_va) * r_scale + r_mean).numpy()
        cells["rotation"] = {k: r2_score(r_va.numpy(), pred, k) for k in R2_KINDS}
        c_mean = c_tr.mean(0, keepdim=True)
        lin = _fast_ridge(x_tr, c_tr - c_mean)
        pred = (lin(x_va) + c_mean).numpy()
        cells["color"] = {k: r2_score(c_va.numpy(), pred, k) for k in R2_KINDS}
        out[name] = cells
    return out


# ---- the study ------------------------------------------------------------------------------------------------
def with_noise(e: torch.Tensor, fraction: float, g: torch.Generator, total_var: float) -> torch.Tensor:
    """e plus isotropic Gaussian noise whose total variance is `fraction` x total_var."""
    if fraction == 0:
        return e
    sigma = math.sqrt(fraction * total_var / e.shape[-1])
    return e + sigma * torch.randn(e.shape, generator=g)


def gaps(cells: dict, c: int, kind: str) -> dict:
    rot, col = cells[f"rotation@{c}"], cells[f"color@{c}"]
    return {"color_gap": col["color"][kind] - rot["color"][kind],
            "rotation_gap": rot["rotation"][kind] - col["rotation"][kind]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--noise", type=float, nargs="*", default=[0.0])
    p.add_argument("--epochs", type=int, default=300, help="epochs of the published probes")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    run = load_run(args.run, args.data, resolve_device("cpu"))
    settings = EvalSettings().for_block_size(run.spec.model.block_size)
    c = max(settings.lengths)
    context = default_context(run)
    timings: dict = {}
    cache = run.checkpoint.parent / "embeddings"
    tr = _embeddings(run, "train", settings, context, {}, cache, None, timings)
    va = _embeddings(run, "val", settings, context, {}, cache, None, timings)
    keys = {"features": "h", "none@0": "z.none.0", f"rotation@{c}": f"z.rotation.{c}", f"color@{c}": f"z.color.{c}"}
    lat_tr, lat_va = tr["latents"].numpy(), va["latents"].numpy()
    n_tr, v_tr = tr["h"].shape[:2]
    n_va, v_va = va["h"].shape[:2]
    tr_pairs, va_pairs = eval_pairs(n_tr, v_tr, 10, 0), eval_pairs(n_va, v_va, 10, 1)
    results = {"run": str(args.run), "step": run.step, "c": c, "levels": {}}
    for level in args.noise:
        g = torch.Generator().manual_seed(1234)
        train, val = {}, {}
        for name, key in keys.items():
            total_var = float(tr[key].reshape(-1, tr[key].shape[-1]).var(0).sum())
            train[name] = with_noise(tr[key], level, g, total_var)
            val[name] = with_noise(va[key], level, g, total_var)
        t0 = time.perf_counter()
        paper = fit_paper_probes(train, lat_tr, val, lat_va, va_pairs, {n: k != "h" for n, k in keys.items()},
                                 PaperProbeSettings(args.epochs))
        paper.pop("_meta")
        t_paper = time.perf_counter() - t0
        t0 = time.perf_counter()
        fast = fast_protocol(train, lat_tr, val, lat_va, tr_pairs, va_pairs)
        t_fast = time.perf_counter() - t0
        entry = {"paper": paper, "fast": fast, "seconds": {"paper": t_paper, "fast": t_fast},
                 "gaps": {proto: {k: gaps(cells, c, k) for k in R2_KINDS}
                          for proto, cells in (("paper", paper), ("fast", fast))}}
        results["levels"][str(level)] = entry
        print(f"== noise {level:g} of the total variance (paper probes {t_paper:.0f} s, fast {t_fast:.0f} s)")
        print(f"{'cell':<16}" + "".join(f"{proto + ' ' + f + ' ' + k:>22}" for proto in ("fast", "paper")
                                       for f in ("rotation", "color") for k in R2_KINDS))
        for name in keys:
            print(f"{name:<16}" + "".join(f"{entry[proto][name][f][k]:>22.3f}" for proto in ("fast", "paper")
                                         for f in ("rotation", "color") for k in R2_KINDS))
        for proto in ("fast", "paper"):
            for k in R2_KINDS:
                gp = entry["gaps"][proto][k]
                print(f"  {proto:<5} {k:<7} colour gap {gp['color_gap']:+.3f}  rotation gap {gp['rotation_gap']:+.3f}")
        sys.stdout.flush()
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
