"""The six methods ctxssl trains on one harness (SPEC §2, §7): ContextSSL and the paper's baselines.

One module per method holds its heads and its loss as pure functions (contextssl.py only names ContextSSL's,
which live in model/ and losses.py). This registry is what the rest of the tool dispatches on `spec.method`
through: model/build.py builds `METHODS[name].build(spec, action_dim)`, train/step.py computes
`METHODS[name].loss(outputs, spec block, dist info)`, and evaluation asks `.predictor` whether MRR applies.
ContextSSL keeps its own build and step (model/build.py, train/step.py compute_loss): it has context masks and
environments that no baseline has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ctxssl_cli.methods import equimod, sen, sie, simclr, vicreg
from ctxssl_cli.spec import METHOD_TITLES, PREDICTOR_METHODS


@dataclass(frozen=True)
class Method:
    name: str  # the spec's `method:` value
    build: Callable  # (spec, action_dim) -> nn.Module, a methods.heads.TwoViewModel
    loss: Callable  # (model outputs, the spec's block for the method, DistInfo) -> {"loss": ..., terms}

    @property
    def title(self) -> str:
        """As the paper's tables name it (spec.METHOD_TITLES)."""
        return METHOD_TITLES[self.name]

    @property
    def predictor(self) -> bool:
        """An action-conditioned predictor (EquiMod, SEN, SIE): retrieval (MRR, H@k) applies."""
        return self.name in PREDICTOR_METHODS


METHODS: dict[str, Method] = {
    "simclr": Method("simclr", simclr.build, simclr.step_loss),
    "vicreg": Method("vicreg", vicreg.build, vicreg.step_loss),
    "equimod": Method("equimod", equimod.build, equimod.step_loss),
    "sie": Method("sie", sie.build, sie.step_loss),
    "sen": Method("sen", sen.build, sen.step_loss),
}

__all__ = ["METHODS", "Method"]
