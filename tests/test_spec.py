"""Run specs: presets, extends, overrides, unknown keys, wrong types."""

import pytest

from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.spec import PRESETS_DIR, load_spec, preset_names, spec_from_yaml_text, to_yaml

EXPECTED_PRESETS = {"rotcolor", "rotation", "color", "demo",
                    # the baselines (SPEC §7): the published 3DIEBench runs and their CPU demos
                    "simclr", "vicreg", "equimod", "sie", "sen",
                    "demo/simclr", "demo/vicreg", "demo/equimod", "demo/sie", "demo/sen",
                    # 2D augmentation environments (SPEC §3.4): CIFAR-10 settings and the CPU demo
                    "cifar10-crop-blur", "cifar10-color-blur", "cifar10-crop-color", "demo-2d"}


def test_every_preset_loads_and_the_count_is_known():
    files = sorted(PRESETS_DIR.rglob("*.yaml"))  # subfolders too
    names = preset_names()
    assert len(files) == len(names) == len(EXPECTED_PRESETS)
    assert set(names) == EXPECTED_PRESETS
    for name in names:
        spec = load_spec(name)
        assert abs(sum(spec.train.envs.values()) - 1) < 1e-9
        first = (PRESETS_DIR / f"{name}.yaml").read_text().splitlines()[0]
        assert first.startswith(f"# ctxssl pretrain --preset {name}"), f"{name}.yaml must start with its command"


def test_extends_merges_and_replaces_envs_whole():
    rot = load_spec("rotation")
    assert rot.train.envs == {"rotation": 0.5, "invariant": 0.5}
    assert rot.model.n_embd == 2048 and rot.train.lr == 5e-5 and rot.name == "rotation"
    demo = load_spec("demo")
    assert demo.model.encoder == "convnet" and demo.train.mask_prob == 0.9


def test_paper_defaults_in_rotcolor():
    s = load_spec("rotcolor")
    assert (s.model.n_layer, s.model.n_head, s.model.n_embd, s.model.block_size) == (3, 4, 2048, 128)
    assert (s.train.batch_size, s.train.epochs, s.train.warmup_epochs) == (512, 1000, 10)
    assert (s.train.mask_prob, s.train.aux_weight, s.train.temperature, s.train.weight_decay) == (0.9, 5.0, 0.1, 1e-3)


def test_overrides_types_and_floats():
    s = load_spec("rotation", ["train.lr=1e-4", "train.epochs=3", "model.encoder=convnet", "train.envs.rotation=0.3",
                               "train.envs.invariant=0.7", "train.warmup_epochs=1"])
    assert s.train.lr == 1e-4 and s.train.epochs == 3 and s.model.encoder == "convnet"
    assert s.train.envs == {"rotation": 0.3, "invariant": 0.7}
    assert isinstance(s.train.warmup_epochs, float)


@pytest.mark.parametrize("override, words", [
    ("train.epohcs=3", "train.epochs"),
    ("modle.n_layer=2", "model"),
    ("train.epochs=three", "integer"),
    ("train.lr=fast", "number"),
    ("train.mask_prob=1.5", "mask_prob"),
    ("train.envs={rotation: 0.4}", "sum"),
    ("train.envs={rotaton: 1.0}", "rotation"),
    ("model.n_embd=102", "divisible"),
    ("train.batch_size=100", "multiple"),
    ("train.epochs", "key=value"),
    ("model.aux_norm=l1", "aux_norm"),
])
def test_bad_overrides_name_the_problem(override, words):
    with pytest.raises(CtxsslError) as e:
        load_spec("rotation", [override])
    assert words in e.value.message


def test_unknown_preset_suggests():
    with pytest.raises(CtxsslError) as e:
        load_spec("rotaton")
    assert "rotation" in e.value.message


def test_yaml_round_trip_keeps_everything():
    s = load_spec("demo", ["train.seed=7"])
    back = spec_from_yaml_text(to_yaml(s, meta={"git_sha": "abc"}))
    assert back == s


def test_spec_file_with_extends(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("extends: demo\ntrain:\n  epochs: 2\n")
    s = load_spec(str(f))
    assert s.train.epochs == 2 and s.model.encoder == "convnet" and s.name == "demo"
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: demo\ntrain:\n  epocs: 2\n")
    with pytest.raises(CtxsslError, match="train.epochs"):
        load_spec(str(bad))


def test_a_stored_run_spec_from_before_the_mask_and_clamp_keys_resumes_as_it_trained(tmp_path):
    """Runs stored by ctxssl <= 0.2 lack train.mask_draw / train.nce_clamp; they drew one mask per sequence and
    did not clamp, so reading their spec must give that, not today's defaults (a resume would change method)."""
    import yaml

    from ctxssl_cli.spec import load_spec, spec_from_yaml_text, to_yaml

    stored = yaml.safe_load(to_yaml(load_spec("demo"), meta={"ctxssl_version": "0.2.0"}))
    for key in ("mask_draw", "nce_clamp"):
        del stored["train"][key]
    text = yaml.safe_dump(stored)
    (tmp_path / "spec.yaml").write_text(text)
    for spec in (spec_from_yaml_text(text), load_spec(str(tmp_path / "spec.yaml"))):
        assert spec.train.mask_draw == "per_sequence" and spec.train.nce_clamp is False
    # a spec stored today keeps its own values, and a preset without meta gets today's defaults
    today = spec_from_yaml_text(to_yaml(load_spec("demo"), meta={"ctxssl_version": "0.3.0"}))
    assert today.train.mask_draw == "per_layer" and today.train.nce_clamp is True
    assert load_spec("demo").train.mask_draw == "per_layer"
