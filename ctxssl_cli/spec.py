"""Run specs: typed dataclasses validated on construction, YAML presets (with `extends`), --set overrides.

A run spec names its `method` (contextssl, the default, or one of the baselines of SPEC §7: simclr, vicreg,
equimod, sie, sen) and has three shared sections, `data`, `model` and `train`, plus one block per baseline
holding that method's own hyperparameters (`simclr:`, `vicreg:`, ...). Every field has a default and a comment
saying why or how to tune it; the defaults are the paper's settings on 3DIEBench (SPEC §2, §7) unless said
otherwise (spec_methods.py holds the baselines' blocks). A key that does not apply to the spec's method is an
error naming the method: another method's block when it is written at all (a preset chain or --set), and a
ContextSSL-only key (CONTEXTSSL_ONLY: the transformer, masking, aux and InfoNCE keys) on a baseline when its value
is not the default. A value equal to the default changes nothing, so a baseline spec that extends a ContextSSL one
is refused only for what that chain actually changes.
Unknown keys and wrong types are errors that name the key and suggest the closest valid one; every number is
range-checked (INT_RANGES, FLOAT_RANGES: NaN and infinity are never accepted), so that a typo is an error that
names the key and its range, never a crash or an out-of-memory minutes into a run.

A run folder's own spec.yaml (to_yaml with a top-level `meta:` block, the run's recorded facts) is a valid
`--preset FILE`: the `meta` block is ignored when a spec is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ctxssl_cli.data.schema import SCHEMAS
from ctxssl_cli.errors import CtxsslError
# the baselines' blocks and names, re-exported: `from ctxssl_cli.spec import SIESpec, METHODS` works
from ctxssl_cli.spec_methods import (  # noqa: F401
    ACTION_WIDTHS, CONTEXTSSL_ONLY, ENCODER_FEATURES, MAX_PREDICTOR_WEIGHTS, METHOD_SECTIONS, METHOD_TITLES, METHODS,
    PREDICTOR_METHODS, EquiModSpec, SENSpec, SIESpec, SimCLRSpec, VICRegSpec, mlp_widths, sie_widths,
    validate_method_block)



def _presets_dir() -> Path:
    """The presets shipped with the package (`ctxssl_cli.presets`, mapped from the repository's presets/ in
    pyproject.toml); in a bare source tree that was never installed, the repository's presets/ folder."""
    from importlib import resources

    try:
        root = resources.files("ctxssl_cli.presets")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "presets"
    return Path(str(root))


PRESETS_DIR = _presets_dir()



@dataclass
class DataSpec:
    # Prepared dataset folder (`ctxssl prepare ...`); a leading $CTXSSL_HOME is the datasets' home (default
    # ~/.cache/ctxssl). Empty: the built-in dataset (data.builtin) at its default location, rendered on first use.
    path: str = ""
    # The built-in dataset used when path is empty, rendered on first use: "synthetic" (the 3D benchmark, stored
    # views) or "synthetic-images" (its objects as plain images, one each, for the 2D environments: demo-2d).
    builtin: str = "synthetic"
    # Training resolution in pixels. 0: the dataset's own resolution (from its manifest). A smaller value
    # resizes on the fly (antialiased); the paper trains at 128 on 3DIEBench.
    resolution: int = 0
    # DataLoader worker processes. Batches are a pure function of (seed, epoch, step), so this changes speed,
    # never the data. 0 reads in the training process (simplest; fine for memory-mapped raw datasets on CPU).
    workers: int = 2
    # Quaternion sign convention for actions and targets: True makes w >= 0 (q and -q are the same rotation);
    # False keeps scipy's raw output, as the published code does (for comparisons with its numbers).
    canonical_quat: bool = True
    # 2D augmentation data only (CIFAR-10, image folders, synthetic-images): the ranges of the view pipeline
    # (data/augment2d.py AugmentSettings), any subset of crop_scale [min, max] (box area fraction), crop_ratio,
    # jitter_p, brightness, contrast, saturation, hue, blur_p, blur_sigma [min, max] (pixels of the view).
    # Empty: SimCLR's CIFAR pipeline as EquiMod uses it (crop_scale [0.2, 1.0], blur_sigma [0.1, 2.0], ...).
    # Training, the standard units and the evaluation views all follow it. A preset's mapping is merged field by
    # field into the one it extends; `augment: {}` clears it.
    augment: dict = field(default_factory=dict)


