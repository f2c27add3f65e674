"""Write rendered objects in 3DIEBench's raw on-disk layout (SPEC §3.2).

Layout: ROOT/SYNSET/OBJ_ID/image_{i}.jpg and latent_{i}.npy for i = 0..V-1, as in 3DIEBench:
- image_{i}.jpg: RGB JPEG, quality 95, no chroma subsampling (4:4:4, so small coloured parts keep their
  colour), written by Pillow;
- latent_{i}.npy: `np.save` of a float32 array of the view's 7 latent values (rot x, y, z, floor hue, light
  theta, light phi, light hue); loads with allow_pickle=False. (3DIEBench's readers cast to float32.)

Each object is written atomically: into a hidden sibling temp folder `.OBJ_ID.tmp-PID`, renamed to OBJ_ID at
the end, so a reader never sees a half-written object (an interrupted run leaves only a hidden temp folder,
which readers skip because its name starts with a dot, and which the next write of that object removes).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from ctxssl_cli.data.rotations import LATENT_DIM

JPEG_QUALITY = 95


def synset_name(class_idx: int) -> str:
    """A ShapeNet-synset-like folder name per class: 8 digits, e.g. class 3 -> '90000003'."""
    if int(class_idx) != class_idx or class_idx < 0 or class_idx >= 10_000_000:
        raise ValueError(f"class index must be an integer in [0, 1e7), got {class_idx!r}")
    return "%08d" % (90_000_000 + int(class_idx))


def _check_name(name: str, what: str) -> None:
    if not name or name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"{what} {name!r} must be a plain folder name (no separators, not hidden)")


def write_raw_object(root: Path, synset: str, obj_id: str, images: np.ndarray, latents: np.ndarray) -> None:
    """Write one object's V views: root/synset/obj_id/image_{i}.jpg + latent_{i}.npy, atomically."""
    _check_name(synset, "synset")
    _check_name(obj_id, "object id")
    images = np.asarray(images)
    latents = np.asarray(latents)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be (V, H, W, 3) uint8, got {images.shape} {images.dtype}")
    if latents.shape != (len(images), LATENT_DIM):
        raise ValueError(f"latents must be ({len(images)}, {LATENT_DIM}), got {latents.shape}")
    parent = Path(root) / synset
    parent.mkdir(parents=True, exist_ok=True)
    final = parent / obj_id
    tmp = parent / f".{obj_id}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        for i in range(len(images)):
            Image.fromarray(np.ascontiguousarray(images[i])).save(
                tmp / f"image_{i}.jpg", format="JPEG", quality=JPEG_QUALITY, subsampling=0
            )
            np.save(tmp / f"latent_{i}.npy", latents[i].astype(np.float32), allow_pickle=False)
        if final.exists():  # replace an older copy: move it aside first, so the swap is one rename
            old = parent / f".{obj_id}.old-{os.getpid()}"
            if old.exists():
                shutil.rmtree(old)
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
