"""Training on augment2d data (SPEC §3.4): views made on the fly, the schema recorded and enforced, resume exact."""

import pytest
import torch

from ctxssl_cli.checkpoint import load_checkpoint
from ctxssl_cli.data.prepared import PreparedDataset
from ctxssl_cli.data.schema import AUGMENT2D, VIEWS3D, schema_from_manifest
from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.spec import load_spec, stored_meta
from ctxssl_cli.train.dist import DistInfo
from ctxssl_cli.train.loop import pretrain

TINY = ["train.batch_size=16", "model.block_size=8", "model.n_embd=32", "model.n_layer=1", "model.n_head=2",
        "model.encoder=convnet", "model.aux_hidden=32", "data.workers=0", "train.threads=1"]


@pytest.fixture(scope="module")
def images_data(tmp_path_factory):
    from ctxssl_cli.data.synthetic import prepare_synthetic

    root = tmp_path_factory.mktemp("img") / "i"
    prepare_synthetic(root, classes=3, objects_per_class=10, resolution=24, seed=0, layout="images", workers=1,
                      progress=False)
    return PreparedDataset(root)


@pytest.fixture(scope="module")
def views_data(tmp_path_factory):
    from ctxssl_cli.data.synthetic import prepare_synthetic

    root = tmp_path_factory.mktemp("v") / "s"
    prepare_synthetic(root, classes=3, objects_per_class=4, views=4, resolution=16, seed=0, workers=1, progress=False)
    return PreparedDataset(root)


def _spec(steps, extra=()):
    return load_spec("demo-2d", TINY + [f"train.max_steps={steps}", "train.checkpoint_every=1",
                                        "train.warmup_epochs=1", "data.resolution=16", *extra])


def test_synthetic_images_layout_is_an_augment2d_dataset(images_data):
    assert schema_from_manifest(images_data.manifest) == AUGMENT2D
    tr = images_data.split("train")
    assert tr.n_views == 1 and tr.latents.shape == (tr.n_objects, 1, 0)
    assert tr.images([0, 1], [0, 0]).shape == (2, 3, 24, 24)


def test_pretrain_records_the_schema_and_learns_the_revealed_factors(images_data, tmp_path):
    summary = pretrain(_spec(3), images_data, tmp_path / "run", DistInfo())
    assert summary["final_step"] == 3
    ckpt = load_checkpoint(tmp_path / "run")
    meta = stored_meta(ckpt.spec_yaml)
    assert meta["action_schema"] == AUGMENT2D.to_manifest() and meta["action_dim"] == 9
    # the token's action width and the aux predictor's output are the schema's 9 components
    assert ckpt.tensors["model.aux_predictor.4.weight"].shape[0] == 9
    assert (tmp_path / "run" / "curves.png").is_file()  # drawn at every checkpoint (issue 19)


def test_resume_with_on_the_fly_views_is_bit_exact(images_data, tmp_path, monkeypatch):
    pretrain(_spec(5), images_data, tmp_path / "full", DistInfo())
    import ctxssl_cli.train.loop as loop

    real = loop.sample_env

    def crash_at_3(envs, seed, step):
        if step == 3:
            raise RuntimeError("simulated crash")
        return real(envs, seed, step)

    monkeypatch.setattr(loop, "sample_env", crash_at_3)
    with pytest.raises(RuntimeError, match="simulated"):
        pretrain(_spec(5), images_data, tmp_path / "cut", DistInfo())
    monkeypatch.setattr(loop, "sample_env", real)
    pretrain(_spec(5), images_data, tmp_path / "cut", DistInfo(), resume=True)
    a, b = load_checkpoint(tmp_path / "full").tensors, load_checkpoint(tmp_path / "cut").tensors
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_loader_workers_do_not_change_the_views(images_data, tmp_path):
    pretrain(_spec(2), images_data, tmp_path / "w0", DistInfo())
    pretrain(_spec(2, ["data.workers=2"]), images_data, tmp_path / "w2", DistInfo())
    a, b = load_checkpoint(tmp_path / "w0").tensors, load_checkpoint(tmp_path / "w2").tensors
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("extra, match", [
    (["train.envs={rotation: 0.5, color: 0.5}"], "train.envs names 'rotation'"),
    (["train.aux_rotation=matrix"], "train.aux_rotation applies to views3d data"),
])
def test_settings_of_another_schema_are_refused(images_data, tmp_path, extra, match):
    with pytest.raises(CtxsslError, match=match):
        pretrain(_spec(1, extra), images_data, tmp_path / "r", DistInfo())
    assert not (tmp_path / "r").exists()