@dataclass
class ModelSpec:
    # Image encoder: resnet18 (the paper's, for 128 px), resnet18_small (3x3 stem, no max-pool: for 32-64
    # px), convnet (a small CNN for CPU demos).
    encoder: str = "resnet18"
    # Tokens per sequence (2 per pair). The paper uses 128 = 64 pairs; it also bounds the context length
    # usable at evaluation (c < block_size).
    block_size: int = 128
    # Context transformer size: the paper's GPT-2-style decoder with 3 layers, 4 heads, width 2048.
    n_layer: int = 3
    n_head: int = 4
    n_embd: int = 2048
    # Dropout in the transformer; the paper uses none.
    dropout: float = 0.0
    # Hidden width of the auxiliary latent predictor (MLP proj_dim -> h -> h -> action_dim, SPEC §2).
    aux_hidden: int = 1024
    # How the aux predictor's input is normalised: "l2" (the paper: unit-norm outputs, so each of the F
    # coordinates is about 1/sqrt(F)) or "rms" (the same direction scaled to unit RMS, i.e. x sqrt(F)). With
    # "l2" and PyTorch's default Linear init the predictor's first activations are ~sqrt(F) times too small
    # and it takes thousands of steps to start predicting; "rms" lets short (CPU) runs learn rotation.
    aux_norm: str = "l2"
    # The units of the actions in the tokens and of the aux targets: "raw" (as the data gives them: the
    # quaternion and hues of 3DIEBench are about unit scale already) or "standard" (2D augmentation data only:
    # each action component divided by its standard deviation under the augmentation pipeline, each aux target
    # component scaled to standard deviation 0.5, a quaternion component's). In raw 2D units a crop box moves by
    # ~0.1 and sigma by ~0.9, so the crop environment's aux loss is ~20x smaller than the blur one's and the
    # context's actions are small beside h; demo-2d shows no context effect in raw units (README, Results).
    action_units: str = "raw"
    # SyncBatchNorm across ranks under DDP. Off in the paper (each GPU normalises its own batch).
    sync_bn: bool = False


