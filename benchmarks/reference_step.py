"""Our training step against the published implementation's, in one process, the same work on both sides.

    git clone https://github.com/Sharut/In-Context-Symmetries DIR        # the published code (Gupta et al. 2024)
    python benchmarks/train_step.py --reference DIR [--steps 10] [--paper-steps 3] [--paper-batch 64] [--device cpu]
    python benchmarks/reference_step.py DIR [the same options]             (the same)

Nothing is copied from DIR: its `models.py` and `gptmodel.py` (BranchNetwork, GPT) and `main.py`'s `nt_xent` are
imported from DIR at run time. Their `.cuda()` calls are redirected to the benchmark's device while their code runs
(`cuda_calls_to`: `torch.Tensor.cuda` and `torch.nn.Module.cuda` patched, then restored); their files are not
edited. Packages that `main.py` and the modules it imports (`utils.py`, `dataset.py`) import but that the step
never uses (wandb, hydra, omegaconf, tqdm, ... whichever is not installed) are stubbed in sys.modules for that
import only; the output names them. `models.py` and `gptmodel.py` must import without stubs.

Two configurations, each built on both sides:
  paper architecture  ResNet-18 at 128 px, 3 layers x 4 heads x 2048, block 128 (64 pairs), mask_prob 0.9,
                      batch --paper-batch pairs (the paper: 512), --paper-steps timed rounds
  demo size           presets/demo.yaml: our ConvNet at 32 px, 2 x 4 x 256, block 128, batch 128, --steps rounds;
                      the published BranchNetwork gets our ConvNet as its backbone (the factory `convnet_backbone`),
                      so both sides run the same encoder and the ratio measures everything else
Both sides get the same random images and actions (seeded), every step. Ours runs exactly what the trainer runs per
step (train/loop.py): the scheduled-lr write, `step_mask`, `compute_loss` (uint8 views normalised on the device,
forward, InfoNCE + aux), the non-finite check, zero_grad / backward / Adam. Theirs runs main.py's step (lines cited
in `published_step`): the environment zeroing, the view interleaving, BranchNetwork's forward with random_mask=True,
nt_xent, the aux predictor's MSE on the revealed latents with their weight, Adam (GradScaler and fp16 autocast on
CUDA, as main.py). Left out of theirs, as monitoring that our step does not run either: the online linear probes
and their optimiser, compute_similarities, the R^2 meters, evaluate_with_context. Steps alternate, ours then
theirs, after --warmup steps each; the figures are medians. The environment alternates rotation / color from step
to step, the same on both sides. The CUDA path (their code's own .cuda(), fp16 + GradScaler) has not been run yet.

Differences kept on purpose, and why:
- The demo spec's aux predictor is 256 wide with `aux_norm: rms`; the published aug_predictor is hard-coded
  1024 wide on L2-normalised outputs, so our demo side runs `model.aux_hidden=1024, model.aux_norm=l2` (the same work).
- Their loader normalises the views in DataLoader workers; our trainer ships uint8 and normalises inside
  `compute_loss`, so that (small) cost is in our step only.
- On the CPU their `.cuda()` calls are no-ops, so the host-to-device copies of their per-layer masks (a GPU-only
  cost of their code) are not measured here.
- Thread count, cudnn.benchmark and TF32 flags are process-wide and so the same for both sides.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import platform
import statistics
import subprocess
import sys
import time
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from ctxssl_cli.data.pairs import PairBatch
from ctxssl_cli.data.schema import ACTION_DIM
from ctxssl_cli.devices import resolve_device
from ctxssl_cli.model.build import build_model
from ctxssl_cli.model.encoder import ConvNet
from ctxssl_cli.schedule import adam
from ctxssl_cli.spec import RunSpec, load_spec
from ctxssl_cli.train.dist import DistInfo
from ctxssl_cli.train.step import compute_loss, step_mask

MEAN = (0.5016, 0.5037, 0.5060)  # main.py's Normalize for 3DIEBench, used by both sides
STD = (0.1030, 0.0999, 0.0969)
OURS_ENVS, THEIR_ENVS = ("rotation", "color"), ("rot", "color")  # the same environment in a round, both sides
THEIR_MODULES = ("models", "gptmodel", "main", "utils", "dataset")  # top-level names their files import as


# ---- importing the published code ---------------------------------------------------------------------------
class _Stub(types.ModuleType):
    """A module (or any attribute of one) that accepts every use at import time: decorators, calls, attributes."""

    __path__: list[str] = []  # a package, so that `from hydra.core.hydra_config import HydraConfig` resolves

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Stub(f"{self.__name__}.{name}")

    def __call__(self, *args, **kwargs):
        return args[0] if len(args) == 1 and callable(args[0]) and not kwargs else _Stub(self.__name__ + "()")


@dataclass
class Published:
    models: types.ModuleType  # DIR/models.py: BranchNetwork
    gptmodel: types.ModuleType  # DIR/gptmodel.py: GPT, GPTConfig
    nt_xent: Callable  # DIR/main.py's nt_xent
    config: dict  # DIR/config.yml, as hydra would load it
    stubbed: list[str]  # modules stubbed to import main.py
    revision: str


def load_published(root: Path) -> Published:
    """Import DIR's models, gptmodel and main.nt_xent; sys.path, sys.modules and warning filters are restored."""
    import yaml

    missing = [f for f in ("models.py", "gptmodel.py", "main.py", "config.yml") if not (root / f).is_file()]
    if missing:
        raise SystemExit(f"Error: {root} is not a checkout of Sharut/In-Context-Symmetries (no {', '.join(missing)}) "
                         f"— git clone https://github.com/Sharut/In-Context-Symmetries {root}")
    saved_path = list(sys.path)
    shadowed = {n: sys.modules.pop(n) for n in THEIR_MODULES if n in sys.modules}  # never reuse another "utils"
    saved_mods = dict(sys.modules)
    stubbed: list[str] = []
    sys.path.insert(0, str(root))
    try:
        with warnings.catch_warnings():  # main.py calls warnings.filterwarnings('ignore') at import
            models = importlib.import_module("models")  # imports gptmodel; no stubs: the model needs all it imports
            gptmodel = sys.modules["gptmodel"]
            for _ in range(20):  # stub each missing module main.py (or utils/dataset) imports, then retry
                try:
                    main = importlib.import_module("main")
                    break
                except ModuleNotFoundError as e:
                    if not e.name or e.name in THEIR_MODULES or e.name in sys.modules:
                        raise
                    sys.modules[e.name] = _Stub(e.name)
                    stubbed.append(e.name)
            else:
                raise SystemExit(f"Error: main.py in {root} still fails to import after stubbing {stubbed}")
    finally:
        sys.path[:] = saved_path
        for name in set(sys.modules) - set(saved_mods):
            if name in THEIR_MODULES or name in stubbed:
                del sys.modules[name]  # their names (models, utils, ...) and our stubs leave no trace
        sys.modules.update(shadowed)
    config = yaml.safe_load((root / "config.yml").read_text())
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        rev = "not a git checkout"
    return Published(models, gptmodel, main.nt_xent, config, stubbed, rev)


