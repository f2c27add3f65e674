"""One training step, from a batch of pairs to the loss: ContextSSL's (SPEC §2, `compute_loss`) and the
baselines' (SPEC §7, `compute_method_loss`, which dispatches on spec.method through ctxssl_cli.methods).

Kept apart from the loop so that tests (and the DDP equivalence check) can call exactly what training runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ctxssl_cli.data.augment2d import DEFAULT_SETTINGS, AugmentPairBatch, AugmentSettings, make_views, settings_from
from ctxssl_cli.data.pairs import PairBatch, normalise, to_model_input
from ctxssl_cli.losses import aux_loss, info_nce
from ctxssl_cli.model.context import layer_attention_masks, pair_attention_mask
from ctxssl_cli.data.schema import COLOR, ROTATION, VIEWS3D, ActionSchema, revealed_mask
from ctxssl_cli.model.build import aux_layout, standard_units
from ctxssl_cli.spec import RunSpec
from ctxssl_cli.train.dist import DistInfo, gather_with_grad


def env_schedule_rng(seed: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, 0xE4, step])


def sample_env(envs: dict[str, float], seed: int, step: int) -> str:
    """The environment of a global step: the same on every rank, a pure function of (seed, step)."""
    names = sorted(envs)
    probs = np.array([envs[n] for n in names], dtype=np.float64)
    return names[int(env_schedule_rng(seed, step).choice(len(names), p=probs / probs.sum()))]


def quat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (N, 4) scalar-last -> rotation matrices flattened row-major (N, 9); q and -q agree."""
    x, y, z, w = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], dim=-1)


def aux_target(target: torch.Tensor, spec: RunSpec, schema: ActionSchema = VIEWS3D) -> torch.Tensor:
    """A view's absolute latent in the spec's target encoding: views3d's 6-d (quaternion, floor hue, light hue)
    through train.aux_rotation / aux_hue; augment2d's 9 absolute view parameters, in standard units where
    model.action_units says so."""
    if schema != VIEWS3D:
        if spec.model.action_units == "standard":
            return target * standard_units(schema, settings_from(spec.data.augment))[1].to(target.device)
        return target
    rot, hue = target[:, list(ROTATION)], target[:, list(COLOR)]
    if spec.train.aux_rotation == "matrix":
        rot = quat_to_matrix(rot)
    if spec.train.aux_hue == "circular":
        ang = 2 * torch.pi * hue
        hue = torch.cat([torch.cos(ang), torch.sin(ang)], dim=1)  # (N, 4)
    return torch.cat([rot, hue], dim=1)


def aux_revealed(env: str, spec: RunSpec, device, schema: ActionSchema = VIEWS3D) -> torch.Tensor:
    """(D,) bool over the aux target: views3d: the rotation block if the env reveals rotation, the hue block for
    color (their widths follow the target encoding); augment2d: the components the env reveals."""
    rev = revealed_mask(env, schema.dim, "cpu", schema)
    if schema != VIEWS3D:
        return rev.to(device)
    n_rot, n_hue = aux_layout(spec)
    return torch.cat([rev[list(ROTATION)].any().repeat(n_rot), rev[list(COLOR)].any().repeat(n_hue)]).to(device)


def step_mask(spec: RunSpec, step: int, n_seq_global: int, info: DistInfo, device: torch.device) -> torch.Tensor:
    """The global step's context-masking draw as this rank uses it, a pure function of (seed, step).

    train.mask_draw "per_layer" (the published model): (n_layer, 1, T, T), one draw per layer shared by every
    sequence of the global batch, so every rank holds the same mask. "per_sequence": this rank's slice
    (n_seq_local, T, T) of one draw per sequence of the global batch."""
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([spec.train.seed, 0x3A5C, step]).generate_state(1)[0]))
    if spec.train.mask_draw == "per_layer":
        return layer_attention_masks(spec.model.n_layer, spec.pairs_per_seq, spec.train.mask_prob, g).to(
            device, non_blocking=True)
    mask = pair_attention_mask(n_seq_global, spec.pairs_per_seq, spec.train.mask_prob, g)  # (S, T, T)
    n_local = n_seq_global // info.world_size
    return mask[info.rank * n_local:(info.rank + 1) * n_local].to(device, non_blocking=True)