@dataclass
class TrainSpec:
    # Passes over the training objects (one pair per object per epoch). The paper: 1000 on 3DIEBench.
    epochs: int = 1000
    # Stop after this many optimiser steps (0: no cap). The schedule spans min(epochs x steps/epoch, this).
    max_steps: int = 0
    # Global batch in pairs (all ranks together); must be a multiple of block_size/2 pairs per rank.
    batch_size: int = 512
    # Peak learning rate at batch 256; the actual peak is lr x batch_size / 256 (the paper: 5e-5, Adam).
    lr: float = 5e-5
    # Adam's (L2) weight decay, as the paper.
    weight_decay: float = 1e-3
    # Linear warm-up from 0, then cosine to 0 (paper: 10 epochs).
    warmup_epochs: float = 10.0
    # Save the checkpoint every this many steps (and at the end, and on Ctrl-C).
    checkpoint_every: int = 500
    # Every random choice (init, pairs, environments, context masks) flows from this seed.
    seed: int = 0
    # Environment mixture: name -> probability of being the environment of a step (SPEC §2). Names:
    # rotation, color, rotcolor, invariant. The paper's main run: rotation 0.5, color 0.5.
    envs: dict = field(default_factory=lambda: {"rotation": 0.5, "color": 0.5})
    # Probability of hiding each earlier pair from a query token (context masking; paper best 0.9).
    mask_prob: float = 0.9
    # How the context mask is drawn (SPEC §2, §5c): "per_layer" (the published model: a fresh (T, T/2) draw in
    # every attention layer of every step, shared by all sequences and heads) or "per_sequence" (one draw per
    # sequence, reused by every layer: ctxssl <= 0.2's behaviour).
    mask_draw: str = "per_layer"
    # Weight of the auxiliary latent-prediction loss (paper: 5.0). 0 disables the predictor's loss.
    aux_weight: float = 5.0
    # How the auxiliary predictor's rotation target is written: "quaternion" (the paper: x, y, z, w with the
    # data's sign convention) or "matrix" (the 9 entries of R: continuous, no sign flip near 180 degrees,
    # easier to regress from pixels).
    aux_rotation: str = "quaternion"
    # How the hue targets are written: "linear" (the paper: hue in [0, 1]) or "circular" (cos, sin of
    # 2 pi hue: hue 0 and 1 are the same colour, so this target has no jump).
    aux_hue: str = "linear"
    # InfoNCE temperature (paper: 0.1).
    temperature: float = 0.1
    # Clamp the cosine similarities at 1e-7 before dividing by the temperature, as the published NT-Xent does
    # (negatives with a negative cosine then give no gradient). false: the plain NT-Xent.
    nce_clamp: bool = True
    # Numerics: auto = bf16 autocast on CUDA, fp32 on CPU; or fp32 / bf16 explicitly.
    precision: str = "auto"
    # Write a metrics line every this many steps.
    log_every: int = 10
    # Clip the global gradient norm to this value (0: no clipping, as the paper).
    grad_clip: float = 0.0
    # CPU threads (train/threads.py). 0 (auto): start with torch's count (the cores, or OMP_NUM_THREADS) and follow
    # the cores other processes leave free, so a second job on the machine does not collapse this one; train.log
    # records each change. N: pin N threads (bit-exact reruns on a shared machine). Ignored on CUDA.
    threads: int = 0




@dataclass
class RunSpec:
    # A name for the run (the preset's name by default); runs are written to runs/<name>-<timestamp>.
    name: str = "run"
    # What is trained: contextssl (the paper's model) or a baseline of SPEC §7 (simclr, vicreg, equimod, sie,
    # sen), trained by the same loop on the same pairs; a baseline's own settings are in its block below.
    method: str = "contextssl"
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    simclr: SimCLRSpec = field(default_factory=SimCLRSpec)
    vicreg: VICRegSpec = field(default_factory=VICRegSpec)
    equimod: EquiModSpec = field(default_factory=EquiModSpec)
    sie: SIESpec = field(default_factory=SIESpec)
    sen: SENSpec = field(default_factory=SENSpec)

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict:
        """The settings that apply to the method: for a baseline its own block and no ContextSSL-only key (so a
        stored spec.yaml shows what the run used), for contextssl no baseline block."""
        full = dataclasses.asdict(self)
        out = {"name": self.name, "method": self.method}
        for sec in BASE_SECTIONS:
            out[sec] = {k: v for k, v in full[sec].items() if self.is_contextssl or f"{sec}.{k}" not in CONTEXTSSL_ONLY}
        if not self.is_contextssl:
            out[self.method] = full[self.method]
        return out

    @property
    def is_contextssl(self) -> bool:
        return self.method == "contextssl"

    @property
    def method_block(self):
        """The baseline's own settings (SimCLRSpec, ...); None for contextssl."""
        return None if self.is_contextssl else getattr(self, self.method)

    @property
    def pairs_per_seq(self) -> int:
        return self.model.block_size // 2


BASE_SECTIONS = {"data": DataSpec, "model": ModelSpec, "train": TrainSpec}
SECTIONS = {**BASE_SECTIONS, **METHOD_SECTIONS}

# Keys that `pretrain --resume --set` may change on a run that has already started: they change how the
# optimisation continues (step size, clipping, where it stops), not what is being trained, so the resumed run
# stays one run (loop.py records each such change in the run's meta.changes).
OPTIMISATION_KEYS = frozenset({"train.lr", "train.grad_clip", "train.max_steps"})

