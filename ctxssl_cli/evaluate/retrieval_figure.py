"""The paper's Figure 1 for any run: `retrieval.png` — for a few seeded val objects, the source view, the target
view, and the gallery views retrieved for the predicted representation (source + action) under one context mode
and under another, side by side, so that a reader sees the context decide whether the neighbours match the
target's pose or its colour.

Built from the retrieval queries `evaluate` already computes (val `q.<mode>.<c>` against the object's own views
`z.<mode>.<c>`, at the largest context length): `retrieval_examples` picks the objects and ranks the views (no
encoder pass), the report keeps the indices (meta.retrieval_examples), and `plot_retrieval` draws them from the
split's images. One figure per pair of context modes of the schema's factors: views3d (rotation, color) ->
retrieval.png; augment2d -> retrieval.png for (crop, color), retrieval_crop_blur.png, retrieval_color_blur.png.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from ctxssl_cli.evaluate.plots import save_png

EXAMPLES = 4  # val objects shown
TOP = 5  # retrieved views shown per mode
EXAMPLE_SEED = 0xF161  # which objects and target views: the same for every run on a dataset


def figure_name(index: int, pair: tuple[str, str]) -> str:
    return "retrieval.png" if index == 0 else f"retrieval_{pair[0]}_{pair[1]}.png"


def retrieval_examples(va: dict[str, torch.Tensor], factors: list[str], length: int) -> dict:
    """The objects, target views and top-ranked views of the figure, from val embeddings with retrieval queries.

    va: z.<mode>.<c> and q.<mode>.<c> (N, V, F) L2-normalised, views (V,) the embedded view ids (view 0 first).
    Returns JSON-able lists: objects (E,), source view id, target (E,) view ids, top[mode] (E, k) view ids."""
    n, v = va[f"z.{factors[0]}.{length}"].shape[:2]
    views = va["views"].numpy()
    rng = np.random.default_rng(EXAMPLE_SEED)
    e = min(EXAMPLES, n)
    obj = np.sort(rng.choice(n, e, replace=False))
    j = rng.integers(1, v, size=e) if v > 1 else np.zeros(e, np.int64)  # a target other than the source
    k = min(TOP, v)
    top = {}
    for mode in factors:
        z = va[f"z.{mode}.{length}"][obj].double()  # (E, V, F)
        q = va[f"q.{mode}.{length}"][obj, j].double()  # (E, F): view 0 moved by the action 0 -> j
        sims = torch.einsum("evf,ef->ev", z, q)  # (E, V) cosine (both unit length)
        order = torch.argsort(-sims, dim=1, stable=True)[:, :k]  # best first; ties by view position
        top[mode] = views[order.numpy()].tolist()
    return {"length": int(length), "objects": obj.tolist(), "source": int(views[0]), "target": views[j].tolist(),
            "top": top, "pairs": [list(p) for p in combinations(factors, 2)]}


def plot_retrieval(examples: dict, split, out_dir: Path, titles: dict[str, str] | None = None) -> list[Path]:
    """One PNG per pair of modes (examples["pairs"]): rows = objects; columns = source, target, then the top views
    of each mode of the pair (a green frame marks the target view)."""
    from matplotlib.figure import Figure

    titles = titles or {}
    obj = np.asarray(examples["objects"], np.int64)
    target = np.asarray(examples["target"], np.int64)
    src = split.images(obj, np.full_like(obj, examples["source"])).permute(0, 2, 3, 1).numpy()
    tgt = split.images(obj, target).permute(0, 2, 3, 1).numpy()
    paths = []
    for index, (a, b) in enumerate(examples["pairs"]):
        k = len(examples["top"][a][0]) if len(obj) else 0
        cols = 2 + 2 * k
        fig = Figure(figsize=(1.15 * cols + 0.4, 1.25 * max(len(obj), 1) + 0.6), layout="constrained")
        axes = np.asarray(fig.subplots(max(len(obj), 1), cols, squeeze=False))
        for r in range(len(obj)):
            tops = {m: split.images(np.repeat(obj[r], k), np.asarray(examples["top"][m][r], np.int64))
                    .permute(0, 2, 3, 1).numpy() for m in (a, b)}
            cells = [(src[r], "source", False), (tgt[r], "target", False)]
            for m in (a, b):
                cells += [(img, f"{titles.get(m, m)} #{i + 1}" if r == 0 else "", int(view) == int(target[r]))
                          for i, (img, view) in enumerate(zip(tops[m], examples["top"][m][r]))]
            for ax, (img, label, hit) in zip(axes[r], cells):
                ax.imshow(img, interpolation="nearest")
                ax.set_xticks([]), ax.set_yticks([])
                if r == 0 or label in ("source", "target"):
                    ax.set_title(label if r == 0 else "", fontsize=7)
                for spine in ax.spines.values():
                    spine.set_visible(hit)
                    spine.set_color("#2ca02c")
                    spine.set_linewidth(3)
        fig.suptitle(f"views retrieved for source + action at c = {examples['length']}: {titles.get(a, a)} "
                     f"context (left) vs {titles.get(b, b)} context (right); green = the target view", fontsize=9)
        paths.append(save_png(fig, Path(out_dir) / figure_name(index, (a, b)), dpi=100))
    return paths
