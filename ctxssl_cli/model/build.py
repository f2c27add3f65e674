"""Spec (or checkpoint) -> model: the one place a model is constructed, ContextSSL or a baseline.

Training, embedding, evaluation and the benchmarks all build through here, so `embed`/`evaluate` never import
the trainer. `spec.method` picks the model: ContextSSL below, a baseline through the methods registry
(ctxssl_cli/methods).
"""

from __future__ import annotations

from torch import nn

from ctxssl_cli.data.schema import AUGMENT2D, VIEWS3D, ActionSchema
from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.model.ctxssl import ContextSSL
from ctxssl_cli.spec import RunSpec


def aux_layout(spec: RunSpec) -> tuple[int, int]:
    """(rotation width, hue width) of the auxiliary target: quaternion 4 / matrix 9; linear 2 / circular 4."""
    return (4 if spec.train.aux_rotation == "quaternion" else 9), (2 if spec.train.aux_hue == "linear" else 4)


def aux_dim(spec: RunSpec, schema: ActionSchema = VIEWS3D) -> int:
    """Width of the auxiliary predictor's output: views3d's target encoding (aux_layout); else the schema's."""
    return sum(aux_layout(spec)) if schema == VIEWS3D else schema.dim


def build_model(spec: RunSpec, action_dim: int, schema: ActionSchema = VIEWS3D) -> nn.Module:
    """The model of `spec.method` with freshly initialised weights (from torch's global generator), for data of
    `schema` (the token's action width is `action_dim`, the schema's dim)."""
    if not spec.is_contextssl:
        from ctxssl_cli.methods import METHODS

        return METHODS[spec.method].build(spec, action_dim)
    m = spec.model
    model = ContextSSL(encoder=m.encoder, action_dim=action_dim, n_layer=m.n_layer, n_head=m.n_head,
                       n_embd=m.n_embd, dropout=m.dropout, aux_hidden=m.aux_hidden, aux_dim=aux_dim(spec, schema),
                       aux_norm=m.aux_norm)
    if m.action_units == "standard":
        from ctxssl_cli.data.augment2d import settings_from

        model.action_scale.copy_(standard_units(schema, settings_from(spec.data.augment))[0])
    return model


def standard_units(schema: ActionSchema, settings=None) -> tuple:
    """(action scale, aux target scale), each (schema.dim,), of model.action_units=standard: 2D augmentation data
    only (data/augment2d.py unit_scales), for the augmentation `settings` (None: the defaults)."""
    if schema != AUGMENT2D:
        raise CtxsslError(f"model.action_units=standard is defined for 2D augmentation data, not {schema.name}",
                          "use model.action_units=raw (the default) on 3DIEBench-style data")
    from ctxssl_cli.data.augment2d import unit_scales

    return unit_scales(settings)