def test_a_baseline_on_augment2d_data_is_refused(images_data, tmp_path):
    spec = load_spec("demo/simclr", ["train.max_steps=1", "train.batch_size=8", "data.workers=0"])
    with pytest.raises(CtxsslError, match="not supported yet"):
        pretrain(spec, images_data, tmp_path / "b", DistInfo())


def test_2d_environments_on_views3d_data_are_refused(views_data, tmp_path):
    with pytest.raises(CtxsslError, match="train.envs names 'crop'.*views3d"):
        pretrain(_spec(1), views_data, tmp_path / "r", DistInfo())


def test_resume_on_data_of_another_schema_is_refused(images_data, views_data, tmp_path):
    spec = load_spec("rotation", TINY + ["train.max_steps=1", "train.checkpoint_every=1", "data.resolution=16"])
    pretrain(spec, views_data, tmp_path / "r", DistInfo())
    with pytest.raises(CtxsslError, match="is not the one .* was trained on"):  # the dataset check comes first
        pretrain(spec, images_data, tmp_path / "r", DistInfo(), resume=True)
    assert load_checkpoint(tmp_path / "r").step == 1 and VIEWS3D.dim == 6


# ---- model.action_units (standard units for 2D actions and aux targets) ------------------------------------

def test_standard_units_give_unit_actions_and_half_unit_targets():
    """The scales come from the pipeline itself: on fresh draws (another seed) the scaled actions have std ~1 and
    the scaled aux targets std ~0.5 in every component; the scales are a fixed function (same twice)."""
    from ctxssl_cli.data.augment2d import (AUX_TARGET_STD, absolute_target, relative_action, sample_params,
                                           unit_scales)

    a_scale, t_scale = unit_scales()
    assert a_scale.shape == t_scale.shape == (9,)
    g = torch.Generator().manual_seed(123)
    px, py = sample_params(20000, g), sample_params(20000, g)
    a_std = (relative_action(px, py) * a_scale).std(0)
    t_std = (absolute_target(py) * t_scale).std(0)
    assert torch.allclose(a_std, torch.ones(9), rtol=0.05), a_std
    assert torch.allclose(t_std, torch.full((9,), AUX_TARGET_STD), rtol=0.05), t_std
    unit_scales.cache_clear()
    assert all(torch.equal(x, y) for x, y in zip(unit_scales(), (a_scale, t_scale)))


def test_standard_units_scale_the_tokens_and_stay_out_of_the_checkpoint(images_data, tmp_path):
    from ctxssl_cli.data.augment2d import unit_scales
    from ctxssl_cli.model.build import build_model
    from ctxssl_cli.runs import load_run

    raw = build_model(_spec(1, ["model.action_units=raw"]), 9, AUGMENT2D)
    std = build_model(_spec(1), 9, AUGMENT2D)  # demo-2d: standard
    assert torch.equal(raw.action_scale, torch.ones(9)) and torch.equal(std.action_scale, unit_scales()[0])
    h, a = torch.randn(5, std.feature_dim), torch.randn(5, 9)
    assert torch.equal(std._token(h, a)[:, -9:], a * unit_scales()[0])
    assert torch.equal(raw._token(h, a)[:, -9:], a)
    assert "action_scale" not in std.state_dict()  # set from the spec at every build, so old runs load as before
    pretrain(_spec(2), images_data, tmp_path / "run", DistInfo())
    run = load_run(tmp_path / "run", images_data.root, torch.device("cpu"))
    assert torch.equal(run.model.action_scale, unit_scales()[0])  # embed / evaluate use the units trained with


def test_standard_units_change_the_aux_target_only_in_scale():
    from ctxssl_cli.data.augment2d import unit_scales
    from ctxssl_cli.train.step import aux_target

    t = torch.rand(4, 9)
    assert torch.equal(aux_target(t, _spec(1), AUGMENT2D), t * unit_scales()[1])
    assert torch.equal(aux_target(t, _spec(1, ["model.action_units=raw"]), AUGMENT2D), t)


def test_standard_units_on_views3d_data_are_refused(views_data, tmp_path):
    spec = load_spec("rotation", TINY + ["train.max_steps=1", "data.resolution=16", "model.action_units=standard"])
    with pytest.raises(CtxsslError, match="action_units=standard is defined for 2D augmentation data"):
        pretrain(spec, views_data, tmp_path / "r", DistInfo())
    assert not (tmp_path / "r").exists()


