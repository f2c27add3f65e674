"""`ctxssl prepare synthetic|3diebench|cifar10|images`: make a prepared dataset (SPEC §3)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ctxssl_cli import paths
from ctxssl_cli.cli.common import out
from ctxssl_cli.errors import CtxsslError

app = typer.Typer(help="Prepare a dataset: render the built-in benchmark, or pack a local copy of 3DIEBench, "
                       "CIFAR-10 or a folder of images.",
                  no_args_is_help=True)

GET_3DIEBENCH = (
    "3DIEBench (about 17 GB, 52,472 ShapeNet objects x 50 views) is published by the SIE authors "
    "(Garrido et al., 'Self-supervised learning of Split Invariant Equivariant representations', ICML 2023): "
    "follow the dataset link in the README of https://github.com/facebookresearch/SIE, download 3DIEBench.tar.gz "
    "(and optionally data/train_images.npy, val_images.npy, train_labels.npy, val_labels.npy from that repository "
    "for the published split), then run: ctxssl prepare 3diebench --source /path/to/3DIEBench.tar.gz "
    "(or the extracted folder)"
)

GET_CIFAR10 = (
    "download the binary version of CIFAR-10, cifar-10-binary.tar.gz (about 162 MB), from "
    "https://www.cs.toronto.edu/~kriz/cifar.html, then run: ctxssl prepare cifar10 --source "
    "/path/to/cifar-10-binary.tar.gz (or the extracted cifar-10-batches-bin folder)"
)


def _check_codec(codec: str) -> None:
    if codec not in ("raw", "jpeg"):
        raise CtxsslError(f"unknown --codec '{codec}'", "use --codec jpeg or --codec raw")


def _summary(info: dict) -> None:
    for key, value in info.items():
        out.print(f"{key}: {value}")


def _same_synthetic(m: dict | None, classes: int, objects_per_class: int, views: int, resolution: int,
                    seed: int) -> bool:
    """True if `m`, a synthetic dataset's manifest (`synthetic_manifest`), records exactly these settings."""
    if m is None:
        return False
    src = m.get("source") or {}
    return (m.get("resolution") == resolution and src.get("seed") == seed and src.get("classes") == classes
            and src.get("objects_per_class") == objects_per_class and src.get("views") == views)


@app.command("synthetic")
def synthetic(
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder. Default: $CTXSSL_HOME/datasets/synthetic.")] = None,
    classes: Annotated[int, typer.Option(help="Number of shape families (classes).")] = 10,
    objects_per_class: Annotated[int, typer.Option(help="Objects per class.")] = 50,
    views: Annotated[int, typer.Option(help="Rendered views per object.")] = 50,
    resolution: Annotated[int, typer.Option(help="Image size in pixels.")] = 64,
    seed: Annotated[int, typer.Option(help="Everything rendered is a function of this seed.")] = 0,
    layout: Annotated[str, typer.Option(help="prepared (the fast format), images (one view per object as a plain image dataset for the 2D environments; --views is ignored) or 3diebench (the raw on-disk layout).")] = "prepared",
    workers: Annotated[Optional[int], typer.Option(help="Worker processes. Default: all cores.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing dataset at --out.")] = False,
) -> None:
    """Render the built-in synthetic 3D benchmark (no download): objects in shape families, 3DIEBench's latents."""
    from ctxssl_cli.data.synthetic import check_renderer, prepare_synthetic, synthetic_manifest

    if layout not in ("prepared", "images", "3diebench"):
        raise CtxsslError(f"unknown --layout '{layout}'", "use --layout prepared, images or 3diebench")
    if layout == "images":
        views = 2  # ignored: one view per object (checked below as if 2)
    for name, v, lo in (("--classes", classes, 1), ("--objects-per-class", objects_per_class, 2),
                        ("--views", views, 2), ("--resolution", resolution, 8)):
        if v < lo:
            raise CtxsslError(f"{name} must be >= {lo}, got {v}", f"pass {name} {max(lo, 2)} or more")
    target = out_dir or (paths.default_synthetic_images_dir() if layout == "images" else paths.default_synthetic_dir())
    if layout == "prepared" and not overwrite:
        existing = synthetic_manifest(target)
        check_renderer(target, existing)
        if _same_synthetic(existing, classes, objects_per_class, views, resolution, seed):
            out.print(f"already prepared with these settings: {target} (pass --overwrite to render it again)")
            return
    info = prepare_synthetic(target, classes=classes, objects_per_class=objects_per_class, views=views,
                             resolution=resolution, seed=seed, layout=layout, workers=workers,
                             overwrite=overwrite, progress=True)
    _summary(info)