@contextlib.contextmanager
def cuda_calls_to(device: torch.device):
    """While active, `tensor.cuda()` and `module.cuda()` move to `device` (nothing changes on a CUDA device)."""
    if device.type == "cuda":
        yield
        return
    classes = (torch.Tensor, nn.Module)
    saved = [cls.__dict__.get("cuda") for cls in classes]
    torch.Tensor.cuda = lambda self, *a, **k: self.to(device)
    nn.Module.cuda = lambda self, *a, **k: self.to(device)
    try:
        yield
    finally:
        for cls, old in zip(classes, saved):
            if old is None:
                delattr(cls, "cuda")  # the method lives on a base class (torch._C.TensorBase)
            else:
                setattr(cls, "cuda", old)


class _Args(dict):
    """main.py's hydra DictConfig as BranchNetwork and GPTConfig read it: attributes and .items()."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def convnet_backbone(pretrained: bool = False) -> nn.Module:
    """Our ConvNet in the shape BranchNetwork expects of a torchvision backbone: `fc.in_features` is the feature
    width. BranchNetwork replaces `fc` with Identity; ConvNet.forward never calls it, which is the same."""
    assert not pretrained
    net = ConvNet()
    net.fc = nn.Linear(net.out_dim, 1)
    return net


# ---- the two steps --------------------------------------------------------------------------------------------
@dataclass
class Inputs:
    x: torch.Tensor  # (B, 3, R, R) uint8 first views
    y: torch.Tensor  # (B, 3, R, R) uint8 second views
    action: torch.Tensor  # (B, 6) quaternion + 2 hue differences
    latent: torch.Tensor  # (B, 2, 6) absolute latents of both views


def make_inputs(batch: int, res: int, seed: int = 0) -> Inputs:
    g = torch.Generator().manual_seed(seed)
    x, y = (torch.randint(0, 256, (batch, 3, res, res), generator=g, dtype=torch.uint8) for _ in range(2))
    q = F.normalize(torch.randn(batch, 4, generator=g), dim=1)
    action = torch.cat([q, torch.rand(batch, 2, generator=g) - 0.5], dim=1)  # (B, 6)
    lat = torch.cat([F.normalize(torch.randn(batch, 2, 4, generator=g), dim=2),
                     torch.rand(batch, 2, 2, generator=g)], dim=2)  # (B, 2, 6)
    return Inputs(x, y, action, lat)


def our_step(spec: RunSpec, inp: Inputs, device: torch.device, resolution: int | None = None
             ) -> tuple[Callable[[int], float], nn.Module]:
    """What train/loop.py runs for one step, on a batch already on the device; the views are resized to
    `resolution` on the device as training does (default: the inputs' own size, no resize)."""
    torch.manual_seed(0)
    model = build_model(spec, ACTION_DIM).to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    t = spec.train
    lr = t.lr * t.batch_size / 256
    opt = adam(model.parameters(), lr=lr, weight_decay=t.weight_decay)  # as the training loop builds it
    B = inp.x.shape[0]
    batch = PairBatch(x=inp.x, y=inp.y, action=inp.action, target_x=inp.latent[:, 0], target_y=inp.latent[:, 1],
                      label=torch.zeros(B, dtype=torch.long), obj=torch.arange(B),
                      view_x=torch.zeros(B, dtype=torch.long), view_y=torch.ones(B, dtype=torch.long)).to(device)
    single = DistInfo(device=device)
    n_seq = t.batch_size // spec.pairs_per_seq
    res = resolution or inp.x.shape[-1]
    amp = torch.bfloat16 if device.type == "cuda" else None  # train.precision auto

    def step(i: int) -> float:
        for g in opt.param_groups:
            g["lr"] = lr
        mask = step_mask(spec, i, n_seq, single, device)
        out = compute_loss(model, batch, spec, OURS_ENVS[i % 2], mask, single, MEAN, STD, res, amp)
        loss = out.loss.item()  # the loop's non-finite check
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        return loss

    return step, model


def published_step(pub: Published, spec: RunSpec, inp: Inputs, device: torch.device
                   ) -> tuple[Callable[[int], float], nn.Module]:
    """main.py's training step (its lines 230-337, monitoring left out) on their imported BranchNetwork."""
    m, t = spec.model, spec.train
    backbone = convnet_backbone if m.encoder == "convnet" else resnet18  # main.py 174: eval(args.backbone)
    feat = 256 if m.encoder == "convnet" else 512
    args = _Args(pub.config)
    args.update(backbone=m.encoder, n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd, block_size=m.block_size,
                projection_dim=feat, random_mask=True, mask_prob=t.mask_prob, temperature=t.temperature,
                weight_equiv_loss=t.aux_weight, learning_rate=t.lr, weight_decay=t.weight_decay,
                batch_size=t.batch_size, resolution=inp.x.shape[-1],
                augmentation_dim=6)  # main.py sets augmentation_dim = 6 before building the model
    torch.manual_seed(0)
    with cuda_calls_to(device), warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")  # torchvision's deprecation of resnet18(pretrained=False)
        net = pub.models.BranchNetwork(backbone, projection_dim=feat, args=args).to(device)  # main.py 174-178
    lr = t.lr * t.batch_size / 256  # adjust_learning_rate's base_lr (main.py 243-249); the schedule is arithmetic
    opt = torch.optim.Adam(net.parameters(), lr, weight_decay=t.weight_decay)  # main.py 195-199
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")  # main.py's GradScaler(enabled=True)
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    # their loader's ToTensor + Normalize, done once (in their run it is in DataLoader workers, not the step)
    x, xv = ((v.to(device).float() / 255 - mean) / std for v in (inp.x, inp.y))
    r_in, ir = inp.action.to(device), inp.latent.to(device)
    B, C, H, W = x.shape
    nt_xent = pub.nt_xent

    def step(i: int) -> float:
        env = THEIR_ENVS[i % 2]
        with cuda_calls_to(device):
            opt.zero_grad()  # 230
            for g in opt.param_groups:  # 243-249: adjust_learning_rate writes every group's lr
                g["lr"] = lr
            r = r_in.clone()  # a fresh r from the loader each step; main.py zeroes it in place
            r_view2, c_view2 = ir[:, 1, :4], ir[:, 1, 4:]  # 239, 241
            if env == "rot":  # 250-256
                r[:, 4:] = 0
            else:
                r[:, :4] = 0
            xs = torch.stack([x, xv], dim=1).view(B * 2, C, H, W)  # 258-260: x_1, x+_1, x_2, x+_2, ...
            r_view2 = torch.stack([r_view2, r_view2], dim=1).view(-1, r_view2.size(-1))  # 265
            c_view2 = torch.stack([c_view2, c_view2], dim=1).view(-1, c_view2.size(-1))  # 266
            with torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda"):  # 268
                feature, rep, pred, _ = net(xs, r, random_mask=True, mask_prob=t.mask_prob)  # 269
                loss_all = nt_xent(pred, t=t.temperature)  # 270 (+ the online probes' CE at 283, left out)
                pred = F.normalize(pred, dim=-1)  # 286
                equiv_logits = net.aug_predictor(pred)  # 287
                if env == "rot":  # 291-296
                    loss_all = loss_all + t.aux_weight * F.mse_loss(equiv_logits[:, :4], r_view2)
                else:  # 298-303
                    loss_all = loss_all + t.aux_weight * F.mse_loss(equiv_logits[:, 4:], c_view2)
            scaler.scale(loss_all).backward()  # 334
            scaler.step(opt)  # 335
            scaler.update()  # 337
            return loss_all.item()  # main.py's meters read .item() every step

    return step, net


# ---- timing -------------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[int], float], i: int, device: torch.device) -> tuple[float, float]:
    _sync(device)
    t0 = time.perf_counter()
    loss = fn(i)
    _sync(device)
    return time.perf_counter() - t0, loss


def _n(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def compare(name: str, spec: RunSpec, res: int, pub: Published, device: torch.device, steps: int, warmup: int
            ) -> float:
    """Build both sides of one configuration, alternate their steps, print the figures; returns the speedup."""
    m, B = spec.model, spec.train.batch_size
    inp = make_inputs(B, res)
    ours, model = our_step(spec, inp, device)
    theirs, net = published_step(pub, spec, inp, device)
    print(f"== {name}: encoder {m.encoder}, {res} px, transformer {m.n_layer}x{m.n_head}x{m.n_embd}, block "
          f"{m.block_size}, mask_prob {spec.train.mask_prob}, batch {B} pairs, {warmup} warm-up + {steps} timed "
          f"steps per side, alternating")
    t_ours, t_pub = _n(model.transformer), _n(net.predictor)
    print(f"transformer parameters: ours {t_ours:,}, published {t_pub:,}"
          + (" (equal)" if t_ours == t_pub else f" (DIFFERENT by {t_ours - t_pub:+,})"))
    unused = _n(net.rel_aug_predictor) + _n(getattr(net, "equiv_linear", nn.Identity()))
    print(f"encoder: ours {_n(model.encoder):,}, published {_n(net.enc):,}; aux predictor: ours "
          f"{_n(model.aux_predictor):,}, published {_n(net.aug_predictor):,}; published also holds {unused:,} "
          f"parameters the step never uses (rel_aug_predictor, equiv_linear: no gradient, Adam skips them)")
    for i in range(warmup):
        _, l_ours = _timed(ours, i, device)
        _, l_pub = _timed(theirs, i, device)
    if warmup:
        print(f"loss at the last warm-up step (finite on both sides): ours {l_ours:.4f}, published {l_pub:.4f}")
    times: dict[str, list[float]] = {"ours": [], "published": []}
    for i in range(warmup, warmup + steps):
        times["ours"].append(_timed(ours, i, device)[0])
        times["published"].append(_timed(theirs, i, device)[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    for k in ("ours", "published"):
        print(f"{k + ':':<11} {B / med[k]:8.1f} pairs/s, {1000 * med[k]:9.1f} ms/step median "
              f"(min {1000 * min(times[k]):.1f}, max {1000 * max(times[k]):.1f})")
    return med["published"] / med["ours"]  # = ours pairs/s / theirs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reference", type=Path, help="a checkout of https://github.com/Sharut/In-Context-Symmetries")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=10, help="timed rounds (one step each side) at the demo size")
    ap.add_argument("--paper-steps", type=int, help="timed rounds for the paper architecture (default: --steps; "
                                                    "0 skips it)")
    ap.add_argument("--paper-batch", type=int, default=64, help="reduced batch for the paper architecture")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per side before the timed rounds")
    args = ap.parse_args(argv)
    paper_steps = args.steps if args.paper_steps is None else args.paper_steps
    device = resolve_device(args.device)
    if device.type == "cuda":  # as our trainer (TF32) and main.py (cudnn.benchmark); process-wide, so both sides
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    pub = load_published(args.reference.expanduser())
    machine = (torch.cuda.get_device_name() if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"machine: {machine}; torch {torch.__version__}; "
          f"{'bf16 (ours) / fp16 + GradScaler (published)' if device.type == 'cuda' else 'fp32 both'}")
    print(f"published code: {args.reference} ({pub.revision}); imported models.BranchNetwork, gptmodel.GPT, "
          f"main.nt_xent; stubbed for the import only: {', '.join(pub.stubbed) or 'nothing'}")
    if paper_steps:
        paper = load_spec("rotcolor", [f"train.batch_size={args.paper_batch}", "data.workers=0"])
        s = compare("paper architecture (reduced batch)", paper, 128, pub, device, paper_steps, args.warmup)
        print(f"speedup_vs_published_paper_arch: {s:.3f}")
    # the published aug_predictor is 1024 wide on L2-normalised outputs (hard-coded): ours does the same work
    demo = load_spec("demo", ["model.aux_hidden=1024", "model.aux_norm=l2"])
    s = compare("demo size", demo, demo.data.resolution, pub, device, args.steps, args.warmup)
    print(f"speedup_vs_published: {s:.3f}")


if __name__ == "__main__":
    main()