# The top-level block that to_yaml writes beside a spec (git sha, dataset hash, mean/std, changes, ...): facts
# about a run, not settings, so loading a spec file ignores it.
META_KEY = "meta"


@dataclass(frozen=True)
class Range:
    """A closed interval [low, high], or half-open at either end (low_open: (low, ..., high_open: ..., high))."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        ints = isinstance(self.low, int) and isinstance(self.high, int)
        fmt = (lambda v: f"{v:,}") if ints else (lambda v: f"{v:g}")
        return f"{'(' if self.low_open else '['}{fmt(self.low)}, {fmt(self.high)}{')' if self.high_open else ']'}"


# Every numeric spec field and its valid range. The upper bounds are far above any real run (the paper: n_embd
# 2048, 3 layers, block_size 128, batch 512, 1000 epochs) and are there to catch typos (an extra zero, 10**9)
# before they allocate; one combination of in-range sizes can of course still exceed a machine's memory.
INT_RANGES = {
    "data.resolution": Range(0, 8192),  # 0: the dataset's own resolution
    "data.workers": Range(0, 256),
    "model.block_size": Range(2, 65536),  # and even (two tokens per pair)
    "model.n_layer": Range(1, 256),
    "model.n_head": Range(1, 1024),
    "model.n_embd": Range(1, 65536),  # and a multiple of n_head
    "model.aux_hidden": Range(1, 65536),
    "train.epochs": Range(0, 1_000_000),
    "train.max_steps": Range(0, 1_000_000_000),
    "train.batch_size": Range(1, 1_048_576),  # and a multiple of block_size/2
    "train.checkpoint_every": Range(1, 1_000_000_000),
    "train.seed": Range(0, 2**63 - 1),  # numpy's SeedSequence takes no negative seeds
    "train.log_every": Range(1, 1_000_000_000),
    "train.threads": Range(0, 4096),  # 0: auto
    "sie.equi_dim": Range(1, 65536),  # and below the encoder's feature width (validate)
}
FLOAT_RANGES = {
    "model.dropout": Range(0.0, 1.0, high_open=True),
    "train.lr": Range(0.0, 1.0, low_open=True),  # Adam's peak lr at batch 256; the paper: 5e-5
    "train.weight_decay": Range(0.0, 10.0),
    "train.warmup_epochs": Range(0.0, 1e6),
    "train.mask_prob": Range(0.0, 1.0, high_open=True),
    "train.aux_weight": Range(0.0, 1000.0),
    "train.temperature": Range(0.0, 100.0, low_open=True),
    "train.grad_clip": Range(0.0, 1e6),  # 0: no clipping
    "simclr.temperature": Range(0.0, 100.0, low_open=True),
    "vicreg.sim_coeff": Range(0.0, 1000.0),
    "vicreg.std_coeff": Range(0.0, 1000.0),
    "vicreg.cov_coeff": Range(0.0, 1000.0),
    "equimod.temperature": Range(0.0, 100.0, low_open=True),
    "equimod.equi_factor": Range(0.0, 1000.0),
    "sie.equi_factor": Range(0.0, 1000.0),
    "sie.sim_coeff": Range(0.0, 1000.0),
    "sie.std_coeff": Range(0.0, 1000.0),
    "sie.cov_coeff": Range(0.0, 1000.0),
    "sen.temperature": Range(0.0, 100.0, low_open=True),
}
ENV_PROBABILITY = Range(0.0, 1.0)


def _all_keys() -> list[str]:
    keys = ["name"]
    for sec, cls in SECTIONS.items():
        keys += [f"{sec}.{f.name}" for f in dataclasses.fields(cls)]
    return keys


def _suggest(key: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    if close:
        return f"did you mean '{close[0]}'?"
    return "valid keys: " + ", ".join(candidates)


def _unknown_key(key: str) -> CtxsslError:
    return CtxsslError(f"unknown spec key '{key}'", _suggest(key, _all_keys() + ["method"]))


_DICT_EXAMPLES = {"train.envs": "'{rotation: 0.5, color: 0.5}'", "data.augment": "'{crop_scale: [0.2, 1.0]}'"}


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Check `value` against the field type; ints are accepted for floats. Raises CtxsslError otherwise."""
    if isinstance(typ, str):  # postponed annotations
        typ = {"str": str, "int": int, "float": float, "bool": bool, "dict": dict}[typ]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is str and key.endswith(".mlp") and isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # a one-layer projector: YAML reads "512" as an int
    non_finite_text = isinstance(value, str) and value.strip().lower().lstrip("+-.") in ("nan", "inf", "infinity")
    if typ is float and (isinstance(value, float) and not math.isfinite(value) or non_finite_text):
        raise CtxsslError(f"spec key '{key}' must be a finite number, got {value!r}",
                          f"e.g. --set {key}={_default(key)}")
    if typ is int and isinstance(value, bool):
        raise CtxsslError(f"spec key '{key}' must be an integer, got {value!r}", f"e.g. --set {key}=3")
    if not isinstance(value, typ):
        example = {int: "3", float: "0.5", bool: "true", str: "NAME", dict: _DICT_EXAMPLES.get(key, "'{}'")}[typ]
        kind = {int: "an integer", float: "a number (float)", bool: "true or false", str: "a string",
                dict: "a mapping"}[typ]
        raise CtxsslError(
            f"spec key '{key}' must be {kind}, got {value!r}",
            f"e.g. --set {key}={example}",
        )
    return value


