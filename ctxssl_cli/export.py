"""`ctxssl export`: a run -> a plain encoder for torchvision, the Python API's model, and a model card.

    DIR/encoder.safetensors  the encoder's state dict under the plain model's key names: resnet18 loads into
                             torchvision.models.resnet18() with fc = Identity (strict=True); resnet18_small into the
                             same with its 3x3 stride-1 conv1 and no max-pool; convnet into the few lines of plain
                             torch the card prints (no torchvision equivalent). No ctxssl needed to use it.
    DIR/model.safetensors    ContextSSL runs only: the model's state dict (encoder.*, transformer.*, aux_predictor.*);
                             no optimiser or RNG state. A baseline's heads are training-only, so a baseline export
                             holds its encoder alone (and `ctxssl.load` of it gives features only).
    DIR/config.yaml          what `ctxssl.load` needs beside the weights (api.ModelInfo.to_config): method, encoder,
                             action schema and width, context modes, block size, resolution, mean/std, classes,
                             source checkpoint and data hashes, and the resolved spec. Its sha256 is sealed into the
                             weights' metadata, so an edited config is refused.
    DIR/README.md            the model card: method, spec summary, data manifest sha256, training steps, the
                             evaluation report's headline numbers (when RUN/eval/report.json exists), usage.

Every safetensors file carries content_sha256 (checkpoint.sealed) over its metadata and tensors. DIR is written
into a temp folder beside it and renamed at the end; a DIR that holds anything but an earlier export is refused
unless `overwrite`, and a DIR that holds the run or the current folder always is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from safetensors.torch import save_file

from ctxssl_cli import __version__
from ctxssl_cli.api import (CARD_NAME, CONFIG_NAME, CONFIG_SHA_KEY, ENCODER_FORMAT, ENCODER_NAME, EXPORT_FILES,
                            EXPORT_FORMAT, MODEL_FORMAT, MODEL_NAME, Model, load_run_model, refuse_pickle)
from ctxssl_cli.checkpoint import sealed
from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.fileio import fsync_path
from ctxssl_cli.model.encoder import ConvNet
from ctxssl_cli.spec import METHOD_TITLES

REPORT = Path("eval") / "report.json"  # where `ctxssl evaluate` writes a run's report by default

# How to build each encoder without ctxssl: (one line for people, the Python lines that make `encoder`).
RECIPES: dict[str, tuple[str, list[str]]] = {
    "resnet18": ("torchvision.models.resnet18() with fc = Identity", [
        "encoder = torchvision.models.resnet18()",
        "encoder.fc = torch.nn.Identity()  # the classifier removed: forward returns the 512-d pooled feature"]),
    "resnet18_small": ("torchvision.models.resnet18() with a 3x3 stride-1 conv1, no max-pool and fc = Identity", [
        "encoder = torchvision.models.resnet18()",
        "encoder.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)  # CIFAR-style stem",
        "encoder.maxpool = torch.nn.Identity()  # no max-pool: small images keep their resolution",
        "encoder.fc = torch.nn.Identity()  # the classifier removed: forward returns the 512-d pooled feature"]),
    "convnet": ("no torchvision equivalent: ctxssl's small CNN (ctxssl_cli.model.encoder.ConvNet), in plain torch", [
        "class ConvNet(torch.nn.Module):  # ctxssl_cli.model.encoder.ConvNet: 5 conv3x3-BN-ReLU stages, avg pool",
        "    def __init__(self):",
        "        super().__init__()",
        "        layers, c_in = [], 3",
        f"        for c_out, stride in zip({ConvNet.widths}, {ConvNet.strides}):",
        "            layers += [torch.nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), torch.nn.BatchNorm2d(c_out),",
        "                       torch.nn.ReLU(inplace=True)]",
        "            c_in = c_out",
        "        self.features = torch.nn.Sequential(*layers)",
        "        self.pool = torch.nn.AdaptiveAvgPool2d(1)",
        "",
        "    def forward(self, x):",
        "        return torch.flatten(self.pool(self.features(x)), 1)",
        "",
        "",
        "encoder = ConvNet()"]),
}


@dataclass
class ExportResult:
    out: Path
    files: list[tuple[str, int, str]]  # (name, bytes, what it holds)
    model: Model = field(repr=False)
    recipe: str  # how the encoder is built without ctxssl (RECIPES)
    replaced: str | None  # "an earlier export" / "the folder's contents" when DIR existed with files
    notes: list[str] = field(default_factory=list)


def export_run(run: Path, out: Path, overwrite: bool = False) -> ExportResult:
    """Export run (a run folder or its checkpoint file) into the folder `out` (see the module docstring)."""
    run = Path(run)
    refuse_pickle(run)
    if run.is_dir() and (run / CONFIG_NAME).is_file() and (run / ENCODER_NAME).is_file():
        raise CtxsslError(f"{run} is already an export", "pass the run folder it was exported from")
    model = load_run_model(run, "cpu")  # strict, sha256-checked; refuses a run with no checkpoint
    run_dir = Path(model.info.source["run"])
    out = Path(out)
    replaced = _check_out(out, run_dir, overwrite)
    info, notes = model.info, []
    encoder = {k: v.detach().cpu().contiguous() for k, v in model.net.encoder.state_dict().items()}
    recipe = RECIPES.get(info.encoder, (f"ctxssl_cli.model.encoder.build_encoder({info.encoder!r})", []))[0]

    cfg = info.to_config(model.spec)
    cfg["ctxssl_version"] = __version__
    config_text = (f"# ctxssl export of {run_dir} (step {info.step}): what `ctxssl.load(DIR)` needs beside "
                   f"{MODEL_NAME if info.is_contextssl else ENCODER_NAME}.\n# Its sha256 is sealed into that file: "
                   "edit it and the export is refused.\n" + yaml.safe_dump(cfg, sort_keys=False))
    config_sha = hashlib.sha256(config_text.encode()).hexdigest()
    common = {"format_version": "1", "ctxssl_version": __version__, CONFIG_SHA_KEY: config_sha,
              "method": info.method, "step": str(info.step),
              "source_checkpoint_sha256": str(info.source.get("checkpoint_sha256"))}
    enc_meta = {"format": ENCODER_FORMAT, **common, "encoder": info.encoder, "architecture": recipe,
                "feature_dim": str(info.feature_dim), "resolution": str(info.resolution),
                "mean": json.dumps(list(info.mean)), "std": json.dumps(list(info.std))}
    if not info.is_contextssl:
        notes.append(f"{METHOD_TITLES.get(info.method, info.method)} is a baseline: its projector/predictor heads are "
                     f"training-only, so the export holds its encoder (no {MODEL_NAME}); ctxssl.load gives features")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        _save(tmp / ENCODER_NAME, encoder, enc_meta)
        if info.is_contextssl:
            state = {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
            _save(tmp / MODEL_NAME, state, {"format": MODEL_FORMAT, **common, "encoder": info.encoder})
        _write(tmp / CONFIG_NAME, config_text)
        files = [(ENCODER_NAME, f"encoder weights, torchvision key names ({recipe})")]
        if info.is_contextssl:
            files.append((MODEL_NAME, "encoder + context transformer + aux predictor, for ctxssl.load"))
        files.append((CONFIG_NAME, "spec, action schema, resolution, normalisation, classes"))
        hashes = {name: _sha256(tmp / name) for name, _ in files}
        _write(tmp / CARD_NAME, model_card(model, run_dir, out, files, hashes, recipe, notes))
        files.append((CARD_NAME, "this model card"))
        sizes = [(name, (tmp / name).stat().st_size, what) for name, what in files]
        _publish(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    return ExportResult(out, sizes, model, recipe, replaced, notes)


# ---- the folder ---------------------------------------------------------------------------------------------
def is_export(folder: Path) -> bool:
    """An earlier export: only export files, and a config.yaml of format ctxssl-export."""
    folder = Path(folder)
    try:
        names = {p.name for p in folder.iterdir()}
        cfg = yaml.safe_load((folder / CONFIG_NAME).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return names <= set(EXPORT_FILES) and isinstance(cfg, dict) and cfg.get("format") == EXPORT_FORMAT


def _check_out(out: Path, run_dir: Path, overwrite: bool) -> str | None:
    """Refuse an --out that cannot be replaced; say what an accepted one replaces (None: nothing)."""
    target = out.resolve()
    for what, inside in (("the run", run_dir.resolve()), ("the current folder", Path.cwd().resolve())):
        if target == inside or target in inside.parents:
            raise CtxsslError(f"--out {out} is or contains {what} ({inside})",
                              f"choose a folder of its own, e.g. --out {run_dir / 'export'}")
    if out.exists() and not out.is_dir():
        raise CtxsslError(f"--out {out} is a file", "name a folder (it is made if it does not exist)")
    if not out.is_dir() or not any(out.iterdir()):
        return None
    if is_export(out):
        return "an earlier export"
    if not overwrite:
        raise CtxsslError(f"--out {out} is not empty and is not an earlier ctxssl export",
                          "choose another --out, or pass --overwrite to replace that folder and everything in it")
    return "the folder's contents (--overwrite)"


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished temp folder to `out`; an existing `out` is moved aside first and removed after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _save(path: Path, tensors: dict, meta: dict[str, str]) -> None:
    save_file(tensors, str(path), metadata=sealed(tensors, meta))
    fsync_path(path)


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    fsync_path(path)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- the model card -----------------------------------------------------------------------------------------
METHOD_TEXT = {
    "contextssl": ("ContextSSL (Contextual Self-Supervised Learning; Gupta et al., NeurIPS 2024, arXiv 2405.18193): "
                   "an image encoder, a GPT-2-style context transformer and an auxiliary latent predictor, trained on "
                   "pairs of views and their actions. Shown a context of example pairs whose actions reveal only some "
                   "factors (a context mode), the same weights give embeddings equivariant to those factors and "
                   "invariant to the rest, with no retraining."),
}


def _num(v, pct: bool = False) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "—"
    return f"{100 * v:.1f}" if pct else f"{v:.3f}"


def _largest(section) -> str | None:
    """The largest context length (a string key) of a report section's mode entry."""
    keys = [k for k in section if str(k).lstrip("-").isdigit()] if isinstance(section, dict) else []
    return max(keys, key=int) if keys else None


