"""The Python API: a trained model outside the CLI (issue 19).

    import ctxssl_cli as ctxssl
    model = ctxssl.load("runs/demo-…")                     # a run folder, its checkpoint, or an export folder
    ctx = model.context(images_x, actions, images_y)       # pairs -> a reusable KV-cached context
    z = model.embed(images, context=ctx, mode="rotation")  # (N, F) context-conditioned, L2-normalised
    h = model.features(images)                             # (N, F) encoder features

Images are uint8 (0-255) or float (0-1) tensors (N, 3, H, W) (numpy arrays too); the model resizes them to the
run's resolution (antialiased bilinear, as `ctxssl embed`) and normalises them with the run's mean/std. Work is
done in batches of `batch_size` images on the device that `--device auto` picks (CUDA if visible, with the bf16
autocast of `ctxssl embed`); results come back as float32 CPU tensors.

The same numbers as `ctxssl embed`: the encoder pass is embed.encode_views', a context of P pairs is the
transformer's KV cache of its 2P tokens [h_x, a], [h_y, 0] with the actions masked by the context mode
(embed.mode_mask), and a query is the token [h, 0] (or [h, a] with `actions=`) against that cache, L2-normalised.

Nothing needs the dataset: a run is rebuilt from its checkpoint's stored spec and meta (resolution, mean/std,
action schema), an export (export.py) from its model.safetensors and config.yaml. Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from ctxssl_cli.checkpoint import CHECKPOINT_NAME, load_checkpoint, read_verified, restore_model
from ctxssl_cli.data.pairs import to_model_input
from ctxssl_cli.data.schema import ActionSchema, schema_from_entry, schema_of_run
from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.spec import METHOD_TITLES, RunSpec, spec_from_yaml_text, stored_meta

# The export folder (export.py writes it, `load` reads it).
EXPORT_FORMAT = "ctxssl-export"  # config.yaml's `format`
EXPORT_VERSION = 1
MODEL_FORMAT = "ctxssl-model"  # model.safetensors: the ContextSSL state dict (encoder, transformer, aux predictor)
ENCODER_FORMAT = "ctxssl-encoder"  # encoder.safetensors: the encoder alone, under torchvision's key names
CONFIG_NAME, MODEL_NAME, ENCODER_NAME = "config.yaml", "model.safetensors", "encoder.safetensors"
CARD_NAME = "README.md"
EXPORT_FILES = (ENCODER_NAME, MODEL_NAME, CONFIG_NAME, CARD_NAME)
CONFIG_SHA_KEY = "config_sha256"  # in the sealed metadata of the export's weights: config.yaml is checked against it
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")  # torch.save / pickle files: never opened
LOADABLE = "pass a ctxssl run folder, its checkpoint.safetensors or a `ctxssl export` folder"  # what load() takes
DEFAULT_BATCH = 256  # images per encoder batch, as `ctxssl embed --batch-size`


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model knows about itself; an export's config.yaml holds exactly this plus the spec."""

    method: str  # contextssl, or a baseline (simclr, vicreg, equimod, sie, sen): features only
    encoder: str  # resnet18, resnet18_small or convnet
    feature_dim: int  # F
    schema: ActionSchema  # the action schema the run was trained with (views3d, augment2d)
    action_dim: int  # A, the schema's width
    resolution: int  # images are resized to resolution x resolution
    mean: tuple[float, float, float]  # normalisation of images in [0, 1], per RGB channel
    std: tuple[float, float, float]
    block_size: int | None  # ContextSSL: a context holds fewer tokens than this (2 per pair); None for baselines
    classes: tuple[str, ...] | None  # the training dataset's class names when known
    n_classes: int | None
    step: int  # training steps of the checkpoint
    source: dict = field(default_factory=dict)  # checkpoint path/sha256, total steps, data path/manifest sha256

    @property
    def is_contextssl(self) -> bool:
        return self.method == "contextssl"

    @property
    def modes(self) -> tuple[str, ...]:
        """The context modes: one per factor of the schema, then "none" (views3d: rotation, color, none)."""
        from ctxssl_cli.embed import modes_for

        return modes_for(self.schema) if self.is_contextssl else ()

    def to_config(self, spec: RunSpec) -> dict:
        """config.yaml of an export (readable with yaml.safe_load; `_info_from_config` reads it back)."""
        return {
            "format": EXPORT_FORMAT, "format_version": EXPORT_VERSION, "method": self.method,
            "encoder": {"name": self.encoder, "feature_dim": self.feature_dim, "file": ENCODER_NAME},
            "model_file": MODEL_NAME if self.is_contextssl else None,
            "action_schema": self.schema.to_manifest(), "action_dim": self.action_dim,
            "context_modes": list(self.modes), "block_size": self.block_size,
            "resolution": self.resolution,
            "normalisation": {"mean": list(self.mean), "std": list(self.std), "of": "RGB images in [0, 1]"},
            "classes": list(self.classes) if self.classes is not None else None, "n_classes": self.n_classes,
            "step": self.step, "source": dict(self.source), "spec": spec.to_dict(),
        }


