"""Run specs: every number is range-checked (NaN, infinity, negative and absurd sizes are errors naming the key
and its range), a run's own spec.yaml loads as --preset FILE, and the resumable optimisation keys."""

import math

import pytest

from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.spec import (FLOAT_RANGES, INT_RANGES, OPTIMISATION_KEYS, RunSpec, TrainSpec, _all_keys, load_spec,
                             stored_meta, to_yaml)


@pytest.mark.parametrize("override, words", [
    ("model.n_embd=1000000000", ["model.n_embd", "[1, 65,536]"]),
    ("model.block_size=10000000", ["model.block_size", "[2, 65,536]"]),
    ("train.batch_size=1000000000", ["train.batch_size", "[1, 1,048,576]"]),
    ("model.aux_hidden=1000000000", ["model.aux_hidden", "[1, 65,536]"]),
    ("model.n_layer=100000", ["model.n_layer", "[1, 256]"]),
    ("model.n_head=100000", ["model.n_head", "[1, 1,024]"]),
    ("model.n_embd=1" + "0" * 400, ["model.n_embd", "65,536"]),  # an int too big for a float
    ("model.n_embd=-4", ["model.n_embd", "[1, 65,536]"]),
    ("data.resolution=100000", ["data.resolution", "[0, 8,192]"]),
    ("data.workers=10000", ["data.workers", "[0, 256]"]),
    ("train.epochs=10000000", ["train.epochs", "[0, 1,000,000]"]),
    ("train.max_steps=10000000000", ["train.max_steps", "1,000,000,000"]),
    ("train.seed=-1", ["train.seed", "[0, "]),
    ("train.checkpoint_every=0", ["train.checkpoint_every", "[1, "]),
    ("model.dropout=1.0", ["model.dropout", "[0, 1)"]),
    ("model.dropout=-0.1", ["model.dropout", "[0, 1)"]),
    ("train.lr=2.0", ["train.lr", "(0, 1]"]),
    ("train.lr=0", ["train.lr", "(0, 1]"]),
    ("train.temperature=1000", ["train.temperature", "(0, 100]"]),
    ("train.weight_decay=-1", ["train.weight_decay", "[0, 10]"]),
    ("train.aux_weight=1e9", ["train.aux_weight", "[0, 1000]"]),
    ("train.warmup_epochs=1e9", ["train.warmup_epochs", "[0, 1e+06]"]),
    ("train.grad_clip=-1", ["train.grad_clip", "[0, 1e+06]"]),
])
def test_out_of_range_numbers_name_the_key_and_the_range(override, words):
    with pytest.raises(CtxsslError) as e:
        load_spec("demo", [override])
    for w in words:
        assert w in e.value.message, (w, e.value.message)


NON_FINITE = [".nan", ".inf", "-.inf", "nan", "inf", "-inf", "Infinity"]
FLOAT_KEYS = ["train.lr", "train.temperature", "train.weight_decay", "train.mask_prob", "train.aux_weight",
              "train.warmup_epochs", "train.grad_clip", "model.dropout"]


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("text", NON_FINITE)
def test_nan_and_inf_are_refused_for_every_float(key, text):
    with pytest.raises(CtxsslError) as e:
        load_spec("demo", [f"{key}={text}"])
    assert key in e.value.message and "finite" in e.value.message


@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_nan_in_a_spec_built_in_python_is_refused(key):
    sec, name = key.split(".")
    spec = load_spec("demo").to_dict()
    spec[sec][name] = math.nan
    from ctxssl_cli.spec import from_dict

    with pytest.raises(CtxsslError, match=key.replace(".", r"\.")):
        from_dict(spec)
    with pytest.raises(CtxsslError, match="train.lr"):
        RunSpec(train=TrainSpec(lr=math.inf))


@pytest.mark.parametrize("override", ["train.envs={rotation: .nan, color: 1.0}",
                                      "train.envs={rotation: .inf, color: 0.5}",
                                      "train.envs={rotation: 2.0, color: -1.0}"])
def test_environment_probabilities_must_be_finite_and_in_0_1(override):
    with pytest.raises(CtxsslError) as e:
        load_spec("demo", [override])
    assert "train.envs.rotation" in e.value.message or "train.envs.color" in e.value.message
    assert "[0, 1]" in e.value.message


def test_every_numeric_field_has_a_range_and_the_presets_are_inside():
    numeric = {k for k in _all_keys() if k != "name"
               and isinstance(getattr(getattr(RunSpec(), k.split(".")[0]), k.split(".")[1]), (int, float))
               and not isinstance(getattr(getattr(RunSpec(), k.split(".")[0]), k.split(".")[1]), bool)}
    assert numeric == set(INT_RANGES) | set(FLOAT_RANGES)
    for name in ("rotcolor", "rotation", "color", "demo"):
        load_spec(name)  # the shipped presets are valid


def test_a_runs_own_spec_yaml_loads_as_a_preset_file(tmp_path):
    spec = load_spec("demo", ["train.seed=7", "name=mine"])
    meta = {"git_sha": "abc", "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2], "data_manifest_sha256": "ab" * 32,
            "changes": [{"step": 3, "key": "train.lr"}]}
    f = tmp_path / "spec.yaml"
    f.write_text(to_yaml(spec, meta=meta))
    assert load_spec(str(f)) == spec
    assert load_spec(str(f), ["train.epochs=5"]).train.epochs == 5
    assert stored_meta(f.read_text()) == meta  # the facts are still there for whoever reads them
    with pytest.raises(CtxsslError, match="unknown spec key 'meta.git_sha'"):
        load_spec(str(f), ["meta.git_sha=x"])  # they are not settings


def test_optimisation_keys_are_spec_keys():
    assert OPTIMISATION_KEYS == {"train.lr", "train.grad_clip", "train.max_steps"}
    assert OPTIMISATION_KEYS <= set(_all_keys())