@app.command("3diebench")
def diebench(
    source: Annotated[Optional[Path], typer.Option("--source", "-s", help="Extracted 3DIEBench folder or 3DIEBench.tar.gz.")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder. Default: $CTXSSL_HOME/datasets/3diebench-<resolution>.")] = None,
    resolution: Annotated[int, typer.Option(help="Stored image size (the paper trains at 128).")] = 128,
    codec: Annotated[str, typer.Option(help="jpeg (compact: about 7 GB for full 3DIEBench at 128 px, estimated) or raw (uint8, memory-mapped, fastest: 129 GB at 128 px).")] = "jpeg",
    train_list: Annotated[Optional[Path], typer.Option(help="Published split: train_images.npy (or a text list).")] = None,
    val_list: Annotated[Optional[Path], typer.Option(help="Published split: val_images.npy (or a text list).")] = None,
    train_labels: Annotated[Optional[Path], typer.Option(help="Published split: train_labels.npy.")] = None,
    val_labels: Annotated[Optional[Path], typer.Option(help="Published split: val_labels.npy.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Worker processes. Default: all cores.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing dataset at --out.")] = False,
) -> None:
    """Pack a local copy of 3DIEBench (folder or .tar.gz, read as a stream) into the prepared format."""
    from ctxssl_cli.data.pack3diebench import pack_3diebench

    if source is None:
        raise CtxsslError("no --source given: ctxssl cannot download 3DIEBench", GET_3DIEBENCH)
    if codec not in ("raw", "jpeg"):
        raise CtxsslError(f"unknown --codec '{codec}'", "use --codec jpeg or --codec raw")
    if resolution < 8:
        raise CtxsslError(f"--resolution must be >= 8, got {resolution}", "e.g. --resolution 128")
    target = out_dir or paths.home() / "datasets" / f"3diebench-{resolution}"
    info = pack_3diebench(source, target, resolution=resolution, codec=codec, train_list=train_list,
                          val_list=val_list, train_labels=train_labels, val_labels=val_labels, workers=workers,
                          overwrite=overwrite, progress=True)
    _summary(info)


@app.command("cifar10")
def cifar10(
    source: Annotated[Optional[Path], typer.Option("--source", "-s", help="cifar-10-binary.tar.gz or its extracted cifar-10-batches-bin folder.")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder. Default: $CTXSSL_HOME/datasets/cifar10.")] = None,
    codec: Annotated[str, typer.Option(help="raw (uint8, exact pixels, 184 MB in all: the default) or jpeg (compact, lossy).")] = "raw",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing dataset at --out.")] = False,
) -> None:
    """Pack CIFAR-10 (binary version; test batch -> val; 32 px) for the 2D augmentation environments."""
    from ctxssl_cli.data.cifar10 import pack_cifar10

    if source is None:
        raise CtxsslError("no --source given: ctxssl cannot download CIFAR-10", GET_CIFAR10)
    _check_codec(codec)
    target = out_dir or paths.home() / "datasets" / "cifar10"
    _summary(pack_cifar10(source, target, codec=codec, overwrite=overwrite, progress=True))


@app.command("images")
def images(
    source: Annotated[Optional[Path], typer.Option("--source", "-s", help="Folder with one sub-folder of images (JPEG, PNG, WebP) per class.")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder. Default: $CTXSSL_HOME/datasets/images-<source name>-<resolution>.")] = None,
    val_fraction: Annotated[float, typer.Option(help="Share of each class that goes to the val split, in (0, 1).")] = 0.2,
    resolution: Annotated[int, typer.Option(help="Stored image size: shorter side resized to it, then centre-cropped square.")] = 64,
    codec: Annotated[str, typer.Option(help="jpeg (compact: the size of a folder is unknown in advance) or raw (uint8, exact, memory-mapped: 12 KB per image at 64 px).")] = "jpeg",
    workers: Annotated[Optional[int], typer.Option(help="Worker processes. Default: all cores.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the class-stratified train/val split.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing dataset at --out.")] = False,
) -> None:
    """Pack a folder of images (one sub-folder per class) for the 2D augmentation environments."""
    from ctxssl_cli.data.image_folder import pack_image_folder

    if source is None:
        raise CtxsslError("no --source given", "pass a folder with one sub-folder of images per class: "
                          "ctxssl prepare images --source DIR")
    _check_codec(codec)
    if resolution < 8:
        raise CtxsslError(f"--resolution must be >= 8, got {resolution}", "e.g. --resolution 64")
    if not 0.0 < val_fraction < 1.0:
        raise CtxsslError(f"--val-fraction {val_fraction} is outside (0, 1)", "use e.g. --val-fraction 0.2")
    target = out_dir or paths.home() / "datasets" / f"images-{source.expanduser().resolve().name}-{resolution}"
    _summary(pack_image_folder(source, target, val_fraction=val_fraction, resolution=resolution, codec=codec,
                               workers=workers, seed=seed, overwrite=overwrite, progress=True))