@dataclass(eq=False)
class Context:
    """A context of P pairs (2P tokens), made by `Model.context`: the pairs' encoder features and actions, and
    the transformer's keys/values for each context mode, computed once on first use and reused by every query.
    (Not embed.Context, which names context pairs of a prepared dataset by index.)"""

    model: "Model" = field(repr=False)
    h_x: Tensor  # (P, F) encoder features of the source views, on the model's device
    h_y: Tensor  # (P, F) of the target views
    actions: Tensor  # (P, A) float32, unmasked: each mode keeps its own components
    _caches: dict = field(default_factory=dict, repr=False)  # mode -> KVCache

    @property
    def n_pairs(self) -> int:
        return int(self.h_x.shape[0])

    def __len__(self) -> int:
        """Tokens: two per pair (the context length c of `ctxssl embed --context-length`)."""
        return 2 * self.n_pairs

    def prefix(self, tokens: int) -> "Context":
        """The context of the first `tokens` tokens (tokens/2 pairs), as `ctxssl embed` takes the first c tokens
        of its 64-pair context."""
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0 or tokens % 2 or tokens > len(self):
            raise CtxsslError(f"context prefix {tokens!r} is not an even number of tokens between 0 and {len(self)}",
                              "a context has two tokens per pair: use 0, 2, 4, ...")
        k = tokens // 2
        return Context(self.model, self.h_x[:k], self.h_y[:k], self.actions[:k])

    def cache(self, mode: str | None):
        """The KV cache of this context under `mode` (its actions masked by the mode), built on first use."""
        key = mode if self.n_pairs else None  # an empty context is the same under every mode
        if key not in self._caches:
            keep = self.model._mode_mask(mode) if self.n_pairs else 1.0
            with torch.no_grad():
                self._caches[key] = self.model.net.build_context(self.h_x, self.h_y, self.actions * keep)
        return self._caches[key]