def from_dict(raw: dict) -> RunSpec:
    """Build a RunSpec from a nested dict (YAML), checking every key and type."""
    if not isinstance(raw, dict):
        raise CtxsslError("a run spec must be a YAML mapping", "see presets/rotcolor.yaml for the layout")
    kwargs: dict[str, Any] = {}
    for sec, body in raw.items():
        if sec in ("name", "method"):
            kwargs[sec] = _coerce(sec, body, str)
            continue
        if sec not in SECTIONS:
            raise _unknown_key(str(sec))
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise CtxsslError(f"spec section '{sec}' must be a mapping", f"write it as '{sec}:' with indented keys")
        cls = SECTIONS[sec]
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        vals = {}
        for k, v in body.items():
            if k not in names:
                raise _unknown_key(f"{sec}.{k}")
            vals[k] = _coerce(f"{sec}.{k}", v, hints[k])
        kwargs[sec] = cls(**vals)
    check_method_keys(raw, kwargs.get("method", "contextssl"))
    return RunSpec(**kwargs)


def check_method_keys(raw: dict, method: str) -> None:
    """Refuse another method's block among the written keys (`raw`: a preset chain merged with --set), whatever
    its values: `--set sie.equi_dim=...` on a SimCLR spec is a mistake even at SIE's default."""
    if method not in METHODS:
        raise CtxsslError(f"unknown method '{method}'", _suggest(str(method), list(METHODS)))
    for sec in METHOD_SECTIONS:
        if sec != method and raw.get(sec):
            _foreign_block(f"{sec}.{next(iter(raw[sec]))}", method)


def _foreign_block(key: str, method: str) -> None:
    sec = key.split(".")[0]
    raise CtxsslError(f"spec key '{key}' belongs to method {sec}, but this spec's method is {method}",
                      f"remove the '{sec}' settings (from the preset or --set), or set method: {sec}")


