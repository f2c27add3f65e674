"""Pack a folder of images, one sub-folder per class, into the prepared format (SPEC §3.4).

Source layout: DIR/CLASS/IMAGE, classes = the sub-folder names, sorted (label = position). Images are JPEG, PNG or
WebP, recognised by their content (Pillow), whatever their file names. Hidden files and folders (".DS_Store",
"._x.jpg", ".git") and the OS's Thumbs.db / desktop.ini are skipped; any other file that is not such an image is an
error naming it, as is a file directly in DIR, a folder inside a class folder, and a class folder with no images.

Each image becomes one object (n_views = 1, no stored latents: training views are made later by the parameterised
2D augmentations, action schema `augment2d`), with object id "CLASS/FILENAME":
1. Colour: greyscale and palette images are converted to RGB; 16-bit greyscale is scaled to 8 bits; an image with
   transparency (RGBA, LA, a palette or PNG with a transparent colour) is composited on black, so a transparent
   pixel is black whatever colour the file stores under it. EXIF orientation is not applied (as torchvision's
   ImageFolder loader).
2. Size: the shorter side is resized to N with Pillow's BILINEAR filter (antialiased: its support scales with the
   reduction), the longer side to int(N * long / short), then the centre N x N is cropped -- the same pixels as
   torchvision's Resize(N) + CenterCrop(N) on a PIL image. An image whose shorter side is below N is refused
   (upscaling would invent detail).
3. Split: class-stratified from --seed (data/splits.py `stratified_split`): within each class, a permutation seeded
   by (seed, label) and the first round(val_fraction * n) objects go to val (at least 1 when the class has 2 or
   more images, 0 for a single image, and never the whole class).
Decoding, resizing and encoding run in a spawn process pool (fill_chunks); resumable per chunk; refuses to
overwrite without --overwrite.
"""

from __future__ import annotations

import io
import stat
import time
from pathlib import Path

import numpy as np

from ctxssl_cli.data.inputs import check_object_id, file_kind, read_regular_bytes
from ctxssl_cli.errors import CtxsslError

FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "WEBP": "WebP"}  # Pillow format -> what we call it
OS_FILES = {"Thumbs.db", "desktop.ini"}  # written by file browsers, never images
_HIGH_DEPTH = ("I", "I;16", "I;16L", "I;16B", "I;16N")  # 16-bit greyscale PNGs open as one of these
_ID_FIX = "object ids are stored one per line: rename it so its name has no newline or control character"
_LAYOUT = "expected DIR/CLASS/IMAGE: one sub-folder per class holding its JPEG, PNG or WebP images"


def pack_image_folder(source, out, *, val_fraction=0.2, resolution=64, codec="jpeg", workers=None, seed=0,
                      overwrite=False, progress=True, jpeg_quality=None) -> dict:
    """Pack the class folders of `source` into a prepared dataset at `out`; returns a summary (counts, size, ...)."""
    from ctxssl_cli.data.outdir import output_lock

    t0 = time.perf_counter()
    source = Path(source).expanduser()
    if not 0.0 < float(val_fraction) < 1.0:
        raise CtxsslError(f"--val-fraction {val_fraction} is outside (0, 1)", "use e.g. --val-fraction 0.2")
    if int(resolution) < 8:
        raise CtxsslError(f"--resolution {resolution} is too small", "use e.g. --resolution 64")
    classes, files = scan(source, exclude=Path(out))  # the layout is checked before --out is touched
    with output_lock(out):
        summary = _write(Path(out), source, classes, files, float(val_fraction), int(resolution), codec, workers,
                         int(seed), overwrite, progress, jpeg_quality)
    seconds = time.perf_counter() - t0
    n = sum(summary["counts"].values())
    summary.update(seconds=round(seconds, 1), images_per_s=round(n / max(seconds, 1e-9), 1))
    return summary


def _write(out, source, classes, files, val_fraction, resolution, codec, workers, seed, overwrite, progress,
           jpeg_quality) -> dict:
    from ctxssl_cli.data import prepared
    from ctxssl_cli.data.prepared_writer import PreparedWriter, fill_chunks, require_train_and_val
    from ctxssl_cli.data.schema import AUGMENT2D
    from ctxssl_cli.data.splits import stratified_split

    src = {"kind": "image-folder", "name": source.resolve().name}
    settings = {"source": src, "val_fraction": val_fraction, "seed": seed}
    with PreparedWriter(out, dataset="images", resolution=resolution, codec=codec, settings=settings,
                        overwrite=overwrite, jpeg_quality=jpeg_quality or prepared.JPEG_QUALITY) as writer:
        ids = [key for key, _ in files]
        label_of = {c: i for i, c in enumerate(classes)}
        labels = np.array([label_of[key.split("/")[0]] for key in ids], np.int64)
        tr, va = stratified_split(ids, labels, val_fraction=val_fraction, seed=seed)
        splits = {"train": ([ids[i] for i in tr], labels[tr]), "val": ([ids[i] for i in va], labels[va])}
        require_train_and_val(splits, "give some class folder at least 2 images (a class with one image goes "
                              "to train only)")
        writer.plan(n_views=1, classes=classes, splits=splits, split_source=f"stratified-seed-{seed}",
                    source=dict(src, images_found=len(ids), val_fraction=val_fraction,
                                resize="shorter side to N (Pillow BILINEAR, antialiased), centre crop N x N",
                                alpha="composited on black"),
                    action_schema=AUGMENT2D.to_manifest())
        where = dict(files)
        quality = writer.jpeg_quality

        def task(split, i):
            key = splits[split][0][i]
            return key, where[key], resolution, codec, quality

        fill_chunks(writer, task, process_image, workers=workers, progress=progress,
                    label=f"packing images ({codec}, {resolution} px)")
        return writer.finalize()


