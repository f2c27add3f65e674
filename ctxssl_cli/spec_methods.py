"""The baselines' part of a run spec (SPEC §7): one typed block per method, the names of the methods, and the
rules that tie a block to the shared sections (the encoder's width, the batch). spec.py holds the shared
sections, builds RunSpec with one field per block, and re-exports everything here, so importing from
ctxssl_cli.spec is enough.

Torch-free, like spec.py: a typo is refused before anything heavy is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ctxssl_cli.errors import CtxsslError

if TYPE_CHECKING:
    from ctxssl_cli.spec import RunSpec

# The baselines' own hyperparameters (SPEC §7): one block per method; the defaults are the published SIE code
# base's 3DIEBench settings as SPEC §7 records them (facebookresearch/SIE). "mlp" is a projector's layer widths,
# "a-b-c": Linear-BatchNorm-ReLU for every layer but the last, a Linear without bias last (z has width c).


@dataclass
class SimCLRSpec:
    # Projector widths on h (published: 2048-2048-2048 on ResNet-18's 512-d h, i.e. 4x the feature width).
    mlp: str = "2048-2048-2048"
    # NT-Xent temperature (published: 0.1; no clamp of the cosines, unlike ContextSSL's published loss).
    temperature: float = 0.1


@dataclass
class VICRegSpec:
    # Projector widths on h (published: 2048-2048-2048).
    mlp: str = "2048-2048-2048"
    # Loss weights of the invariance (MSE), variance (hinge on the std) and covariance terms (published 10/10/1).
    sim_coeff: float = 10.0
    std_coeff: float = 10.0
    cov_coeff: float = 1.0


@dataclass
class EquiModSpec:
    # Width of each of the two projectors on h, invariant and equivariant (published: 2048-2048-2048). The
    # predictor has action_dim x width² weights (a linear hypernetwork), so it grows with the last width.
    mlp: str = "2048-2048-2048"
    temperature: float = 0.1
    # Weight of the equivariant NT-Xent term (EquiMod's default: 1).
    equi_factor: float = 1.0
    # What the predictor is told: "rotcolor" (relative quaternion + 2 hue differences, 6 values, as ContextSSL's
    # actions) or "rotation" (the quaternion alone, 4: the SIE paper's rotation-only runs).
    action: str = "rotcolor"


@dataclass
class SIESpec:
    # Projector widths before the split (published: 2048-2048-2048); each part's projector is scaled by its share
    # of h: equi_dim / F for the equivariant one, (F - equi_dim) / F for the invariant one (1024-1024-1024 each).
    mlp: str = "2048-2048-2048"
    # Width of the equivariant part h[F - equi_dim:] of the representation (published --equi 256 of 512); the
    # invariant part is h[:F - equi_dim]. Must leave both parts non-empty.
    equi_dim: int = 256
    # Weight of the predictor's MSE relative to sim_coeff (published --equi-factor 0.45).
    equi_factor: float = 0.45
    # VICReg's weights (published --sim-coeff 10 --std-coeff 10 --cov-coeff 1); std_coeff also weighs the
    # predictor's own variance term.
    sim_coeff: float = 10.0
    std_coeff: float = 10.0
    cov_coeff: float = 1.0
    action: str = "rotcolor"  # as equimod.action


@dataclass
class SENSpec:
    # The one (equivariant) projector's widths (published: 2048-2048-2048).
    mlp: str = "2048-2048-2048"
    temperature: float = 0.1
    action: str = "rotcolor"  # as equimod.action


# Every method a spec can name; each baseline's block is the section of that name.
METHODS = ("contextssl", "simclr", "vicreg", "equimod", "sie", "sen")
# Each method as the paper's tables name it (evaluate/report.py PAPER_METHODS).
METHOD_TITLES = {"contextssl": "ContextSSL", "simclr": "SimCLR", "vicreg": "VICReg", "equimod": "EquiMOD",
                 "sie": "SIE", "sen": "SEN"}
METHOD_SECTIONS = {"simclr": SimCLRSpec, "vicreg": VICRegSpec, "equimod": EquiModSpec, "sie": SIESpec,
                   "sen": SENSpec}
PREDICTOR_METHODS = ("equimod", "sie", "sen")  # methods with an action-conditioned predictor (MRR applies)
# The keys of the shared sections that only ContextSSL reads (its transformer, context masking, aux predictor
# and InfoNCE); a baseline's spec may hold them only at their defaults, and its stored spec.yaml leaves them out.
CONTEXTSSL_ONLY = frozenset({
    "model.block_size", "model.n_layer", "model.n_head", "model.n_embd", "model.dropout", "model.aux_hidden",
    "model.aux_norm", "model.action_units", "train.envs", "train.mask_prob", "train.mask_draw", "train.aux_weight", "train.aux_rotation",
    "train.aux_hue", "train.temperature", "train.nce_clamp"})
# The width of h for each model.encoder (model/encoder.py builds them; tests/test_methods.py checks they agree),
# here so that an SIE split can be checked before anything is built.
ENCODER_FEATURES = {"resnet18": 512, "resnet18_small": 512, "convnet": 256}
ACTION_WIDTHS = {"rotcolor": 6, "rotation": 4}  # the predictors' input: data/schema.py ROTATION (+ COLOR)
# A hypernetwork predictor holds action_dim x width² weights: this caps it (about 1 GB of float32).
MAX_PREDICTOR_WEIGHTS = 1 << 28
MAX_WIDTH = 65536  # per projector layer: far above any real run, there to catch typos


def mlp_widths(key: str, text: str) -> list[int]:
    """A projector's "a-b-c" -> [a, b, c]: one or more widths, each in [1, MAX_WIDTH] (CtxsslError otherwise)."""
    try:
        widths = [int(p) for p in str(text).split("-")]
    except ValueError:
        widths = []
    if not widths or any(not 1 <= w <= MAX_WIDTH for w in widths):
        sec, name = key.split(".")
        raise CtxsslError(f"{key} must be layer widths like 2048-2048-2048, each in [1, {MAX_WIDTH:,}], got {text!r}",
                          f"e.g. --set {key}={getattr(METHOD_SECTIONS[sec](), name)} (its default)")
    return widths


