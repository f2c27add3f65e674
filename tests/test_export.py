"""`ctxssl export` (export.py): torchvision-loadable encoders, an export that loads to the same model, the card."""

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

import ctxssl_cli as ctxssl
from ctxssl_cli import export as ex
from ctxssl_cli.cli.app import app
from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.spec import load_spec
from test_api import TINY, data, make_run, python_block, run_dir  # noqa: F401  (fixtures: the tiny dataset and run)

FILES = {"encoder.safetensors", "model.safetensors", "config.yaml", "README.md"}


def _images(n=5, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_export_loads_to_the_same_model(run_dir, tmp_path):
    out = tmp_path / "exp"
    result = ex.export_run(run_dir, out)
    assert {p.name for p in out.iterdir()} == FILES and result.replaced is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert keys and not any(k.startswith(("optim.", "rng.", "model.")) for k in keys)  # no optimiser or RNG state
    assert {k.split(".")[0] for k in keys} == {"encoder", "transformer", "aux_predictor"}
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["format"] == "ctxssl-export" and cfg["action_dim"] == 6 and cfg["resolution"] == 16
    assert cfg["context_modes"] == ["rotation", "color", "none"] and cfg["classes"] and cfg["block_size"] == 32

    a, b = ctxssl.load(run_dir, device="cpu"), ctxssl.load(out, device="cpu")
    assert b.info == a.info and "step 3" in repr(b)
    x, y, imgs = _images(4, seed=1), _images(4, seed=2), _images(6, size=20)
    acts = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.features(imgs), b.features(imgs))
    for mode in a.modes:
        assert torch.equal(a.embed(imgs, context=a.context(x, acts, y), mode=mode),
                           b.embed(imgs, context=b.context(x, acts, y), mode=mode)), mode
    assert torch.equal(ctxssl.load(out / "model.safetensors").features(imgs), b.features(imgs))

    card = (out / "README.md").read_text()
    for words in ("ContextSSL", cfg["source"]["data_manifest_sha256"], "steps: 3 of 4", "Not evaluated yet",
                  "ConvNet", "rotation, color, none"):
        assert words in card, words
    ns: dict = {}
    exec(python_block(card, "## Use the model with ctxssl"), ns)  # the card's API snippet runs as printed
    assert ns["z"].shape == (8, b.feature_dim)


@pytest.mark.parametrize("encoder", ["resnet18", "resnet18_small", "convnet"])
def test_the_encoder_loads_without_ctxssl(encoder, tmp_path):
    run = make_run(tmp_path / "run", load_spec("rotcolor", [*TINY, f"model.encoder={encoder}"]), resolution=24)
    out = tmp_path / "exp"
    ex.export_run(run, out)
    weights = load_file(str(out / "encoder.safetensors"))
    if encoder == "resnet18":  # the acceptance command
        import torchvision

        m = torchvision.models.resnet18()
        m.fc = torch.nn.Identity()
        result = m.load_state_dict(weights, strict=True)
        assert not result.missing_keys and not result.unexpected_keys
    ns: dict = {}
    card = (out / "README.md").read_text()
    exec(python_block(card, "## Use the encoder without ctxssl"), ns)  # builds `encoder`, loads it strictly
    model = ctxssl.load(out, device="cpu")
    assert ns["h"].shape == (8, model.feature_dim)
    assert torch.allclose(ns["h"], model.features(ns["images"]), atol=1e-4)  # the card's normalisation is the API's


def test_a_baseline_exports_its_encoder_only(tmp_path):
    run = make_run(tmp_path / "simclr", load_spec("demo/simclr", ["simclr.mlp=64-64-64", "data.workers=0"]))
    out = tmp_path / "exp"
    result = ex.export_run(run, out)
    assert {p.name for p in out.iterdir()} == FILES - {"model.safetensors"}
    assert result.notes and "baseline" in result.notes[0]
    a, b = ctxssl.load(run, device="cpu"), ctxssl.load(out, device="cpu")
    imgs = _images()
    assert torch.equal(a.features(imgs), b.features(imgs)) and b.modes == () and "features only" in repr(b)
    for m in (a, b):
        with pytest.raises(CtxsslError, match="no context transformer"):
            m.embed(imgs)
        with pytest.raises(CtxsslError, match="no context transformer"):
            m.context(imgs, torch.zeros(5, 6), imgs)
    assert "SimCLR" in (out / "README.md").read_text()


