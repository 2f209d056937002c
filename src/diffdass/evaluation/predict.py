"""Predict label maps for images without labels: ``diffdass predict``.

The input is a folder (searched recursively) or a glob pattern; every image gets a label PNG
(train ids, ``uint8``, one channel) and a colour overlay (the class palette blended on the
image), written under the output folder with the input's relative path::

    OUT/labels/<relative path>.png      train ids 0..C-1
    OUT/overlays/<relative path>.png    palette colours blended on the image

The model may see a resized image (``input_size``); its logits are upsampled to the image's
own size before the arg-max, as :func:`~diffdass.evaluation.evaluate.evaluate` does, so the
outputs always have the size of their image. Outputs are written atomically; an image whose
two outputs exist is skipped unless ``overwrite``.
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import torch

from diffdass.data.folder import IMAGE_SUFFIXES, DataError, image_to_tensor, read_image
from diffdass.data.labels import colorize, default_palette
from diffdass.evaluation.evaluate import predict as predict_logits
from diffdass.utils.io import save_image
from diffdass.utils.progress import Progress

_MAGIC = set("*?[")


def find_images(source: str | Path, exclude: str | Path | None = None) -> list[tuple[Path, Path]]:
    """``(image file, output name relative to OUT/labels)`` of every image of ``source``.

    ``source``: a folder (every ``.png/.jpg/.jpeg`` below it, hidden files left out) or a glob
    pattern (``**`` recursive; the names are taken relative to the pattern's fixed leading
    folder) or one image file. Files under ``exclude`` (the output folder) are left out.
    """
    text = str(source)
    path = Path(text)
    if not _MAGIC & set(text):
        if path.is_dir():
            files, base = [p for p in path.rglob("*") if p.is_file()], path
        elif path.is_file():
            files, base = [path], path.parent
        else:
            raise DataError(f"{text}: no such folder or image")
    else:
        parts = path.parts
        fixed = next(i for i, part in enumerate(parts) if _MAGIC & set(part))
        base = Path(*parts[:fixed]) if fixed else Path(".")
        files = [Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file()]
    skip = Path(exclude).resolve() if exclude is not None else None
    out: dict[Path, Path] = {}
    for f in sorted(files):
        rel = f.relative_to(base) if f.is_relative_to(base) else Path(f.name)
        if f.suffix.lower() not in IMAGE_SUFFIXES or any(p.startswith(".") for p in rel.parts):
            continue
        if skip is not None and f.resolve().is_relative_to(skip):
            continue
        name = rel.with_suffix(".png")
        if name in out:
            raise DataError(f"{f}: has the same output name as {out[name]} ({name}); rename one")
        out[name] = f
    if not out:
        raise DataError(f"{text}: matches no .png/.jpg/.jpeg image")
    return [(f, name) for name, f in out.items()]


def overlay(image: np.ndarray, label: np.ndarray, palette, alpha: float = 0.5) -> np.ndarray:
    """The palette colour of each pixel's class blended on ``image``: ``alpha * colour +
    (1 - alpha) * image`` (uint8, rounded)."""
    colour = colorize(label, palette).astype(np.float32)
    blend = alpha * colour + (1.0 - alpha) * image.astype(np.float32)
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


def predict_images(
    model: torch.nn.Module,
    source: str | Path,
    out: str | Path,
    device: torch.device | str = "cpu",
    input_size: tuple[int, int] | None = None,
    batch_size: int = 1,
    alpha: float = 0.5,
    overwrite: bool = False,
    progress: bool = True,
    palette=None,
    amp: bool | None = None,
) -> dict:
    """Write the label map and overlay of every image of ``source`` under ``out`` (see the
    module); returns ``{"images", "written", "skipped", "labels", "overlays"}``.

    Images of one batch share a size: with ``input_size`` all do; without it, a batch ends
    where the size changes. ``palette``: the class colours (default: the Cityscapes palette,
    then fixed random colours beyond 19 classes)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay alpha must lie in [0, 1], got {alpha}")
    out = Path(out)
    items = find_images(source, exclude=out)
    device = torch.device(device)
    if amp is None:
        amp = device.type == "cuda"
    num_classes = getattr(model, "num_classes", None)
    if palette is None:
        palette = default_palette(num_classes or 19)
    labels, overlays = out / "labels", out / "overlays"
    todo = [
        (f, name)
        for f, name in items
        if overwrite or not ((labels / name).is_file() and (overlays / name).is_file())
    ]
    model = model.to(device).eval()
    bar = Progress(len(todo), 0, "predict", enabled=progress, unit="image")
    batch: list[tuple[Path, np.ndarray]] = []

    def flush():
        x = torch.stack([image_to_tensor(img) for _, img in batch]).to(device)
        logits = predict_logits(model, x, x.shape[-2:], input_size, amp)
        preds = logits.argmax(1).to(torch.uint8).cpu().numpy()
        for (name, img), pred in zip(batch, preds, strict=True):
            save_image(labels / name, pred)
            save_image(overlays / name, overlay(img, pred, palette, alpha))
        bar.update(len(batch))
        batch.clear()

    for f, name in todo:
        img = read_image(f)
        if batch and (len(batch) == batch_size or batch[0][1].shape != img.shape):
            flush()
        batch.append((name, img))
    if batch:
        flush()
    bar.close()
    return {
        "images": len(items),
        "written": len(todo),
        "skipped": len(items) - len(todo),
        "labels": str(labels),
        "overlays": str(overlays),
    }
