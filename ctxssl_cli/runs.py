"""Loading a trained run for embedding and evaluation: checkpoint -> spec -> model, and its dataset.

The run's action schema (what it recorded in meta.action_schema) must be its dataset's (the manifest's): a 3DIEBench
run does not read CIFAR-10 data, nor the other way round. `LoadedRun.split(name)` is the split evaluation reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ctxssl_cli.checkpoint import load_checkpoint, restore_model
from ctxssl_cli.data.prepared import PreparedDataset
from ctxssl_cli.data.schema import ActionSchema, check_same_schema, schema_from_manifest, schema_of_run
from ctxssl_cli.data.augment2d import settings_from
from ctxssl_cli.data.virtual_views import evaluation_split
from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.model.build import build_model
from ctxssl_cli.spec import RunSpec, spec_from_yaml_text, stored_meta


@dataclass
class LoadedRun:
    checkpoint: Path
    checkpoint_sha256: str  # sha256 over the checkpoint's tensors (checked on load)
    step: int
    spec: RunSpec
    meta: dict  # what the trainer recorded: resolution, mean/std, n_classes, data path and hash, ...
    model: torch.nn.Module  # ContextSSL, or a baseline (methods/heads.py TwoViewModel) for spec.method
    data: PreparedDataset
    device: torch.device
    _splits: dict = field(default_factory=dict, repr=False)  # evaluation splits, made once per name

    @property
    def resolution(self) -> int:
        return int(self.meta["resolution"])

    @property
    def schema(self) -> ActionSchema:
        """The action schema the run was trained with (meta.action_schema; runs before 0.4: views3d)."""
        return schema_of_run(self.meta)

    @property
    def action_dim(self) -> int:
        return int(self.meta.get("action_dim", self.schema.dim))

    def split(self, name: str):
        """The split evaluation reads (data/virtual_views.py evaluation_split): the stored views of a views3d
        dataset, or the fixed augmented views of an augment2d one, at the run's resolution."""
        if name not in self._splits:
            self._splits[name] = evaluation_split(self.data, self.schema, name, self.resolution, self.device,
                                                  settings_from(self.spec.data.augment))
        return self._splits[name]


def load_run(checkpoint: Path, data: Path | None, device: torch.device) -> LoadedRun:
    ckpt = load_checkpoint(checkpoint)
    spec = spec_from_yaml_text(ckpt.spec_yaml)
    meta = stored_meta(ckpt.spec_yaml)
    data_path = Path(data) if data is not None else Path(meta.get("data_path") or spec.data.path)
    if not data_path.exists():
        raise CtxsslError(f"the run's dataset {data_path} does not exist", "pass --data DIR (a prepared dataset)")
    dataset = PreparedDataset(data_path)
    trained_on = meta.get("data_manifest_sha256")
    if data is None and trained_on and trained_on != dataset.manifest_sha256:
        raise CtxsslError(f"the run's dataset {data_path} has changed since {ckpt.path} was trained on it (it was "
                          "rendered or packed again)",
                          "pass --data DIR with the dataset the run was trained on, or train the run again")
    schema = schema_of_run(meta)
    check_same_schema(schema, schema_from_manifest(dataset.manifest), str(ckpt.path), dataset.root)
    if int(meta.get("action_dim", schema.dim)) != schema.dim:
        raise CtxsslError(f"checkpoint {ckpt.path} records action_dim {meta['action_dim']} but its {schema.name} "
                          f"action schema has {schema.dim} components", "train the run again with this ctxssl")
    n_classes = int(meta.get("n_classes", len(dataset.classes)))
    if n_classes != len(dataset.classes):
        raise CtxsslError(f"checkpoint {ckpt.path} was trained on {n_classes} classes but {dataset.root} has "
                          f"{len(dataset.classes)}", "pass the dataset the run was trained on (--data)")
    model = build_model(spec, action_dim=int(meta.get("action_dim", schema.dim)), schema=schema)
    restore_model(model, ckpt)
    model.to(device).eval()
    return LoadedRun(checkpoint=ckpt.path, checkpoint_sha256=ckpt.meta["content_sha256"], step=ckpt.step,
                     spec=spec, meta=meta, model=model, data=dataset, device=device)