class Model:
    """A trained model for inference: `features`, and for ContextSSL `context` and `embed`. Make it with `load`."""

    def __init__(self, net: nn.Module, spec: RunSpec, info: ModelInfo, device: torch.device):
        self.net = net.to(device).eval()
        self.spec, self.info, self.device = spec, info, device

    # -- what the model is ----------------------------------------------------------------------------
    method = property(lambda self: self.info.method)
    schema = property(lambda self: self.info.schema)
    modes = property(lambda self: self.info.modes)
    action_dim = property(lambda self: self.info.action_dim)
    feature_dim = property(lambda self: self.info.feature_dim)
    block_size = property(lambda self: self.info.block_size)
    resolution = property(lambda self: self.info.resolution)
    classes = property(lambda self: self.info.classes)

    def __repr__(self) -> str:
        i = self.info
        ctx = (f", modes {'/'.join(i.modes)}, block size {i.block_size}" if i.is_contextssl else ", features only")
        return (f"<ctxssl {METHOD_TITLES.get(i.method, i.method)} model: {i.encoder} ({i.feature_dim}-d), "
                f"{i.schema.name} actions ({i.action_dim}){ctx}, {i.resolution} px, step {i.step}, on {self.device}>")

    # -- the API ----------------------------------------------------------------------------------------
    def features(self, images, batch_size: int = DEFAULT_BATCH) -> Tensor:
        """Encoder features h (N, F) float32 on the CPU (the `h` of `ctxssl embed`)."""
        return self._encode(self._images(images, "images"), batch_size)

    def context(self, images_x, actions, images_y, batch_size: int = DEFAULT_BATCH) -> Context:
        """P pairs (x_k, a_k, y_k): images_x, images_y (P, 3, H, W) and actions (P, A) mapping x_k to y_k in the
        run's schema (views3d: quaternion x, y, z, w of R(x)^-1 R(y), then the two hue differences) -> a Context.
        The mode (which action components the context reveals) is chosen per `embed` call."""
        self._need_context("context")
        xs, ys = self._images(images_x, "images_x"), self._images(images_y, "images_y")
        nx, ny = len(xs), len(ys)
        if nx != ny:
            odd = f", a context of {nx + ny} tokens (an odd number)" if (nx + ny) % 2 else ""
            raise CtxsslError(f"the context's pairs do not match: {nx} source images (images_x) but {ny} target "
                              f"images (images_y){odd}", "pass one target image per source image (two tokens a pair)")
        if 2 * nx >= self.block_size:
            raise CtxsslError(f"a context of {nx} pairs ({2 * nx} tokens) is not shorter than the model's block size "
                              f"({self.block_size})", f"use at most {(self.block_size - 2) // 2} pairs")
        a = self._actions(actions, nx, "actions")
        if xs.dtype == ys.dtype and xs.shape[1:] == ys.shape[1:]:  # one pass, as `ctxssl embed` encodes a context
            h = self._encode(torch.cat([xs, ys]), batch_size)
            hx, hy = h[:nx], h[nx:]
        else:
            hx, hy = self._encode(xs, batch_size), self._encode(ys, batch_size)
        return Context(self, hx.to(self.device), hy.to(self.device), a.to(self.device))

    def embed(self, images, context: Context | None = None, mode: str | None = None, actions=None,
              batch_size: int = DEFAULT_BATCH) -> Tensor:
        """Context-conditioned outputs z (N, F), L2-normalised, float32 on the CPU (the `z.<mode>.<c>` of
        `ctxssl embed`). `context=None`: no context (c = 0). `mode` (one of `model.modes`) picks the action
        components the context reveals; it is needed with a non-empty context. `actions` (N, A): query tokens
        [h, a] (masked by the mode, as the retrieval queries `q.<mode>.<c>`) instead of [h, 0]."""
        self._need_context("embed")
        if context is None:
            context = Context(self, torch.zeros(0, self.feature_dim, device=self.device),
                              torch.zeros(0, self.feature_dim, device=self.device),
                              torch.zeros(0, self.action_dim, device=self.device))
        elif not isinstance(context, Context) or context.model is not self:
            what = "from another model" if isinstance(context, Context) else f"a {type(context).__name__}"
            raise CtxsslError(f"context is not a context of this model (it is {what})",
                              "make it with this model's .context(images_x, actions, images_y)")
        if mode is None and (context.n_pairs or actions is not None):
            raise CtxsslError("a context (or query actions) needs a context mode",
                              f"pass mode= one of {', '.join(map(repr, self.modes))}")
        keep = self._mode_mask(mode) if mode is not None else None
        imgs = self._images(images, "images")
        qa = None if actions is None else self._actions(actions, len(imgs), "actions") * keep.cpu()
        h = self._encode(imgs, batch_size)
        cache, step, outs = context.cache(mode), 4 * self._batch(batch_size), []  # queries: 4x, as embed.py
        with torch.no_grad():
            for s in range(0, len(h), step):
                aq = qa[s:s + step].to(self.device) if qa is not None else None
                z = self.net.embed_queries(h[s:s + step].to(self.device), aq, cache)
                outs.append(F.normalize(z.float(), dim=-1).cpu())
        return torch.cat(outs) if outs else torch.zeros(0, self.feature_dim)

    # -- helpers ----------------------------------------------------------------------------------------
    def _need_context(self, call: str) -> None:
        if not self.info.is_contextssl:
            title = METHOD_TITLES.get(self.method, self.method)
            raise CtxsslError(f"this is a {title} model: it has no context transformer, so .{call}() does not apply",
                              "use model.features(images) (its encoder features)")

    def _mode_mask(self, mode: str) -> Tensor:
        from ctxssl_cli.embed import mode_mask

        return mode_mask(mode, self.action_dim, self.device, schema=self.schema)

    @staticmethod
    def _batch(batch_size) -> int:
        from ctxssl_cli.embed import check_batch_size

        return check_batch_size(batch_size, "batch_size")

    def _images(self, images, what: str) -> Tensor:
        """Check a batch of images (N, 3, H, W), uint8 0-255 or float 0-1; one-line errors otherwise."""
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images))
        if not torch.is_tensor(images):
            raise CtxsslError(f"{what} must be a tensor (N, 3, H, W), got a {type(images).__name__}",
                              "pass a torch.Tensor (or numpy array) of uint8 (0-255) or float (0-1) images")
        shape = tuple(images.shape)
        if images.dim() == 3 and shape[0] == 3:
            raise CtxsslError(f"{what} has shape {shape}: one image without a batch dimension",
                              f"pass {what}[None], of shape (1, 3, H, W)")
        if images.dim() != 4:
            raise CtxsslError(f"{what} has shape {shape}, not (N, 3, H, W)", "stack the images into one 4-D tensor")
        if shape[1] != 3:
            if shape[-1] == 3:
                raise CtxsslError(f"{what} has shape {shape}: channels last (N, H, W, 3)",
                                  f"pass {what}.permute(0, 3, 1, 2), of shape (N, 3, H, W)")
            fix = f"repeat the grey channel: {what}.expand(-1, 3, -1, -1)" if shape[1] == 1 else "pass RGB images"
            raise CtxsslError(f"{what} has {shape[1]} channel{'s' * (shape[1] != 1)} (shape {shape}), not 3", fix)
        if shape[2] == 0 or shape[3] == 0:
            raise CtxsslError(f"{what} has shape {shape}: images of zero size", "pass images of at least 1x1 pixel")
        if images.dtype == torch.uint8:
            return images
        if not images.is_floating_point():
            raise CtxsslError(f"{what} has dtype {images.dtype}", "pass uint8 (0-255) or float (0-1) images")
        if images.numel():
            lo, hi = float(images.min()), float(images.max())
            if not (np.isfinite(lo) and np.isfinite(hi)):
                raise CtxsslError(f"{what} holds nan or inf values", "pass finite float images in [0, 1]")
            if lo < 0 or hi > 1:
                raise CtxsslError(f"{what} holds values in [{lo:.4g}, {hi:.4g}], outside [0, 1]",
                                  "pass float images in [0, 1] (divide 0-255 values by 255) or uint8 images; the model "
                                  "normalises them itself")
        return images

    def _actions(self, actions, n: int, what: str) -> Tensor:
        """(n, A) float32 actions in the run's schema."""
        if isinstance(actions, np.ndarray):
            actions = torch.from_numpy(np.ascontiguousarray(actions))
        if not torch.is_tensor(actions):
            raise CtxsslError(f"{what} must be a tensor (P, {self.action_dim}), got a {type(actions).__name__}",
                              "pass a torch.Tensor (or numpy array) with one action per pair")
        widths = ", ".join(f"{f} {w}" for f, w in self.schema.factors)
        if actions.dim() != 2 or actions.shape[1] != self.action_dim:
            got = f"width {actions.shape[-1]}" if actions.dim() == 2 else f"shape {tuple(actions.shape)}"
            raise CtxsslError(f"{what} have {got} but this model's {self.schema.name} actions have "
                              f"{self.action_dim} components ({widths})",
                              f"pass {what} of shape (N, {self.action_dim})")
        if actions.shape[0] != n:
            raise CtxsslError(f"{what} have {actions.shape[0]} rows for {n} images",
                              "pass one action per context pair (or per query image)")
        actions = actions.detach().to("cpu", torch.float32)
        if not torch.isfinite(actions).all():
            raise CtxsslError(f"{what} hold nan or inf values", "pass finite actions")
        return actions

    def _input(self, x: Tensor) -> Tensor:
        """A batch on the device -> the encoder's input: resized to the run's resolution and normalised."""
        S, i = self.resolution, self.info
        if x.dtype == torch.uint8 and x.shape[-2] == x.shape[-1]:
            return to_model_input(x, i.mean, i.std, S)  # exactly `ctxssl embed`'s input
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if tuple(x.shape[-2:]) != (S, S):
            x = F.interpolate(x, size=(S, S), mode="bilinear", antialias=True, align_corners=False)
        m = torch.tensor(i.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1) * 255.0
        s = torch.tensor(i.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1) * 255.0
        return (x * 255.0 - m) / s  # to_model_input's arithmetic, on 255 x

    def _encode(self, images: Tensor, batch_size: int) -> Tensor:
        """Checked images (N, 3, H, W) -> h (N, F) float32 on the CPU, in batches (embed.encode_views' pass)."""
        bs, out = self._batch(batch_size), []
        with torch.no_grad():
            for s in range(0, len(images), bs):
                x = self._input(images[s:s + bs].to(self.device, non_blocking=True))
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                    h = self.net.encode(x)
                out.append(h.float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.feature_dim)


