"""`embed` and `evaluate` on augment2d datasets (an image folder: one image per object): the fixed evaluation views,
actions and context modes by schema, per-factor R² (crop, color, blur), the report and plots, and the schema check
that keeps a 3DIEBench run off 2D data and the other way round. The runs here are untrained (made without the
trainer: a model, a checkpoint and its recorded meta), which is all these paths need."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from ctxssl_cli import embed
from ctxssl_cli.checkpoint import CHECKPOINT_NAME, save_checkpoint
from ctxssl_cli.data import augment2d, rotations
from ctxssl_cli.data.actions import relative_action_for
from ctxssl_cli.data.image_folder import pack_image_folder
from ctxssl_cli.data.prepared import PreparedDataset, SplitData
from ctxssl_cli.data.schema import AUGMENT2D, VIEWS3D, ActionSchema
from ctxssl_cli.data.virtual_views import EVAL_VIEWS, AugmentedViews, evaluation_split
from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.evaluate.compare import compare_runs
from ctxssl_cli.evaluate.paper_probes import PaperProbeSettings, fit_paper_probes
from ctxssl_cli.evaluate.pipeline import EvalSettings, evaluate_checkpoint, evaluate_run
from ctxssl_cli.evaluate.probes import ProbeSettings, eval_pairs
from ctxssl_cli.evaluate.report import REPORT_FILES, build_markdown, write_report
from ctxssl_cli.model.build import build_model
from ctxssl_cli.runs import load_run
from ctxssl_cli.spec import load_spec, to_yaml

RES = 16
TINY = ["model.block_size=8", "model.n_embd=32", "model.n_layer=1", "model.n_head=2", "model.encoder=convnet",
        "model.aux_hidden=32", "data.workers=0", f"data.resolution={RES}"]
FAST = ProbeSettings(cls_epochs=2, cls_batch_size=1000)
FACTORS = ("crop", "color", "blur")
MODES_2D = ("crop", "color", "blur", "none")


def _image_folder(root):
    """3 classes x 6 small RGB PNGs, each class a different colour trend plus noise."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(("ant", "bee", "cat")):
        (root / name).mkdir(parents=True)
        for i in range(6):
            img = rng.integers(0, 80, (20, 24, 3)) + np.linspace(0, 170, 24)[None, :, None] * (np.arange(3) == k)
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def make_run(run_dir, data: PreparedDataset, schema: ActionSchema, preset="demo", seed=0):
    """A run folder as the trainer leaves it, without training: fresh weights, the meta the trainer records."""
    overrides = TINY if preset == "demo" else [k for k in TINY if not k.startswith("model.") or "encoder" in k]
    spec = load_spec(preset, [*overrides, f"data.path={data.root}"])
    torch.manual_seed(seed)
    model = build_model(spec, action_dim=schema.dim, schema=schema)
    meta = {"data_path": str(data.root.resolve()), "data_manifest_sha256": data.manifest_sha256, "resolution": RES,
            "n_classes": len(data.classes), "action_dim": schema.dim, "mean": list(data.mean), "std": list(data.std),
            **({"action_schema": schema.to_manifest()} if schema != VIEWS3D else {})}  # views3d runs record none
    run_dir.mkdir(parents=True)
    save_checkpoint(run_dir / CHECKPOINT_NAME, model, None, to_yaml(spec, meta), {"step": 0, "epoch": 0})
    return run_dir


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval2d")
    pack_image_folder(_image_folder(tmp / "imgs"), tmp / "d2", resolution=RES, codec="raw", workers=0,
                      progress=False)
    d2 = PreparedDataset(tmp / "d2")
    run2d = make_run(tmp / "run2d", d2, AUGMENT2D)
    return {"tmp": tmp, "d2": d2, "run2d": run2d, "run": load_run(run2d, None, torch.device("cpu"))}


