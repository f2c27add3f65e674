"""The Python API (api.py): the numbers of `ctxssl embed`, no dataset needed, one-line errors on bad input."""

import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ctxssl_cli as ctxssl
from ctxssl_cli import embed
from ctxssl_cli.data.pairs import to_model_input
from ctxssl_cli.data.schema import VIEWS3D
from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.spec import load_spec

README = Path(__file__).resolve().parents[1] / "README.md"
README_RUN = "runs/demo-20261204-101010"  # the run the README's Python API example names
TINY = ["model.block_size=32", "model.n_embd=32", "model.n_layer=1", "model.n_head=2", "model.encoder=convnet",
        "model.aux_hidden=32", "data.workers=0", "train.batch_size=16"]


def make_run(run_dir: Path, spec, data=None, resolution: int = 16, seed: int = 0) -> Path:
    """A run folder as the trainer writes it (spec.yaml; checkpoint with optimiser and RNG state, train/loop.py
    save()), without training: freshly built weights, BatchNorm statistics moved off their init by one
    train-mode batch (so that eval mode matters), one Adam step (so that there is optimiser state to leave out)."""
    from ctxssl_cli.checkpoint import CHECKPOINT_NAME, save_checkpoint
    from ctxssl_cli.model.build import build_model
    from ctxssl_cli.spec import to_yaml

    meta = {"data_path": str(data.root.resolve()) if data else "/nonexistent/dataset",
            "data_manifest_sha256": data.manifest_sha256 if data else "0" * 64, "resolution": resolution,
            "n_classes": len(data.classes) if data else 3, "action_dim": VIEWS3D.dim,
            "action_schema": VIEWS3D.to_manifest(), "mean": [float(v) for v in data.mean] if data else [0.4, 0.5, 0.6],
            "std": [float(v) for v in data.std] if data else [0.2, 0.25, 0.3], "git_sha": "test"}
    torch.manual_seed(seed)
    model = build_model(spec, action_dim=VIEWS3D.dim, schema=VIEWS3D)
    model.train()
    with torch.no_grad():
        model.encode(torch.randn(8, 3, resolution, resolution) * 2 + 0.5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    run_dir.mkdir(parents=True)
    spec_yaml = to_yaml(spec, meta)
    (run_dir / "spec.yaml").write_text(spec_yaml)
    save_checkpoint(run_dir / CHECKPOINT_NAME, model, opt, spec_yaml,
                    {"step": 3, "epoch": 1, "steps_per_epoch": 2, "total_steps": 4})
    return run_dir


def python_block(markdown: str, heading: str) -> str:
    """The first ```python block after `heading` in a Markdown text."""
    after = markdown[markdown.index(heading):]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from ctxssl_cli.data.prepared import PreparedDataset
    from ctxssl_cli.data.synthetic import prepare_synthetic

    root = tmp_path_factory.mktemp("api") / "s"
    prepare_synthetic(root, classes=3, objects_per_class=6, views=5, resolution=16, seed=0, workers=1, progress=False)
    return PreparedDataset(root)


@pytest.fixture(scope="module")
def run_dir(data, tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("api-run") / "run", load_spec("rotcolor", TINY), data)


@pytest.fixture(scope="module")
def model(run_dir):
    return ctxssl.load(run_dir, device="cpu")


def test_embed_equals_what_ctxssl_embed_writes(run_dir, model):
    from ctxssl_cli.data.actions import relative_action_for
    from ctxssl_cli.runs import load_run

    run = load_run(run_dir, None, torch.device("cpu"))
    context = embed.default_context(run)
    modes, lengths = ["rotation", "color", "none"], [0, 6, 30]
    written = embed.embed_split(run, "val", modes, lengths, context, retrieval=True)
    train, val = run.split("train"), run.split("val")
    n, v = val.n_objects, val.n_views
    images = val.images(np.repeat(np.arange(n), v), np.tile(np.arange(v), n))  # obj-major, as embed_split
    k = max(lengths) // 2  # the pairs of the default context that the longest length uses
    ctx = model.context(train.images(context.obj[:k], context.view_a[:k]), context.action[:k],
                        train.images(context.obj[:k], context.view_b[:k]))
    assert len(ctx) == 30 and ctx.n_pairs == 15
    assert torch.allclose(model.features(images), written["h"].reshape(n * v, -1), atol=1e-6, rtol=0)
    lat = val.latents
    q_action = torch.as_tensor(relative_action_for(VIEWS3D, np.repeat(lat[:, :1], v, axis=1), lat,
                                                   canonical=run.spec.data.canonical_quat).reshape(n * v, -1))
    view0 = val.images(np.repeat(np.arange(n), v), np.zeros(n * v, np.int64))
    for mode in modes:
        for c in lengths:
            z = model.embed(images, context=ctx.prefix(c), mode=mode)
            assert torch.allclose(z, written[f"z.{mode}.{c}"].reshape(n * v, -1), atol=1e-6, rtol=0), (mode, c)
            q = model.embed(view0, context=ctx.prefix(c), mode=mode, actions=q_action)
            assert torch.allclose(q, written[f"q.{mode}.{c}"].reshape(n * v, -1), atol=1e-6, rtol=0), (mode, c)
    assert torch.allclose(model.embed(images), written["z.none.0"].reshape(n * v, -1), atol=1e-6, rtol=0)
    assert torch.allclose(z.norm(dim=1), torch.ones(len(z)))
    # a context of fewer pairs is the prefix of a longer one
    short = model.context(train.images(context.obj[:3], context.view_a[:3]), context.action[:3],
                          train.images(context.obj[:3], context.view_b[:3]))
    assert torch.allclose(model.embed(images, context=short, mode="color"), written["z.color.6"].reshape(n * v, -1),
                          atol=1e-6, rtol=0)


def test_features_are_the_encoders_whatever_the_input_form(data, model):
    imgs = data.split("val").images(np.arange(6) % 3, np.arange(6) // 3)  # uint8 (6, 3, 16, 16)
    with torch.no_grad():
        expected = model.net.encode(to_model_input(imgs, data.mean, data.std, 16))
    h = model.features(imgs)
    assert h.shape == (6, model.feature_dim) and h.dtype == torch.float32
    assert torch.equal(h, expected)
    assert torch.allclose(model.features(imgs.float() / 255), h, atol=1e-5)  # float 0-1
    assert torch.equal(model.features(imgs.numpy()), h)  # numpy
    assert torch.allclose(model.features(imgs, batch_size=4), h, atol=1e-6)  # batched internally
    big = torch.nn.functional.interpolate(imgs.float() / 255, size=(24, 20), mode="bilinear")  # any size: resized
    assert model.features(big).shape == (6, model.feature_dim)
    assert model.features(imgs[:0]).shape == (0, model.feature_dim)


def test_load_needs_no_dataset_and_reads_what_the_run_recorded(tmp_path, model, data):
    assert model.classes == tuple(data.classes) and model.resolution == 16
    assert model.modes == ("rotation", "color", "none")
    assert model.block_size == 32 and model.action_dim == 6 and "ContextSSL" in repr(model)
    lone = ctxssl.load(make_run(tmp_path / "lone", load_spec("rotcolor", TINY)), device="cpu")  # no dataset anywhere
    assert lone.classes is None and lone.info.n_classes == 3 and lone.info.mean == (0.4, 0.5, 0.6)
    z = lone.embed(torch.rand(4, 3, 16, 16))
    assert z.shape == (4, lone.feature_dim)
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(ctxssl.load(tmp_path / "lone" / "checkpoint.safetensors").features(x), lone.features(x))


def test_importing_the_package_stays_cheap():
    r = subprocess.run([sys.executable, "-c", "import sys, ctxssl_cli; print('torch' in sys.modules)"],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr
    assert ctxssl.load is ctxssl.api.load and ctxssl.Model is ctxssl.api.Model and "load" in dir(ctxssl)
    with pytest.raises(AttributeError):
        ctxssl.nothing_here  # noqa: B018


def test_the_readme_example_runs_as_written(run_dir):
    code = python_block(README.read_text(), "## Python API")
    assert README_RUN in code
    ns: dict = {}
    exec(compile(code.replace(README_RUN, str(run_dir)), "README.md", "exec"), ns)
    model = ns["model"]
    assert ns["z_rot"].shape == ns["h"].shape == (32, model.feature_dim)
    assert not torch.allclose(ns["z_rot"], ns["z_col"])  # the context's mode changes the embedding


def _bad_inputs(model, other):
    img = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    a = torch.zeros(2, 6)
    ctx = model.context(img, a, img)
    return [
        (lambda: model.features(torch.zeros(3, 16, 16)), "batch dimension"),
        (lambda: model.features(torch.zeros(2, 16, 16)), "not (N, 3, H, W)"),
        (lambda: model.features(torch.zeros(2, 1, 16, 16)), "1 channel "),
        (lambda: model.features(torch.zeros(2, 4, 16, 16)), "4 channels"),
        (lambda: model.features(torch.zeros(2, 16, 16, 3)), "channels last"),
        (lambda: model.features(torch.zeros(2, 3, 16, 16, dtype=torch.int64)), "dtype"),
        (lambda: model.features(torch.full((2, 3, 16, 16), 255.0)), "outside [0, 1]"),
        (lambda: model.features(torch.full((2, 3, 16, 16), float("nan"))), "nan"),
        (lambda: model.features([1, 2, 3]), "must be a tensor"),
        (lambda: model.features(img, batch_size=0), "batch_size"),
        (lambda: model.context(img, torch.zeros(2, 5), img), "width 5"),
        (lambda: model.context(img, torch.zeros(2, 4, 6), img), "shape (2, 4, 6)"),
        (lambda: model.context(img, torch.zeros(3, 6), img), "3 rows"),
        (lambda: model.context(img, torch.full((2, 6), float("inf")), img), "nan or inf"),
        (lambda: model.context(torch.zeros(3, 3, 16, 16), torch.zeros(3, 6), img), "odd number"),
        (lambda: model.context(torch.zeros(4, 3, 16, 16), torch.zeros(4, 6), img), "do not match"),
        (lambda: model.context(torch.zeros(16, 3, 8, 8), torch.zeros(16, 6), torch.zeros(16, 3, 8, 8)), "block size"),
        (lambda: model.embed(img, context=ctx), "needs a context mode"),
        (lambda: model.embed(img, context=ctx, mode="pose"), "unknown context mode"),
        (lambda: model.embed(img, context=other.context(img, a, img), mode="color"), "another model"),
        (lambda: model.embed(img, context="rotation"), "not a context of this model"),
        (lambda: model.embed(img, mode="rotation", actions=torch.zeros(2, 3)), "width 3"),
        (lambda: ctx.prefix(3), "even number"),
        (lambda: ctx.prefix(6), "between 0 and 4"),
        (lambda: ctxssl.load("/nonexistent/run"), "does not exist"),
        (lambda: ctxssl.load(".", device="tpu"), "unknown device"),
    ]


def test_bad_input_is_a_one_line_error(model, run_dir):
    other = ctxssl.load(run_dir, device="cpu")
    for call, words in _bad_inputs(model, other):
        with pytest.raises(CtxsslError) as e:
            call()
        assert words in e.value.message and "\n" not in e.value.message, (words, e.value.message)


def test_tampered_and_pickled_files_are_refused_unread(run_dir, tmp_path):
    raw = bytearray((run_dir / "checkpoint.safetensors").read_bytes())
    raw[-5] ^= 0xFF
    (tmp_path / "tampered").mkdir()
    (tmp_path / "tampered" / "checkpoint.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CtxsslError, match="integrity"):
        ctxssl.load(tmp_path / "tampered")
    sentinel = tmp_path / "unpickled"

    class Evil:  # unpickling this creates `sentinel`
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    blob = pickle.dumps({"state_dict": Evil()})
    for name, words in [("model.pt", "never loads"), ("weights.pth", "never loads"),
                        ("pickled/checkpoint.safetensors", "not a readable safetensors")]:
        f = tmp_path / name
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(blob)
        for target in (f, f.parent) if f.parent != tmp_path else (f,):
            with pytest.raises(CtxsslError, match=words):
                ctxssl.load(target)
    assert not sentinel.exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(CtxsslError, match="neither a run folder"):
        ctxssl.load(tmp_path / "empty")
    (tmp_path / "untrained").mkdir()
    (tmp_path / "untrained" / "spec.yaml").write_text((run_dir / "spec.yaml").read_text())
    with pytest.raises(CtxsslError, match="no checkpoint.safetensors"):
        ctxssl.load(tmp_path / "untrained")