class EncoderOnly(nn.Module):
    """A baseline's export: the encoder alone (its heads are training-only), with the `encode` of the models."""

    def __init__(self, encoder: str):
        super().__init__()
        from ctxssl_cli.model.encoder import build_encoder

        self.encoder, self.feature_dim = build_encoder(encoder)

    def encode(self, images: Tensor) -> Tensor:
        return self.encoder(images)


# ---- loading ----------------------------------------------------------------------------------------------
def load(path, device: str = "auto") -> Model:
    """A run folder, a checkpoint.safetensors, or a `ctxssl export` folder (or a file in it) -> a Model on
    `device` (auto: CUDA when visible, else the CPU; as the CLI's --device). Refuses pickles unread and any
    file whose stored sha256 no longer matches."""
    from ctxssl_cli.devices import resolve_device

    dev = resolve_device(device.type if isinstance(device, torch.device) else device)
    path = Path(path)
    refuse_pickle(path)
    in_export = path.name in (MODEL_NAME, ENCODER_NAME, CONFIG_NAME) and (path.parent / CONFIG_NAME).is_file()
    if path.is_file() and in_export:
        path = path.parent
    if path.is_dir() and (path / CONFIG_NAME).is_file() and not (path / CHECKPOINT_NAME).is_file():
        return load_export(path, dev)
    if path.is_dir() and not (path / CHECKPOINT_NAME).is_file() and not (path / "spec.yaml").is_file():
        raise CtxsslError(f"{path} is neither a run folder (no {CHECKPOINT_NAME}) nor an export folder (no "
                          f"{CONFIG_NAME})", LOADABLE)
    return load_run_model(path, dev)