def test_action_units_must_be_known():
    with pytest.raises(CtxsslError, match="model.action_units must be raw or standard"):
        load_spec("demo-2d", ["model.action_units=whitened"])


# ---- data.augment (the view pipeline's ranges in the run spec) ---------------------------------------------

def test_augment_settings_from_the_spec():
    from ctxssl_cli.data.augment2d import DEFAULT_SETTINGS, settings_from
    from ctxssl_cli.spec import to_yaml

    assert settings_from({}) is DEFAULT_SETTINGS and settings_from(None) is DEFAULT_SETTINGS
    spec = _spec(1, ["data.augment.crop_scale=[0.5, 1.0]", "data.augment.blur_p=0"])
    assert spec.data.augment == {"crop_scale": [0.5, 1.0], "blur_p": 0}
    st = settings_from(spec.data.augment)
    assert st.crop_scale == (0.5, 1.0) and st.blur_p == 0.0 and st.blur_sigma == DEFAULT_SETTINGS.blur_sigma
    # the whole mapping at once, and a preset's mapping merged key by key with --set
    assert load_spec("demo-2d", ["data.augment={hue: 0.2}"]).data.augment == {"hue": 0.2}
    # a stored run spec reads back the same settings
    from ctxssl_cli.spec import spec_from_yaml_text

    assert spec_from_yaml_text(to_yaml(spec)).data.augment == spec.data.augment


@pytest.mark.parametrize("item, match", [
    ("data.augment.crop_scal=[0.5, 1.0]", r"unknown augmentation setting 'data.augment.crop_scal' — did you mean 'crop_scale'"),
    ("data.augment.crop_scale=0.5", r"data.augment.crop_scale must be a \[min, max\] pair of numbers"),
    ("data.augment.crop_scale=[0.9, 0.2]", r"data.augment: bad augmentation setting: crop_scale"),
    ("data.augment.hue=0.7", r"data.augment: bad augmentation setting: hue"),
    ("data.augment.blur_p=yes", r"data.augment.blur_p must be a number"),
    ("data.augment=[0.2, 1.0]", r"spec key 'data.augment' must be a mapping"),
])
def test_bad_augment_settings_are_refused_when_the_spec_is_read(item, match):
    with pytest.raises(CtxsslError, match=match):
        load_spec("demo-2d", [item])


def test_augment_settings_drive_training_units_and_evaluation_views(images_data, tmp_path):
    """A run with data.augment trains on views of those ranges, scales its actions by their own standard units,
    and is evaluated on views drawn with the same settings (recorded in the views' description)."""
    from ctxssl_cli.data.augment2d import AugmentPairSampler, ViewParams, settings_from, unit_scales
    from ctxssl_cli.runs import load_run

    spec = _spec(2, ["data.augment.crop_scale=[0.9, 1.0]"])
    st = settings_from(spec.data.augment)
    px, py = AugmentPairSampler(images_data.split("train"), 16, seed=0, settings=st).params(0, 0)
    area = lambda p: p[:, ViewParams.CROP][:, 2] * p[:, ViewParams.CROP][:, 3]
    assert area(px).min() >= 0.9 - 1e-6 and area(py).min() >= 0.9 - 1e-6
    pretrain(spec, images_data, tmp_path / "run", DistInfo())
    run = load_run(tmp_path / "run", images_data.root, torch.device("cpu"))
    assert torch.equal(run.model.action_scale, unit_scales(st)[0])
    assert not torch.equal(unit_scales(st)[0], unit_scales()[0])  # the units are the pipeline's own
    val = run.split("val")
    lat = torch.from_numpy(val.latents.reshape(-1, ViewParams.DIM))
    assert area(lat).min() >= 0.9 - 1e-6 and val.describe()["settings"]["crop_scale"] == (0.9, 1.0)
    default = load_run(tmp_path / "run", images_data.root, torch.device("cpu"))
    default.spec.data.augment = {}
    assert area(torch.from_numpy(default.split("val").latents.reshape(-1, ViewParams.DIM))).min() < 0.9


