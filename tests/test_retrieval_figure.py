"""retrieval.png (the paper's Figure 1): the ranked views come from the retrieval queries; one figure per pair."""

import numpy as np
import torch
import torch.nn.functional as F

from ctxssl_cli.evaluate.retrieval_figure import EXAMPLES, TOP, plot_retrieval, retrieval_examples

PNG = b"\x89PNG\r\n\x1a\n"


def _embeddings(n=6, v=7, f=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(n, v, f, generator=g), dim=-1)
    return z


def test_examples_rank_the_object_views_by_cosine_to_the_query():
    z_rot, z_col = _embeddings(seed=0), _embeddings(seed=1)
    # rotation queries hit their target exactly; colour queries point at view 1 whatever the target
    q_rot = z_rot.clone()
    q_col = z_col[:, 1:2].expand_as(z_col).clone()
    views = torch.tensor([0, 3, 5, 8, 9, 11, 12])
    va = {"z.rotation.14": z_rot, "q.rotation.14": q_rot, "z.color.14": z_col, "q.color.14": q_col, "views": views}
    ex = retrieval_examples(va, ["rotation", "color"], 14)
    assert len(ex["objects"]) == EXAMPLES and ex["source"] == 0 and ex["pairs"] == [["rotation", "color"]]
    assert ex["objects"] == sorted(ex["objects"])
    for r, t in enumerate(ex["target"]):
        assert t != 0 and t in views.tolist()
        assert ex["top"]["rotation"][r][0] == t  # the exact query ranks its own target first
        assert ex["top"]["color"][r][0] == 3  # view position 1 is view id 3
        assert len(ex["top"]["rotation"][r]) == TOP and len(set(ex["top"]["rotation"][r])) == TOP
    assert retrieval_examples(va, ["rotation", "color"], 14) == ex  # seeded


class FakeSplit:
    def __init__(self, n, v):
        self.n, self.v = n, v

    def images(self, obj, view):
        obj, view = np.asarray(obj), np.asarray(view)
        x = (obj[:, None, None, None] * 20 + view[:, None, None, None] * 3) % 256
        return torch.from_numpy(np.broadcast_to(x, (len(obj), 3, 8, 8)).astype(np.uint8).copy())


def test_one_figure_per_pair_of_modes(tmp_path):
    va = {"views": torch.arange(5)}
    for m in ("crop", "color", "blur"):
        z = _embeddings(n=3, v=5, seed=len(m))
        va[f"z.{m}.2"], va[f"q.{m}.2"] = z, z
    ex = retrieval_examples(va, ["crop", "color", "blur"], 2)
    assert len(ex["objects"]) == 3 and all(len(t) == 5 for t in ex["top"]["crop"])
    paths = plot_retrieval(ex, FakeSplit(3, 5), tmp_path)
    assert [p.name for p in paths] == ["retrieval.png", "retrieval_crop_blur.png", "retrieval_color_blur.png"]
    assert all(p.read_bytes()[:8] == PNG for p in paths)