def test_the_card_reports_the_evaluation(run_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("spec.yaml", "checkpoint.safetensors"):
        (run / name).write_bytes((run_dir / name).read_bytes())
    (run / "eval").mkdir()
    report = {"r2": {"features": {"rotation": 0.5, "color": 0.1},
                     "rotation": {"0": {"rotation": 0.61, "color": 0.2}, "14": {"rotation": 0.744, "color": 0.023}},
                     "color": {"14": {"rotation": 0.344, "color": 0.986}}},
              "top1": {"features": 0.853, "rotation": {"14": 0.804}},
              "mrr": {"rotation": {"14": {"mrr": 0.402, "h@1": 0.292, "h@5": 0.568}}},
              "meta": {"schema": {"name": "views3d", "factors": [{"name": "rotation", "size": 4},
                                                                  {"name": "color", "size": 2}]},
                       "checkpoint": {"sha256": "f" * 64, "step": 1}, "settings": {"r2": "paper"}}}
    (run / "eval" / "report.json").write_text(json.dumps(report))
    ex.export_run(run, tmp_path / "exp")
    card = (tmp_path / "exp" / "README.md").read_text()
    for words in ("| h (encoder features) | 0.500 | 0.100 | 85.3 |",
                  "| z, rotation context, c = 14 | 0.744 | 0.023 | 80.4 | 0.402 | 0.292 | 0.568 |",
                  "| z, color context, c = 14 | 0.344 | 0.986 |", "earlier checkpoint"):
        assert words in card, words


def test_the_folder_is_replaced_only_when_safe(run_dir, tmp_path, monkeypatch):
    out = tmp_path / "exp"
    ex.export_run(run_dir, out)
    assert ex.export_run(run_dir, out).replaced == "an earlier export"  # an export is replaced as is
    before = (out / "model.safetensors").read_bytes()
    monkeypatch.setattr(ex, "model_card", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):  # interrupted mid-write: the earlier export stays whole
        ex.export_run(run_dir, out)
    monkeypatch.undo()
    assert (out / "model.safetensors").read_bytes() == before and {p.name for p in out.iterdir()} == FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(CtxsslError, match="not empty and is not an earlier ctxssl export"):
        ex.export_run(run_dir, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert ex.export_run(run_dir, foreign, overwrite=True).replaced.startswith("the folder's contents")
    assert {p.name for p in foreign.iterdir()} == FILES
    (tmp_path / "file").write_text("x")
    for target, words in [(run_dir, "contains the run"), (run_dir.parent, "contains the run"),
                          (tmp_path / "file", "is a file")]:
        with pytest.raises(CtxsslError, match=words):
            ex.export_run(run_dir, target, overwrite=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CtxsslError, match="current folder"):
        ex.export_run(run_dir, tmp_path, overwrite=True)
    (tmp_path / "untrained").mkdir()
    (tmp_path / "untrained" / "spec.yaml").write_text((run_dir / "spec.yaml").read_text())
    with pytest.raises(CtxsslError, match="no checkpoint.safetensors"):
        ex.export_run(tmp_path / "untrained", tmp_path / "x")
    with pytest.raises(CtxsslError, match="already an export"):
        ex.export_run(out, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_tampered_export_is_refused(run_dir, tmp_path):
    out = tmp_path / "exp"
    ex.export_run(run_dir, out)
    cfg = out / "config.yaml"
    good = cfg.read_text()
    cfg.write_text(good.replace("resolution: 16", "resolution: 32"))
    with pytest.raises(CtxsslError, match="does not match the config sealed"):
        ctxssl.load(out)
    cfg.write_text(good)
    weights = out / "model.safetensors"
    raw = weights.read_bytes()
    flipped = bytearray(raw)
    flipped[-7] ^= 0xFF
    weights.write_bytes(bytes(flipped))
    with pytest.raises(CtxsslError, match="integrity"):
        ctxssl.load(out)
    weights.write_bytes(pickle.dumps({"encoder.conv": [1.0]}))
    with pytest.raises(CtxsslError, match="not a readable safetensors"):
        ctxssl.load(out)
    weights.write_bytes(raw)
    assert ctxssl.load(out).features(_images(2)).shape == (2, 256)


def test_the_command(run_dir, tmp_path):
    r = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "exp")])
    assert r.exit_code == 0, r.output
    assert "export: " in r.output and "encoder.safetensors" in r.output and "ctxssl.load(" in r.output
    e = {**os.environ, "CTXSSL_RUNS": str(tmp_path / "runs")}
    e.pop("CTXSSL_DEBUG", None)
    r = subprocess.run([sys.executable, "-m", "ctxssl_cli", "export", str(tmp_path / "nope"), "--out",
                        str(tmp_path / "x")], capture_output=True, text=True, env=e, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith("Error: ") and "does not exist" in lines[0]