def test_augmented_views_are_fixed_and_rendered_from_their_params(world):
    split = world["d2"].split("val")
    a, b = AugmentedViews(split, 4, 7, RES), AugmentedViews(split, 4, 7, RES)
    assert a.latents.shape == (split.n_objects, 4, 9) and a.latents.dtype == np.float32
    assert np.array_equal(a.latents, b.latents)  # a pure function of (seed, split name)
    assert not np.array_equal(a.latents, AugmentedViews(split, 4, 8, RES).latents)
    train = world["d2"].split("train")
    assert not np.array_equal(AugmentedViews(train, 4, 7, RES).latents[:split.n_objects], a.latents)  # by split
    assert a.n_objects == split.n_objects and a.n_views == 4 and a.name == "val"
    assert a.object_ids == split.object_ids and np.array_equal(a.labels, split.labels)
    obj, view = np.repeat(np.arange(a.n_objects), 4), np.tile(np.arange(4), a.n_objects)
    imgs = a.images(obj, view)
    assert imgs.dtype == torch.uint8 and imgs.shape == (len(obj), 3, RES, RES)
    src = split.images(obj, np.zeros_like(obj))
    ref = augment2d.apply_params(src, torch.from_numpy(a.latents[obj, view]), RES)
    assert torch.equal(imgs, (ref * 255).round().to(torch.uint8))
    assert torch.equal(a.images([1], [2])[0], imgs[1 * 4 + 2])  # alone as in a batch
    assert len({imgs[i].numpy().tobytes() for i in range(4)}) == 4  # four different views of object 0
    with pytest.raises(IndexError):
        a.images([0], [4])
    # the one mapping (schema, split) -> what evaluation reads; the defaults
    assert isinstance(evaluation_split(world["d2"], AUGMENT2D, "val", RES), AugmentedViews)
    assert world["run"].split("val").n_views == EVAL_VIEWS == 4
    assert np.array_equal(world["run"].split("val").latents, AugmentedViews(split, out_size=RES).latents)


def test_actions_by_schema():
    rng = np.random.default_rng(1)
    pa = augment2d.sample_params(6, torch.Generator().manual_seed(1)).numpy().reshape(2, 3, 9)
    pb = augment2d.sample_params(6, torch.Generator().manual_seed(2)).numpy().reshape(2, 3, 9)
    got = relative_action_for(AUGMENT2D, pa, pb)
    ref = augment2d.relative_action(torch.from_numpy(pa.reshape(-1, 9)), torch.from_numpy(pb.reshape(-1, 9)))
    assert got.shape == (2, 3, 9) and got.dtype == np.float32 and np.array_equal(got.reshape(-1, 9), ref.numpy())
    lat = rng.uniform(0, 1, (2, 4, 7))
    for canonical in (True, False):
        assert np.array_equal(relative_action_for(VIEWS3D, lat[0], lat[1], canonical),
                              rotations.relative_action(lat[0], lat[1], canonical=canonical))


def test_context_modes_follow_the_schema():
    assert embed.modes_for(VIEWS3D) == embed.MODES == ("rotation", "color", "none")
    assert embed.modes_for(AUGMENT2D) == MODES_2D
    assert embed.check_modes(None, AUGMENT2D) == list(MODES_2D) and embed.check_modes(None) == list(embed.MODES)
    assert embed.mode_mask("crop", schema=AUGMENT2D).tolist() == [1.0] * 4 + [0.0] * 5
    assert embed.mode_mask("blur", schema=AUGMENT2D).tolist() == [0.0] * 8 + [1.0]
    assert embed.mode_mask("none", schema=AUGMENT2D).tolist() == [0.0] * 9
    assert embed.mode_mask("rotation").tolist() == [1.0] * 4 + [0.0] * 2  # views3d as before
    with pytest.raises(CtxsslError, match="unknown context mode 'rotation' for augment2d data"):
        embed.check_modes(["rotation"], AUGMENT2D)
    with pytest.raises(CtxsslError, match="unknown context mode 'crop'"):
        embed.check_modes(["crop"])
    assert embed.check_mode_names(["blur", "crop", "blur"]) == ["blur", "crop"]  # any schema's, before loading
    with pytest.raises(CtxsslError, match="unknown context mode 'shape'"):
        embed.check_mode_names(["shape"])