@dataclass
class ModelInputs:
    x: torch.Tensor  # (n, 3, R, R) float, normalised: the model's input
    y: torch.Tensor
    action: torch.Tensor  # (n, A) the full action x -> y
    target_y: torch.Tensor  # (n, A) y's absolute latent (views3d: 6-d; augment2d: 9 view parameters)


def model_inputs(batch: PairBatch | AugmentPairBatch, mean, std, resolution: int, device,
                 settings: AugmentSettings = DEFAULT_SETTINGS) -> ModelInputs:
    """The two views as the model reads them, whichever kind of data: stored views (uint8, resized and
    normalised) or an augment2d batch, whose views are rendered here, on the training device (data/augment2d.py),
    with the run's augmentation `settings` (spec data.augment)."""
    if isinstance(batch, AugmentPairBatch):
        x, y, action, _, target_y = make_views(batch, resolution, settings)
        x, y = normalise(x, mean, std), normalise(y, mean, std)
    else:
        x, y = to_model_input(batch.x, mean, std, resolution), to_model_input(batch.y, mean, std, resolution)
        action, target_y = batch.action, batch.target_y
    if device.type == "cuda":
        x, y = x.contiguous(memory_format=torch.channels_last), y.contiguous(memory_format=torch.channels_last)
    return ModelInputs(x, y, action, target_y)


@dataclass
class StepOutput:
    loss: torch.Tensor
    nce: torch.Tensor
    aux: torch.Tensor
    aux_r2: float  # online R² of the revealed target components (monitoring only)


def compute_loss(fwd: nn.Module, batch: PairBatch | AugmentPairBatch, spec: RunSpec, env: str,
                 attn_mask: torch.Tensor, info: DistInfo, mean, std, resolution: int,
                 autocast_dtype: torch.dtype | None, schema: ActionSchema = VIEWS3D) -> StepOutput:
    device = info.device
    inp = model_inputs(batch, mean, std, resolution, device, settings_from(spec.data.augment))
    revealed = revealed_mask(env, inp.action.shape[1], device, schema)
    action = inp.action * revealed  # hidden components are zeroed in every x token
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        o = fwd(inp.x, inp.y, action, spec.pairs_per_seq, attn_mask)  # ContextSSL.forward (maybe DDP-wrapped)
    z_x, z_y, pred_x, pred_y = o.z_x.float(), o.z_y.float(), o.pred_x.float(), o.pred_y.float()
    all_x, all_y = gather_with_grad(z_x, info), gather_with_grad(z_y, info)
    nce = info_nce(z_x, z_y, spec.train.temperature, all_x, all_y, offset=info.rank * z_x.shape[0],
                   clamp=spec.train.nce_clamp)
    target = aux_target(inp.target_y, spec, schema)
    aux_mask = aux_revealed(env, spec, device, schema)
    aux = 0.5 * (aux_loss(pred_x, target, aux_mask) + aux_loss(pred_y, target, aux_mask))
    loss = nce + spec.train.aux_weight * aux
    with torch.no_grad():
        if aux_mask.any():
            t, p = target[:, aux_mask], pred_y[:, aux_mask]
            sst = ((t - t.mean(0)) ** 2).sum()
            aux_r2 = float(1 - ((t - p) ** 2).sum() / sst.clamp_min(1e-12))
        else:
            aux_r2 = float("nan")
    return StepOutput(loss=loss, nce=nce, aux=aux, aux_r2=aux_r2)


@dataclass
class MethodStepOutput:
    loss: torch.Tensor
    terms: dict[str, torch.Tensor]  # the method's unweighted loss terms (logged), e.g. inv, std, cov


def compute_method_loss(fwd: nn.Module, batch: PairBatch, spec: RunSpec, info: DistInfo, mean, std,
                        resolution: int, autocast_dtype: torch.dtype | None) -> MethodStepOutput:
    """A baseline's step: both views and the full 6-d action through the model (maybe DDP-wrapped), then the
    method's loss in float32 over the global batch (methods/<method>.py step_loss). No environment, no mask:
    a baseline sees every action component it is built to read, at every step."""
    from ctxssl_cli.methods import METHODS

    device = info.device
    inp = model_inputs(batch, mean, std, resolution, device, settings_from(spec.data.augment))
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        out = fwd(inp.x, inp.y, inp.action)
    terms = METHODS[spec.method].loss(out, spec.method_block, info)
    return MethodStepOutput(loss=terms.pop("loss"), terms=terms)