def test_training_renders_views_with_the_runs_settings(images_data, tmp_path, monkeypatch):
    """pretrain hands the spec's settings to the pair sampler and to the view renderer, and the aux targets are
    scaled by those settings' units."""
    import ctxssl_cli.train.loop as loop
    import ctxssl_cli.train.step as step
    from ctxssl_cli.data.augment2d import settings_from, unit_scales

    seen = {"sampler": [], "views": []}
    sampler_cls, make_views = loop.AugmentPairSampler, step.make_views

    def sampler(*args, **kw):
        s = sampler_cls(*args, **kw)
        seen["sampler"].append(s.settings)
        return s

    def views(batch, size, settings):
        seen["views"].append(settings)
        return make_views(batch, size, settings)

    monkeypatch.setattr(loop, "AugmentPairSampler", sampler)
    monkeypatch.setattr(step, "make_views", views)
    spec = _spec(2, ["data.augment.blur_sigma=[0.1, 4.0]", "data.augment.crop_scale=[0.6, 1.0]"])
    st = settings_from(spec.data.augment)
    pretrain(spec, images_data, tmp_path / "run", DistInfo())
    assert seen["sampler"] == [st] and seen["views"] == [st, st]
    t = torch.rand(4, 9)
    assert torch.equal(step.aux_target(t, spec, AUGMENT2D), t * unit_scales(st)[1])


def test_augment_settings_edge_cases():
    from ctxssl_cli.data.augment2d import settings_from, unit_scales

    st = settings_from({"crop_scale": ["1e-1", 1.0], "blur_sigma": [1, "2e0"]})  # YAML 1.1 reads 1e-1 as text
    assert st.crop_scale == (0.1, 1.0) and st.blur_sigma == (1.0, 2.0)
    # a component the settings never vary keeps unit scale (no 1e6 from a zero standard deviation)
    a, t = unit_scales(settings_from({"crop_scale": [1.0, 1.0], "crop_ratio": [1.0, 1.0], "blur_p": 0}))
    assert torch.isfinite(a).all() and a.max() < 100 and t.max() < 100
    assert a[2] == 1.0 and t[2] == 1.0 and a[8] == 1.0  # height (always 1) and sigma (always 0)


def test_augment_in_presets_merges_field_by_field(tmp_path):
    (tmp_path / "parent.yaml").write_text("extends: demo-2d\ndata:\n  augment: {hue: 0.2}\n")
    (tmp_path / "child.yaml").write_text("extends: parent.yaml\ndata:\n  augment: {blur_p: 0.8}\n")
    (tmp_path / "clear.yaml").write_text("extends: parent.yaml\ndata:\n  augment: {}\n")
    assert load_spec(str(tmp_path / "child.yaml")).data.augment == {"hue": 0.2, "blur_p": 0.8}
    assert load_spec(str(tmp_path / "clear.yaml")).data.augment == {}
    assert load_spec(str(tmp_path / "child.yaml"), ["data.augment.hue=0.05"]).data.augment == {"hue": 0.05,
                                                                                               "blur_p": 0.8}
    with pytest.raises(CtxsslError, match=r"spec key 'data.augment' must be a mapping.*crop_scale"):
        load_spec("demo-2d", ["data.augment=5", "data.augment.hue=0.1"])


def test_resume_refuses_other_augment_settings(images_data, tmp_path):
    pretrain(_spec(2, ["train.max_steps=1"]), images_data, tmp_path / "run", DistInfo())
    with pytest.raises(CtxsslError, match="data.augment"):
        pretrain(_spec(2, ["data.augment.hue=0.2"]), images_data, tmp_path / "run", DistInfo(), resume=True)
    assert load_checkpoint(tmp_path / "run").step == 1


def test_compare_tells_runs_evaluated_on_other_views_apart():
    from ctxssl_cli.evaluate.compare import protocol_of

    def report(views):
        return {"meta": {"settings": {"probes": "paper"}, "data": {"virtual_views": views} if views else {}}}

    a, b = report({"settings": {"crop_scale": [0.2, 1.0]}}), report({"settings": {"crop_scale": [0.5, 1.0]}})
    assert protocol_of(a) != protocol_of(b) and protocol_of(a) == protocol_of(report({"settings": {"crop_scale": [0.2, 1.0]}}))
    assert "views" not in protocol_of(report(None))  # 3D reports: as before


def test_augment_settings_on_views3d_data_are_refused(views_data, tmp_path):
    spec = load_spec("rotation", TINY + ["train.max_steps=1", "data.resolution=16", "data.augment.hue=0.2"])
    with pytest.raises(CtxsslError, match="data.augment sets the 2D view pipeline.*has stored views"):
        pretrain(spec, views_data, tmp_path / "r", DistInfo())
    assert not (tmp_path / "r").exists()