def sie_widths(spec: "RunSpec") -> tuple[list[int], list[int]]:
    """SIE's (invariant, equivariant) projector widths: sie.mlp scaled by each part's share of h (SPEC §7)."""
    f, e = ENCODER_FEATURES[spec.model.encoder], spec.sie.equi_dim
    widths = mlp_widths("sie.mlp", spec.sie.mlp)
    return [w * (f - e) // f for w in widths], [w * e // f for w in widths]


def validate_method_block(spec: "RunSpec") -> None:
    """A baseline's own settings and how they fit the shared ones (the encoder's width, the batch)."""
    method, block = spec.method, spec.method_block
    if spec.train.batch_size < 2:
        raise CtxsslError(f"train.batch_size must be at least 2 for {method} (its loss contrasts or normalises "
                          "over the batch)", "e.g. --set train.batch_size=128")
    widths = mlp_widths(f"{method}.mlp", block.mlp)
    if method in PREDICTOR_METHODS and block.action not in ACTION_WIDTHS:
        raise CtxsslError(f"{method}.action must be rotcolor or rotation, got '{block.action}'",
                          f"e.g. --set {method}.action=rotcolor")
    encoder_width = ENCODER_FEATURES.get(spec.model.encoder)
    if encoder_width is None:
        import difflib

        close = difflib.get_close_matches(str(spec.model.encoder), list(ENCODER_FEATURES), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise CtxsslError(f"unknown model.encoder '{spec.model.encoder}'",
                          f"{hint}choose one of: {', '.join(ENCODER_FEATURES)}")
    if method == "sie":
        e = block.equi_dim
        if e >= encoder_width:
            raise CtxsslError(f"sie.equi_dim ({e}) must be smaller than the representation: model.encoder "
                              f"{spec.model.encoder} gives h of width {encoder_width}, split into an invariant "
                              "and an equivariant part",
                              f"e.g. --set sie.equi_dim={encoder_width // 2} (half, as the published 256 of 512)")
        inv, equi = sie_widths(spec)
        if min(inv + equi) < 1:
            raise CtxsslError(f"sie.mlp {block.mlp} scaled by the split {encoder_width - e}/{e} leaves a layer of "
                              "width 0", "use wider layers or a more even sie.equi_dim")
        widths = equi
    if method in PREDICTOR_METHODS:
        weights = ACTION_WIDTHS[block.action] * widths[-1] ** 2
        if weights > MAX_PREDICTOR_WEIGHTS:
            raise CtxsslError(f"{method}'s predictor would hold {weights:,} weights (action width x {widths[-1]}², "
                              f"a linear hypernetwork), above the limit of {MAX_PREDICTOR_WEIGHTS:,}",
                              f"make the last width of {method}.mlp smaller, e.g. 2048")