def test_embed_split_on_augmented_views(world):
    run = world["run"]
    assert run.schema == AUGMENT2D and run.action_dim == 9
    ctx = embed.default_context(run)
    split = run.split("val")
    assert ctx.action.shape == (64, 9) and (ctx.view_a != ctx.view_b).all()
    tr = run.split("train")
    np.testing.assert_array_equal(ctx.action, relative_action_for(AUGMENT2D, tr.latents[ctx.obj, ctx.view_a],
                                                                  tr.latents[ctx.obj, ctx.view_b]))
    modes = embed.check_modes(None, run.schema)
    a = embed.embed_split(run, "val", modes, [0, 2], ctx, retrieval=True)
    n, f = split.n_objects, run.model.feature_dim
    for m in MODES_2D:
        for c in (0, 2):
            assert a[f"z.{m}.{c}"].shape == (n, 4, f) and a[f"q.{m}.{c}"].shape == (n, 4, f)
    assert a["h"].shape == (n, 4, f) and torch.equal(a["latents"], torch.from_numpy(split.latents))
    assert torch.allclose(a["z.crop.2"].norm(dim=-1), torch.ones(n, 4))
    assert not torch.equal(a["z.crop.2"], a["z.blur.2"])  # the modes reveal different components
    b = embed.embed_split(run, "val", modes, [0, 2], ctx, retrieval=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # `ctxssl embed` end to end: the file records the evaluation views, which are part of the cache key
    res = embed.embed_run(world["run2d"], None, "cpu", embed.EmbedSettings(lengths=[2]))
    assert res.modes == list(MODES_2D) and res.shape == (n, 4, f)
    tensors, meta = embed.load_embeddings(res.path)
    views = json.loads(meta["virtual_views"])
    assert views["views_per_object"] == 4 and views["out_size"] == RES and "z.blur.2" in tensors
    changed = {**meta, "virtual_views": json.dumps({**views, "seed": 1})}
    assert embed.cache_key(changed) != embed.cache_key(meta)
    with pytest.raises(CtxsslError, match="unknown context mode 'rotation'"):
        embed.embed_run(world["run2d"], None, "cpu", embed.EmbedSettings(modes=["rotation"], lengths=[2]))


def test_paper_probes_per_factor_learn_the_parameters():
    """The augment2d probes (crop MLP, color and blur linear) on embeddings that carry the relative parameters."""
    gen = torch.Generator().manual_seed(0)
    n, m, v = 200, 40, 4
    lat_tr = augment2d.sample_params(n * v, gen).numpy().reshape(n, v, 9)
    lat_va = augment2d.sample_params(m * v, gen).numpy().reshape(m, v, 9)
    proj = torch.randn(9, 24, generator=gen)

    def emb(lat):  # each view's absolute target through a fixed linear map: pairs carry the relative action
        t = augment2d.absolute_target(torch.from_numpy(lat.reshape(-1, 9)))
        return (t @ proj).reshape(lat.shape[0], lat.shape[1], 24)

    out = fit_paper_probes({"h": emb(lat_tr)}, lat_tr, {"h": emb(lat_va)}, lat_va, eval_pairs(m, v, 3, 1),
                           {"h": False}, PaperProbeSettings(epochs=150, schema=AUGMENT2D))
    assert list(out["h"]) == list(FACTORS)
    assert out["h"]["color"]["sklearn"] > 0.5 and out["h"]["blur"]["sklearn"] > 0.5  # linear: nearly exact
    assert out["h"]["crop"]["sklearn"] > 0.2


def test_evaluate_run_on_augment2d(world, tmp_path):
    run = world["run"]
    s = EvalSettings(probe_epochs=2, probe=FAST, knn_k=5)
    report = evaluate_run(run, s, [], tmp_path / "cache")
    assert report["meta"]["schema"] == AUGMENT2D.to_manifest()
    assert report["meta"]["settings"]["modes"] == list(MODES_2D)
    assert report["meta"]["data"]["val_views"] == 4 and report["meta"]["data"]["virtual_views"]["seed"] > 0
    for section in ("r2", "share"):
        assert set(report[section]) == {"features", *MODES_2D}
        assert set(report[section]["features"]) == set(FACTORS)
        for m in MODES_2D:
            assert set(report[section][m]) == {"0", "2"}
            assert all(set(cell) == set(FACTORS) and all(np.isfinite(list(cell.values())))
                       for cell in report[section][m].values())
    assert set(report["r2_definitions"]["sklearn"]["crop"]["2"]) == set(FACTORS)
    assert set(report["mrr"]) == set(MODES_2D) and 0 < report["mrr"]["blur"]["2"]["mrr"] <= 1
    assert 0 <= report["top1"]["features"] <= 1 and set(report["top1"]["crop"]) == {"0", "2"}
    assert set(report["knn"]["color"]) == {"0", "2"}
    assert report["meta"]["settings"]["r2_probe"]["factor_probes"] == {
        "crop": "MLP 2F-1024-1024-4", "color": "linear 2F-4", "blur": "linear 2F-1"}
    paths = write_report(report, tmp_path / "rep")
    assert [p.name for p in paths] == list(REPORT_FILES)  # one R² figure, a panel per factor
    md = paths[1].read_text()
    assert "| embedding | crop R² (MLP) | color R² (linear) | blur R² (linear) |" in md
    assert "| embedding | crop | color | blur |" in md  # variance share
    assert md.index("| crop@0 |") < md.index("| color@0 |") < md.index("| blur@0 |") < md.index("| none@0 |")
    assert "action schema**: augment2d" in md and "paper's 3DIEBench numbers" not in md
    assert md == build_markdown(json.loads(paths[0].read_text()))  # the JSON names the schema too
    with pytest.raises(CtxsslError, match="tabulates 3D-view runs"):  # its columns are 3DIEBench's
        compare_runs([tmp_path / "rep"])
    # the cached embeddings are reused: a second evaluation is the same report
    again = evaluate_run(run, s, [], tmp_path / "cache")
    assert again["r2"] == report["r2"] and again["top1"] == report["top1"]
    # probes one embedding at a time (the least memory, as at 3DIEBench's scale): the same numbers
    single = evaluate_run(run, replace(s, probe_memory_gb=0), [], tmp_path / "cache")
    probe_meta = single["meta"]["settings"]["r2_probe"]
    n_probed = 1 + len(MODES_2D) * 2 - len(probe_meta["shared_probes"])  # h, z per mode and length, c = 0 once
    assert probe_meta["groups"] == n_probed and report["meta"]["settings"]["r2_probe"]["groups"] == 1
    assert _close(single["r2"], report["r2"]) and _close(single["r2_definitions"], report["r2_definitions"])


def _close(a, b, tol=1e-6):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    return abs(a - b) <= tol


def test_runs_read_only_data_of_their_schema(world):
    from ctxssl_cli.data.synthetic import prepare_synthetic

    tmp = world["tmp"]
    prepare_synthetic(tmp / "d3", classes=3, objects_per_class=2, views=3, resolution=RES, seed=0, workers=1,
                      progress=False)
    d3 = PreparedDataset(tmp / "d3")
    run3d = make_run(tmp / "run3d", d3, VIEWS3D)
    r3 = load_run(run3d, None, torch.device("cpu"))
    assert r3.schema == VIEWS3D and r3.action_dim == 6 and isinstance(r3.split("val"), SplitData)
    for run_dir, data, trained, other in ((run3d, world["d2"].root, "views3d", "augment2d"),
                                          (world["run2d"], d3.root, "augment2d", "views3d")):
        with pytest.raises(CtxsslError) as e:
            load_run(run_dir, data, torch.device("cpu"))
        msg = e.value.message
        assert "\n" not in msg and f"trained on {trained} data" in msg and f"is a {other} dataset" in msg
        assert "--data" in e.value.fix


def test_baselines_on_augment2d_are_refused(world, tmp_path):
    run_dir = make_run(tmp_path / "simclr", world["d2"], AUGMENT2D, preset="demo/simclr")
    with pytest.raises(CtxsslError, match="baselines on augment2d datasets are not supported yet"):
        evaluate_checkpoint(run_dir, None, "cpu", EvalSettings(probe_epochs=2))