def _check_keys_apply(spec: RunSpec) -> None:
    """Every setting the method would silently ignore must be at its default: another method's block, and on a
    baseline the ContextSSL-only keys (a preset chain that merely repeats a default is accepted)."""
    for sec, cls in METHOD_SECTIONS.items():
        block, default = getattr(spec, sec), cls()
        if sec != spec.method and block != default:
            name = next(f.name for f in dataclasses.fields(cls) if getattr(block, f.name) != getattr(default, f.name))
            _foreign_block(f"{sec}.{name}", spec.method)
    if spec.is_contextssl:
        return
    changed = [k for k in _all_keys() if k in CONTEXTSSL_ONLY
               and getattr(getattr(spec, k.split(".")[0]), k.split(".")[1]) != _default(k)]
    if changed:
        m, one = spec.method, len(changed) == 1
        shown = ", ".join(changed[:4]) + (", ..." if len(changed) > 4 else "")
        raise CtxsslError(f"{shown} {'is a ContextSSL key' if one else 'are ContextSSL keys'}, which method {m} does "
                          "not use",
                          f"remove {'it' if one else 'them'} (from the preset, its 'extends' chain or --set), or set "
                          f"method: contextssl; a {m} run reads its settings from '{m}:'")


def _default(key: str) -> Any:
    """The default of a dotted spec key (e.g. train.lr -> 5e-05)."""
    sec, name = key.split(".", 1)
    return getattr(SECTIONS[sec](), name)