def headline(report: dict) -> list[str]:
    """Markdown lines: R² per factor, top-1 and MRR on h and on z at each mode's largest context length."""
    r2, top1, mrr = (report.get(k) if isinstance(report.get(k), dict) else {} for k in ("r2", "top1", "mrr"))
    meta = report.get("meta") if isinstance(report.get("meta"), dict) else {}
    factors = [f.get("name") for f in (meta.get("schema") or {}).get("factors", []) if isinstance(f, dict)]
    factors = factors or sorted((r2.get("features") or {}).keys())
    kind = (meta.get("settings") or {}).get("r2", "paper")
    rows = [("h (encoder features)", r2.get("features") or {}, top1.get("features"), None)]
    for mode in [m for m in r2 if m not in ("features", "predictor")] + [m for m in mrr if m not in r2]:
        c = _largest(r2.get(mode)) or _largest(mrr.get(mode))
        if c is None:
            continue
        t = top1.get(mode, {}).get(c) if isinstance(top1.get(mode), dict) else None
        m = mrr.get(mode, {}).get(c) if isinstance(mrr.get(mode), dict) else None
        rows.append((f"z, {mode} context, c = {c}", (r2.get(mode) or {}).get(c) or {}, t, m))
    if "predictor" in mrr:
        rows.append(("predictor (MRR)", {}, None, mrr["predictor"]))
    head = ["embedding", *[f"{f} R²" for f in factors], "top-1 (%)", "MRR", "H@1", "H@5"]
    lines = [f"R² as `{kind}` defines it (evaluate's --r2), top-1 of a linear probe, retrieval on val.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r2_row, t, m in rows:
        m = m if isinstance(m, dict) else {}
        r2_row = r2_row if isinstance(r2_row, dict) else {}
        cells = [name, *[_num(r2_row.get(f)) for f in factors], _num(t, pct=True),
                 _num(m.get("mrr")), _num(m.get("h@1")), _num(m.get("h@5"))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _evaluation(model: Model, run_dir: Path) -> list[str]:
    path = run_dir / REPORT
    if not path.is_file():
        return [f"Not evaluated yet (no {REPORT} in the run): `ctxssl evaluate --checkpoint {run_dir}`."]
    try:
        report = json.loads(path.read_text())
        if not isinstance(report, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return [f"{path} could not be read ({type(e).__name__}); evaluate the run again."]
    lines = [f"From `{path}`."]
    evaluated = (report.get("meta") or {}).get("checkpoint") or {}
    exported = model.info.source.get("checkpoint_sha256")
    if isinstance(evaluated, dict) and evaluated.get("sha256") not in (None, exported):
        lines.append(f"**Note:** the report is of an earlier checkpoint (step {evaluated.get('step')}), not of this "
                     f"export (step {model.info.step}).")
    try:
        return lines + [""] + headline(report)
    except (AttributeError, TypeError, ValueError) as e:
        return lines + [f"Its numbers could not be read ({type(e).__name__}: {e})."]


def torchvision_snippet(model: Model, out: Path) -> str:
    """Python that loads encoder.safetensors without ctxssl and computes features of images in [0, 1]."""
    i = model.info
    recipe = RECIPES.get(i.encoder)
    build = recipe[1] if recipe else [f"encoder, _ = ctxssl_cli.model.encoder.build_encoder({i.encoder!r})"]
    imports = ["import torch"] + (["import torchvision"] if "torchvision" in "\n".join(build) else []) + \
              ([] if recipe else ["import ctxssl_cli.model.encoder"])
    return "\n".join([
        *imports, "from safetensors.torch import load_file", "", *build,
        f"encoder.load_state_dict(load_file({str(out / ENCODER_NAME)!r}), strict=True)",
        "encoder.eval()",
        f"mean = torch.tensor({list(i.mean)}).view(1, 3, 1, 1)",
        f"std = torch.tensor({list(i.std)}).view(1, 3, 1, 1)",
        f"images = torch.rand(8, 3, {i.resolution}, {i.resolution})  # your RGB images in [0, 1], "
        f"{i.resolution} x {i.resolution} px (the training resolution)",
        "with torch.no_grad():",
        f"    h = encoder((images - mean) / std)  # (8, {i.feature_dim}) features",
        "print(h.shape)"])


def api_snippet(model: Model, out: Path) -> str:
    """Python that loads this export with ctxssl and embeds images under a context (features only: a baseline)."""
    i, r = model.info, model.info.resolution
    lines = ["import torch", "import ctxssl_cli as ctxssl", "", f"model = ctxssl.load({str(out)!r})",
             f"images = torch.randint(0, 256, (8, 3, {r}, {r}), dtype=torch.uint8)  # uint8 0-255 or float 0-1, "
             "any size (resized)",
             f"h = model.features(images)  # (8, {i.feature_dim}) encoder features"]
    if i.is_contextssl:
        p = max(0, min(8, (i.block_size - 2) // 2))
        factors = ", ".join(f"{f} {w}" for f, w in i.schema.factors)
        lines += [f"x = torch.randint(0, 256, ({p}, 3, {r}, {r}), dtype=torch.uint8)  # context pairs: source views",
                  f"y = torch.randint(0, 256, ({p}, 3, {r}, {r}), dtype=torch.uint8)  # ... and target views",
                  f"actions = torch.zeros({p}, model.action_dim)  # what maps x to y: {i.schema.name} ({factors})",
                  f"ctx = model.context(x, actions, y)  # {p} pairs = {2 * p} tokens (< block size {i.block_size})",
                  f"z = model.embed(images, context=ctx, mode={i.modes[0]!r})  # (8, {i.feature_dim}), L2-normalised; "
                  f"modes: {', '.join(i.modes)}"]
    lines.append("print(model)")
    return "\n".join(lines)


def model_card(model: Model, run_dir: Path, out: Path, files, hashes: dict, recipe: str, notes: list[str]) -> str:
    i, spec, src = model.info, model.spec, model.info.source
    title = METHOD_TITLES.get(i.method, i.method)
    method = METHOD_TEXT.get(i.method, f"{title}, one of the paper's baselines (SPEC §7), trained in ctxssl's "
                                       "harness on the same pairs as ContextSSL; its encoder is what it learns.")
    m, t = spec.model, spec.train
    rows = [("method", title), ("encoder", f"{i.encoder}, {i.feature_dim}-d features ({recipe})")]
    if i.is_contextssl:
        rows += [("context transformer", f"{_n(m.n_layer, 'layer')}, {_n(m.n_head, 'head')}, width {m.n_embd}, "
                                         f"block size {m.block_size} tokens (a context holds at most "
                                         f"{m.block_size - 2})"),
                 ("environments", ", ".join(f"{k} {v:g}" for k, v in t.envs.items()) + f"; mask_prob {t.mask_prob:g}"),
                 ("context modes", ", ".join(i.modes))]
    factors = ", ".join(f"{f} ({w})" for f, w in i.schema.factors)
    rows += [("actions", f"{i.schema.name}: {factors}"),
             ("input", f"RGB {i.resolution} x {i.resolution} px, in [0, 1], normalised with mean {_fmt3(i.mean)} "
                       f"and std {_fmt3(i.std)}"),
             ("classes", (f"{len(i.classes)}: " + ", ".join(i.classes)) if i.classes else f"{i.n_classes} (names "
                         "unknown: the training dataset is not on disk)"),
             ("optimisation", f"batch {t.batch_size} pairs, lr {t.lr:g} x batch/256, weight decay {t.weight_decay:g}, "
                              f"seed {t.seed}")]
    steps = src.get("total_steps")
    lines = [f"# {spec.name}: {title} ({i.encoder})", "",
             f"Exported by ctxssl {__version__} with `ctxssl export` from `{run_dir}`.", "",
             "## Method", "", method, "", "## Model", "", "| | |", "|---|---|",
             *[f"| {k} | {v} |" for k, v in rows], "",
             "The full resolved spec is in `config.yaml` (`spec:`).", "",
             "## Training", "",
             f"- steps: {i.step}" + (f" of {steps}" if steps and steps != i.step else "") +
             f" (epoch {src.get('epoch', 0)})",
             f"- data: `{src.get('data_path')}`, manifest sha256 `{src.get('data_manifest_sha256')}`",
             f"- checkpoint sha256 (content): `{src.get('checkpoint_sha256')}`",
             f"- ctxssl {src.get('ctxssl_version')}, git `{src.get('git_sha')}`", "",
             "## Evaluation", "", *_evaluation(model, run_dir), "",
             "## Files", "", "| file | sha256 | holds |", "|---|---|---|",
             *[f"| `{name}` | `{hashes.get(name, '—')}` | {what} |" for name, what in files],
             f"| `{CARD_NAME}` | — | this model card |", "",
             *[f"Note: {n}." for n in notes], *([""] if notes else []),
             "## Use the encoder without ctxssl", "",
             "```python", torchvision_snippet(model, out), "```", "",
             "## Use the model with ctxssl (its Python API)", "",
             "```python", api_snippet(model, out), "```", ""]
    return "\n".join(lines)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' * (count != 1)}"


def size_text(n_bytes: int) -> str:
    """1234567 -> '1.2 MB' (kB below a megabyte)."""
    return f"{n_bytes / 1e6:.1f} MB" if n_bytes >= 1e6 else f"{max(n_bytes / 1e3, 0.1):.1f} kB"


def _fmt3(v) -> str:
    return "(" + ", ".join(f"{x:.4f}" for x in v) + ")"
