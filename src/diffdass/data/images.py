"""Image sets from folders: the images of a folder (or a list of paths) as batches or one
tensor in [-1, 1], optionally resized (what the distances of ``evaluation.distance`` and the
studies compare)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from diffdass.data.folder import IMAGE_SUFFIXES, DataError, image_to_tensor, read_image


def list_image_files(folder_or_paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """The ``.png/.jpg/.jpeg`` files of a folder (sorted, not recursive) or the given paths."""
    if isinstance(folder_or_paths, (str, Path)):
        folder = Path(folder_or_paths)
        if not folder.is_dir():
            raise DataError(f"{folder}: no such directory")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            hint = " (images live in <split>/images)" if (folder / "images").is_dir() else ""
            raise DataError(f"{folder}: contains no .png/.jpg images{hint}")
        return files
    files = [Path(p) for p in folder_or_paths]
    if not files:
        raise DataError("the list of image paths is empty")
    return files


def _read(path: Path, size: tuple[int, int] | None) -> Tensor:
    img = read_image(path)
    if size is not None and img.shape[:2] != tuple(size):
        # PIL's bilinear filter widens its support when downscaling (antialiased)
        img = np.array(Image.fromarray(img).resize((size[1], size[0]), Image.BILINEAR))
    return image_to_tensor(img)


def iter_image_batches(
    folder_or_paths: str | Path | Sequence[str | Path],
    size: tuple[int, int] | None = None,
    limit: int | None = None,
    batch_size: int = 32,
) -> Iterator[Tensor]:
    """Batches ``(B, 3, H, W)`` in ``[-1, 1]`` of the images of a folder or a path list.

    ``size=(H, W)`` resizes (bilinear, antialiased); ``limit`` keeps the first images in
    sorted order. Images of one batch must share a size (else pass ``size``). Lazy: usable as
    an image set of :func:`image_set_distance` without loading everything.
    """
    files = list_image_files(folder_or_paths)
    if limit is not None:
        files = files[: max(0, int(limit))]
    for i in range(0, len(files), batch_size):
        chunk = files[i : i + batch_size]
        ts = [_read(p, size) for p in chunk]
        for p, t in zip(chunk, ts, strict=True):
            if t.shape != ts[0].shape:
                raise DataError(
                    f"{p}: size {t.shape[2]}x{t.shape[1]} differs from {chunk[0]} "
                    f"({ts[0].shape[2]}x{ts[0].shape[1]}); pass size=(H, W) to resize"
                )
        yield torch.stack(ts)


def load_images(
    folder_or_paths: str | Path | Sequence[str | Path],
    size: tuple[int, int] | None = None,
    limit: int | None = None,
) -> Tensor:
    """All images of a folder (or a path list) as one ``(N, 3, H, W)`` float tensor in [-1, 1].

    See :func:`iter_image_batches` for ``size`` and ``limit``; all images must share a size
    unless ``size`` is given. An empty selection is an error.
    """
    files = list_image_files(folder_or_paths)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    batches = list(iter_image_batches(files, size, limit, batch_size=len(files)))
    return batches[0]