def refuse_pickle(path: Path) -> None:
    """A torch.save / pickle file is refused by its name, before anything reads it (unpickling runs code)."""
    if Path(path).suffix.lower() in PICKLE_SUFFIXES:
        raise CtxsslError(f"{path} is a {Path(path).suffix} file: a pickle, which ctxssl never loads (unpickling can "
                          "run code)", LOADABLE)


def load_run_model(path: Path, device: torch.device | str = "cpu") -> Model:
    """A run folder or checkpoint file -> its Model (strictly restored, sha256 checked); no dataset needed."""
    from ctxssl_cli.model.build import build_model

    ckpt = load_checkpoint(Path(path))  # verifies the sha256; refuses pickles and other files
    spec = spec_from_yaml_text(ckpt.spec_yaml)
    meta = stored_meta(ckpt.spec_yaml)
    schema = schema_of_run(meta)
    action_dim = int(meta.get("action_dim", schema.dim))
    if action_dim != schema.dim:
        raise CtxsslError(f"checkpoint {ckpt.path} records action_dim {action_dim} but its {schema.name} action "
                          f"schema has {schema.dim} components", "train the run again with this ctxssl")
    missing = [k for k in ("resolution", "mean", "std") if k not in meta]
    if missing:
        raise CtxsslError(f"checkpoint {ckpt.path} records no {', '.join(missing)} (an older ctxssl wrote it)",
                          "train the run again with this ctxssl")
    net = build_model(spec, action_dim=action_dim, schema=schema)
    restore_model(net, ckpt)
    classes = class_names(meta)
    n_classes = int(meta["n_classes"]) if "n_classes" in meta else (len(classes) if classes else None)
    source = {"run": str(ckpt.path.parent), "checkpoint": str(ckpt.path),
              "checkpoint_sha256": ckpt.meta.get("content_sha256"), "step": ckpt.step,
              "total_steps": int(ckpt.meta.get("total_steps", ckpt.step)), "epoch": int(ckpt.meta.get("epoch", 0)),
              "data_path": meta.get("data_path"), "data_manifest_sha256": meta.get("data_manifest_sha256"),
              "ctxssl_version": ckpt.meta.get("ctxssl_version"), "git_sha": meta.get("git_sha")}
    info = ModelInfo(method=spec.method, encoder=spec.model.encoder, feature_dim=int(net.feature_dim), schema=schema,
                     action_dim=action_dim, resolution=int(meta["resolution"]), mean=_three(meta["mean"]),
                     std=_three(meta["std"]), block_size=spec.model.block_size if spec.is_contextssl else None,
                     classes=classes, n_classes=n_classes, step=ckpt.step, source=source)
    return Model(net, spec, info, torch.device(device))


def class_names(meta: dict) -> tuple[str, ...] | None:
    """The training dataset's class names, when it is still on disk unchanged; else None (meta keeps only n_classes)."""
    from ctxssl_cli.data.prepared import PreparedDataset

    path = meta.get("data_path")
    if not path or not Path(path).is_dir():
        return None
    try:
        data = PreparedDataset(Path(path))
    except CtxsslError:
        return None
    if meta.get("data_manifest_sha256") not in (None, data.manifest_sha256):
        return None
    return tuple(str(c) for c in data.classes)


