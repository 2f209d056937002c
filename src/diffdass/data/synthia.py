"""SYNTHIA-RAND-CITYSCAPES (Ros et al. 2016): 9,400 synthetic frames.

Layout of the original download (``ROOT`` below)::

    ROOT/RGB/0000000.png ... 0009399.png          # RGB, 1280x760
    ROOT/GT/LABELS/0000000.png ... 0009399.png    # 16-bit PNG, 3 (or 4) channels

The labels are 16-bit multi-channel PNGs, which PIL cannot read faithfully: they are read
with ``cv2.imread(path, cv2.IMREAD_UNCHANGED)``, which returns the channels in OpenCV's
BGR(A) order. The class id is in the image's *red* channel, ``[:, :, -1]`` of a 3-channel
(BGR) array, ``[:, :, 2]`` of a 4-channel (BGRA) one (``[:, :, -1]`` there would be alpha).
The other channels (instance ids) are ignored. Ids are mapped to train ids with
:data:`diffdass.data.labels.SYNTHIA_ID_TO_TRAINID`; every other id becomes 255 (ignore).
SYNTHIA has no terrain, truck or train, so it is scored on 16 (or 13) classes; see
:mod:`diffdass.evaluation.metrics`. A label that is not a 16-bit 3/4-channel PNG is an error
naming the file.

SYNTHIA has no official split: every frame goes to the single split ``train``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from diffdass.data.folder import DataError
from diffdass.data.labels import SYNTHIA_ID_TO_TRAINID, map_labels
from diffdass.data.prepare import RawDataset, RawSample

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_raw_label(path: str | Path) -> np.ndarray:
    """SYNTHIA class ids (uint16, H x W): the red channel of the 16-bit label PNG."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: label file not found")
    try:
        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise DataError(f"{path}: unreadable label ({exc})") from exc
    if arr is None:
        raise DataError(f"{path}: unreadable label (OpenCV could not decode it)")
    if arr.dtype != np.uint16:
        raise DataError(
            f"{path}: SYNTHIA labels are 16-bit PNGs, got {arr.dtype} "
            "(an 8-bit colour/converted label?)"
        )
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise DataError(
            f"{path}: SYNTHIA labels have 3 or 4 channels (class id in red), got shape {arr.shape}"
        )
    return np.ascontiguousarray(arr[:, :, 2])  # BGR[A]: index 2 is red (== -1 for BGR)


def to_train_ids(raw: np.ndarray) -> np.ndarray:
    """SYNTHIA class ids -> train ids (uint8, unmapped ids -> 255)."""
    return map_labels(raw, SYNTHIA_ID_TO_TRAINID)


class SynthiaReader(RawDataset):
    name = "synthia"
    splits = ("train",)
    default_splits = ("train",)

    def samples(self, split: str) -> list[RawSample]:
        self.check_split(split)
        img_dir, lbl_dir = self.root / "RGB", self.root / "GT" / "LABELS"
        for d in (img_dir, lbl_dir):
            if not d.is_dir():
                raise DataError(
                    f"{d}: no such directory (SYNTHIA layout: ROOT/RGB, ROOT/GT/LABELS)"
                )
        images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"{img_dir}: contains no images")
        return [RawSample(p.stem, p, lbl_dir / f"{p.stem}.png") for p in images]

    def read_raw_label(self, path: str | Path) -> np.ndarray:
        return read_raw_label(path)

    def to_train_ids(self, raw: np.ndarray) -> np.ndarray:
        return to_train_ids(raw)