def _finite_number(value: Any) -> bool:
    """An int (any size: math.isfinite would overflow on 10**400) or a finite float; bools are not numbers here."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or math.isfinite(value)


def _check_range(key: str, value: Any, rng: Range) -> None:
    ok = _finite_number(value) and value in rng
    if not ok:
        raise CtxsslError(f"{key} must be in {rng}, got {value!r}",
                          f"set {key} within that range, e.g. --set {key}={_default(key)} (its default)")


def validate(spec: RunSpec) -> None:
    """Semantic checks that types alone cannot express: ranges first, then the relations between fields."""
    m, t = spec.model, spec.train
    for key, rng in (INT_RANGES | FLOAT_RANGES).items():
        sec, name = key.split(".")
        _check_range(key, getattr(getattr(spec, sec), name), rng)
    if m.block_size % 2:
        raise CtxsslError(f"model.block_size must be an even number >= 2, got {m.block_size}", "e.g. 128 (64 pairs)")
    if m.n_embd % m.n_head:
        raise CtxsslError(
            f"model.n_embd ({m.n_embd}) must be divisible by model.n_head ({m.n_head})", "e.g. n_embd 2048, n_head 4"
        )
    if spec.method not in METHODS:
        raise CtxsslError(f"unknown method '{spec.method}'", _suggest(str(spec.method), list(METHODS)))
    _check_keys_apply(spec)
    if not spec.is_contextssl:
        validate_method_block(spec)
    elif t.batch_size % spec.pairs_per_seq:
        raise CtxsslError(
            f"train.batch_size ({t.batch_size}) must be a multiple of the pairs per sequence "
            f"(model.block_size/2 = {spec.pairs_per_seq})",
            f"e.g. --set train.batch_size={max(1, t.batch_size // spec.pairs_per_seq) * spec.pairs_per_seq}",
        )
    if t.epochs == 0 and t.max_steps == 0:
        raise CtxsslError("train.epochs and train.max_steps are both 0", "set one of them, e.g. --set train.epochs=10")
    if t.aux_rotation not in ("quaternion", "matrix"):
        raise CtxsslError(f"train.aux_rotation must be quaternion or matrix, got '{t.aux_rotation}'",
                          "e.g. --set train.aux_rotation=matrix")
    if m.action_units not in ("raw", "standard"):
        raise CtxsslError(f"model.action_units must be raw or standard, got '{m.action_units}'",
                          "e.g. --set model.action_units=standard (2D augmentation data)")
    if m.aux_norm not in ("l2", "rms"):
        raise CtxsslError(f"model.aux_norm must be l2 or rms, got '{m.aux_norm}'", "e.g. --set model.aux_norm=rms")
    if t.aux_hue not in ("linear", "circular"):
        raise CtxsslError(f"train.aux_hue must be linear or circular, got '{t.aux_hue}'", "e.g. --set train.aux_hue=circular")
    if t.mask_draw not in ("per_layer", "per_sequence"):
        raise CtxsslError(f"train.mask_draw must be per_layer or per_sequence, got '{t.mask_draw}'",
                          "e.g. --set train.mask_draw=per_layer (the published model)")
    if t.precision not in ("auto", "fp32", "bf16"):
        raise CtxsslError(f"train.precision must be auto, fp32 or bf16, got '{t.precision}'", "e.g. --set train.precision=auto")
    if spec.data.builtin not in ("synthetic", "synthetic-images"):
        raise CtxsslError(f"data.builtin must be synthetic or synthetic-images, got '{spec.data.builtin}'",
                          "e.g. --set data.builtin=synthetic-images (or give data.path)")
    if spec.data.augment:
        from ctxssl_cli.data.augment2d import settings_from

        settings_from(spec.data.augment)  # unknown fields, types and ranges: refused before anything runs
    if not t.envs:
        raise CtxsslError("train.envs is empty", "e.g. --set train.envs='{rotation: 0.5, color: 0.5}'")
    for name, p in t.envs.items():
        known = list(dict.fromkeys(e for schema in SCHEMAS.values() for e in schema.environments))
        if name not in known:  # the dataset's schema is checked at pretrain time (train/loop.py check_schema)
            raise CtxsslError(f"unknown environment '{name}' in train.envs", _suggest(str(name), known))
        if not _finite_number(p) or p not in ENV_PROBABILITY:
            raise CtxsslError(f"train.envs.{name} must be a probability in {ENV_PROBABILITY}, got {p!r}",
                              "e.g. rotation: 0.5")
    total = sum(t.envs.values())
    if abs(total - 1.0) > 1e-6:
        raise CtxsslError(f"train.envs probabilities sum to {total:g}, not 1", "make them add up to 1")


# ---------------------------------------------------------------------------------------------------------
# YAML presets and overrides


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "envs" and not (k == "augment" and not v):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v  # envs is replaced whole: a mixture is one value; augment: {} clears a parent's settings
    return out


def preset_names() -> list[str]:
    """Every preset under presets/ (subfolders too), as the name `--preset` takes (path without .yaml)."""
    return sorted(str(p.relative_to(PRESETS_DIR).with_suffix("")) for p in PRESETS_DIR.rglob("*.yaml"))


def _resolve_preset_path(name_or_file: str, relative_to: Path | None = None) -> Path:
    p = Path(name_or_file)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_absolute() and relative_to is not None and not p.exists():
            p = relative_to / p
        if not p.is_file():
            raise CtxsslError(f"spec file '{name_or_file}' does not exist", "pass a YAML file or a preset name")
        return p
    cand = PRESETS_DIR / f"{name_or_file}.yaml"
    if not cand.is_file():
        raise CtxsslError(f"unknown preset '{name_or_file}'", _suggest(name_or_file, preset_names()))
    return cand


def _load_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise CtxsslError(f"{path} is not valid YAML ({str(e).splitlines()[0]})", "fix the file's syntax") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise CtxsslError(f"{path} must hold a YAML mapping", "see presets/rotcolor.yaml for the layout")
    return raw


def load_raw(name_or_file: str, _seen: tuple = ()) -> dict:
    """Read a preset or spec file into a nested dict, following `extends: OTHER` (a preset or a file)."""
    path = _resolve_preset_path(name_or_file, _seen[-1].parent if _seen else None)
    if path in _seen:
        raise CtxsslError(f"preset '{name_or_file}' extends itself in a cycle", "remove the circular 'extends'")
    raw = _load_yaml(path)
    parent = raw.pop("extends", None)
    if parent is not None:
        if not isinstance(parent, str):
            raise CtxsslError(f"'extends' in {path} must be a preset name or file", "e.g. extends: rotcolor")
        raw = _deep_merge(load_raw(parent, _seen + (path,)), raw)
    return raw


def parse_override(item: str) -> tuple[list[str], Any]:
    """'train.lr=1e-4' -> (['train', 'lr'], 1e-4). The value is read as YAML (so 3 is an int, true a bool)."""
    if "=" not in item:
        raise CtxsslError(f"--set '{item}' is not of the form key=value", "e.g. --set train.epochs=10")
    key, _, text = item.partition("=")
    key = key.strip()
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    # PyYAML (YAML 1.1) reads 1e-4 as a string (it wants 1.0e-4); accept plain float syntax too.
    if isinstance(value, str) and value.lower() not in ("nan", "inf", "-inf", "infinity"):
        try:
            value = float(value)
        except ValueError:
            pass
    parts = key.split(".")
    if not all(parts):
        raise CtxsslError(f"--set key '{key}' is malformed", "e.g. --set train.epochs=10")
    return parts, value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    out = _deep_merge(raw, {})
    for item in overrides:
        parts, value = parse_override(item)
        key = ".".join(parts)
        if parts[0] in ("name", "method") and len(parts) == 1:
            out[parts[0]] = value
            continue
        if len(parts) != 2 or parts[0] not in SECTIONS:
            # train.envs.rotation=0.3 style: a key inside a mapping field
            if len(parts) == 3 and (parts[0], parts[1]) in (("train", "envs"), ("data", "augment")):
                sec, fld = parts[0], parts[1]
                mapping = (out.get(sec) or {}).get(fld, getattr(SECTIONS[sec](), fld))
                if not isinstance(mapping, dict):
                    raise CtxsslError(f"spec key '{sec}.{fld}' must be a mapping, got {mapping!r}",
                                      f"e.g. --set {sec}.{fld}={_DICT_EXAMPLES[f'{sec}.{fld}']}")
                mapping = {**mapping, parts[2]: value}
                out[sec] = {**(out.get(sec) or {}), fld: mapping}
                continue
            raise _unknown_key(key)
        sec = dict(out.get(parts[0]) or {})
        sec[parts[1]] = value
        out[parts[0]] = sec
    return out


# Keys added after runs were first stored, with the value that reproduces what those older runs did. A stored
# run spec (one with a `meta` block) holds every key of its version, so a missing key means an older run.
LEGACY_DEFAULTS = {"train": {"mask_draw": "per_sequence", "nce_clamp": False}}  # ctxssl <= 0.2


def _stored_run_spec(raw: dict) -> dict:
    """A run's stored spec as settings: its `meta` dropped, keys older versions lacked filled as they behaved.

    The legacy keys are ContextSSL's: a baseline's stored spec leaves them out on purpose (to_dict)."""
    raw = {k: v for k, v in raw.items() if k != META_KEY}
    if raw.get("method", "contextssl") != "contextssl":
        return raw
    for section, legacy in LEGACY_DEFAULTS.items():
        if isinstance(raw.get(section), dict):
            raw[section] = {**legacy, **raw[section]}
    return raw


def load_spec(name_or_file: str, overrides: list[str] | None = None) -> RunSpec:
    raw = load_raw(name_or_file)
    if META_KEY in raw:  # a run's own spec.yaml: its recorded facts (dataset hash, versions) are not settings
        raw = _stored_run_spec(raw)
    raw = apply_overrides(raw, overrides or [])
    raw.setdefault("name", Path(name_or_file).stem)
    return from_dict(raw)


def spec_from_yaml_text(text: str) -> RunSpec:
    """Rebuild a spec stored in a run folder or a checkpoint (extra top-level `meta` is ignored)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CtxsslError(f"stored run spec is not valid YAML ({e})", "the run folder may be damaged") from None
    if not isinstance(raw, dict):
        raise CtxsslError("stored run spec is not a mapping", "the run folder may be damaged")
    return from_dict(_stored_run_spec(raw) if META_KEY in raw else raw)


def stored_meta(text: str) -> dict:
    """The `meta` block that `to_yaml` stored beside a spec (run folder or checkpoint); {} if there is none."""
    raw = yaml.safe_load(text)
    return (raw.get(META_KEY) if isinstance(raw, dict) else None) or {}


def to_yaml(spec: RunSpec, meta: dict | None = None) -> str:
    body = spec.to_dict()
    if meta:
        body[META_KEY] = meta
    return yaml.safe_dump(body, sort_keys=False)