def load_export(folder: Path, device: torch.device | str = "cpu") -> Model:
    """A `ctxssl export` folder -> its Model. config.yaml must be the one sealed into the weights' metadata."""
    from ctxssl_cli.model.build import build_model

    folder = Path(folder)
    fix = "export the run again with `ctxssl export RUN --out DIR`"
    cfg_path = folder / CONFIG_NAME
    try:
        raw = cfg_path.read_bytes()
        cfg = yaml.safe_load(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise CtxsslError(f"{cfg_path} is not a readable export config ({type(e).__name__})", fix) from None
    if not isinstance(cfg, dict) or cfg.get("format") != EXPORT_FORMAT:
        raise CtxsslError(f"{cfg_path} is not a ctxssl export config (no format: {EXPORT_FORMAT})", fix)
    if cfg.get("format_version") != EXPORT_VERSION:
        raise CtxsslError(f"{folder} is export format {cfg.get('format_version')}; this ctxssl reads format "
                          f"{EXPORT_VERSION}", "use the ctxssl that exported it, or export the run again")
    contextssl = cfg.get("model_file") is not None
    weights = folder / (MODEL_NAME if contextssl else ENCODER_NAME)
    if not weights.is_file():
        raise CtxsslError(f"export {folder} has no {weights.name}", fix)
    tensors, meta = read_verified(weights, MODEL_FORMAT if contextssl else ENCODER_FORMAT, "export weights file", fix)
    if meta.get(CONFIG_SHA_KEY) != hashlib.sha256(raw).hexdigest():
        raise CtxsslError(f"{cfg_path} does not match the config sealed into {weights.name} (edited or replaced since "
                          "the export)", fix)
    try:
        spec = spec_from_yaml_text(yaml.safe_dump(cfg["spec"], sort_keys=False))
        info = _info_from_config(cfg)
    except (KeyError, TypeError, ValueError) as e:
        raise CtxsslError(f"{cfg_path} lacks or garbles an entry ({type(e).__name__}: {e})", fix) from None
    if info.action_dim != info.schema.dim:
        raise CtxsslError(f"{cfg_path} records action_dim {info.action_dim} but its {info.schema.name} action schema "
                          f"has {info.schema.dim} components", fix)
    net = build_model(spec, action_dim=info.action_dim, schema=info.schema) if contextssl else EncoderOnly(info.encoder)
    load_strict(net if contextssl else net.encoder, tensors, weights)
    return Model(net, spec, info, torch.device(device))


def load_strict(module: nn.Module, tensors: dict[str, Tensor], path: Path) -> None:
    """Every key and shape must match (a one-line error naming the first difference)."""
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    wrong = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        first = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected else
                 f"{wrong[0]} has shape {tuple(tensors[wrong[0]].shape)}, not {tuple(own[wrong[0]].shape)}")
        raise CtxsslError(f"{path} does not match the model its config describes ({len(missing)} missing, "
                          f"{len(unexpected)} unexpected, {len(wrong)} misshapen tensors; {first})",
                          "export the run again with `ctxssl export RUN --out DIR`")
    module.load_state_dict(tensors, strict=True)


def _three(v) -> tuple[float, float, float]:
    t = tuple(float(x) for x in v)
    if len(t) != 3:
        raise ValueError(f"expected 3 values (R, G, B), got {len(t)}")
    return t  # type: ignore[return-value]


def _info_from_config(cfg: dict) -> ModelInfo:
    enc, norm = cfg["encoder"], cfg["normalisation"]
    classes = cfg.get("classes")
    return ModelInfo(method=str(cfg["method"]), encoder=str(enc["name"]), feature_dim=int(enc["feature_dim"]),
                     schema=schema_from_entry(cfg["action_schema"]), action_dim=int(cfg["action_dim"]),
                     resolution=int(cfg["resolution"]), mean=_three(norm["mean"]), std=_three(norm["std"]),
                     block_size=None if cfg.get("block_size") is None else int(cfg["block_size"]),
                     classes=None if classes is None else tuple(map(str, classes)),
                     n_classes=None if cfg.get("n_classes") is None else int(cfg["n_classes"]),
                     step=int(cfg.get("step", 0)), source=dict(cfg.get("source") or {}))