# -- 1. scan ---------------------------------------------------------------------------------------------------
def _skipped(p: Path) -> bool:
    return p.name.startswith(".") or p.name in OS_FILES


def scan(root: Path, exclude: Path | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """(classes, [(object id "CLASS/FILENAME", path), ...]) in class then file-name order; nothing is decoded."""
    try:
        mode = root.stat().st_mode
    except FileNotFoundError:
        raise CtxsslError(f"source {root} does not exist", f"pass a folder to --source ({_LAYOUT})") from None
    if not stat.S_ISDIR(mode):
        raise CtxsslError(f"source {root} is {'a file' if stat.S_ISREG(mode) else file_kind(mode)}, not a folder",
                          f"pass a folder to --source ({_LAYOUT})")
    skip = exclude.resolve() if exclude is not None else None
    class_dirs = []
    for entry in sorted(root.iterdir()):
        if _skipped(entry) or entry.resolve() == skip:
            continue  # hidden, or --out inside --source
        if not entry.is_dir():
            raise CtxsslError(f"{entry} is a file directly in the source folder, outside any class folder",
                              f"move it into its class folder or remove it ({_LAYOUT})")
        check_object_id(entry.name, f"class folder {entry}", _ID_FIX)
        class_dirs.append(entry)
    if not class_dirs:
        raise CtxsslError(f"no class folders in {root}", _LAYOUT)
    files = []
    for d in class_dirs:
        found = []
        for f in sorted(d.iterdir()):
            if _skipped(f):
                continue
            try:
                fmode = f.stat().st_mode
            except FileNotFoundError:
                raise CtxsslError(f"{f} is a broken link", "replace it by the real file or remove it") from None
            if stat.S_ISDIR(fmode):
                raise CtxsslError(f"class folder {d.name} holds a folder, {f.name}",
                                  f"images must sit directly in their class folder ({_LAYOUT}): move its images "
                                  "up, or make it a class folder of its own")
            if not stat.S_ISREG(fmode):
                raise CtxsslError(f"{f} is {file_kind(fmode)}, not a regular file", "remove it")
            check_object_id(f"{d.name}/{f.name}", f"file {f}", _ID_FIX)
            found.append((f"{d.name}/{f.name}", str(f)))
        if not found:
            raise CtxsslError(f"class folder {d} holds no images",
                              "add its images (JPEG, PNG or WebP) or remove the empty folder")
        files += found
    return [d.name for d in class_dirs], files


# -- 2. one image, in a worker ---------------------------------------------------------------------------------
def process_image(task):
    """Worker: (key, path, N, codec, quality) -> (payload, latents (1, 0) float32, hist (3, 256))."""
    from ctxssl_cli.data.prepared import encode_views

    key, path, res, codec, quality = task
    im = centre_square(to_rgb(_open(path)), res, path)
    payload, hist = encode_views(np.asarray(im)[None], codec, quality)  # (1, N, N, 3) in
    return payload, np.zeros((1, 0), np.float32), hist


def _open(path: str):
    from PIL import Image, UnidentifiedImageError

    data = read_regular_bytes(path, "image", "replace it by the real file or remove it")
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise CtxsslError(f"{path} is not an image (JPEG, PNG or WebP)", "remove it from the class folder") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise CtxsslError(f"{path} cannot be read as an image ({e})", "replace or remove it") from None
    if im.format not in FORMATS:
        raise CtxsslError(f"{path} is a {im.format} image; ctxssl reads JPEG, PNG and WebP",
                          "convert it (e.g. to PNG) or remove it")
    try:
        im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise CtxsslError(f"{path} is a truncated or corrupt {FORMATS[im.format]} image ({e})",
                          "replace or remove it") from None
    return im


def to_rgb(im):
    """An RGB image: greyscale and palette converted, 16-bit greyscale scaled to 8 bits, transparency composited
    on black."""
    from PIL import Image

    if im.mode in _HIGH_DEPTH:
        grey = (np.asarray(im, np.int64) >> 8).clip(0, 255).astype(np.uint8)  # 16-bit values -> 8-bit
        return Image.fromarray(grey, "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def centre_square(im, n: int, path: str):
    """Shorter side resized to n (BILINEAR, antialiased), then the centre n x n (torchvision Resize(n) +
    CenterCrop(n)); a shorter side below n is an error naming the file and its size."""
    from PIL import Image

    w, h = im.size
    short, long = min(w, h), max(w, h)
    if short < n:
        raise CtxsslError(f"image {path} is {w}x{h}: its shorter side is smaller than --resolution {n}",
                          f"pass a smaller --resolution (at most {short}), or remove the image")
    if short != n:
        new_long = int(n * long / short)
        im = im.resize((n, new_long) if w <= h else (new_long, n), Image.BILINEAR)
        w, h = im.size
    top, left = int(round((h - n) / 2.0)), int(round((w - n) / 2.0))
    return im.crop((left, top, left + n, top + n))
