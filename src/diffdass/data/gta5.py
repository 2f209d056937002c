"""GTA5 ("Playing for Data", Richter et al. 2016): 24,966 synthetic frames.

Layout of the original download (``ROOT`` below)::

    ROOT/images/00001.png ... 24966.png    # RGB, mostly 1914x1052
    ROOT/labels/00001.png ... 24966.png    # 8-bit palette ("P" mode) PNG

The *palette index* of a label pixel is its Cityscapes label id (the palette only colours
it): the label is read as raw indices, never converted to RGB, and mapped to the 19 train
ids with :data:`diffdass.data.labels.GTA5_ID_TO_TRAINID`; every other id (0 unlabeled,
1 ego vehicle, 34 ...) becomes 255 (ignore). A label that is not an 8-bit "P"/"L" PNG is an
error naming the file.

GTA5 has no official split: every frame goes to the single split ``train``.

Known issue: a few frames have a label whose size differs from the image. ``prepare``
stops on them with a message naming both files; ``on_mismatch="resize"`` resizes such a
label to the image (nearest neighbour) and ``on_error="skip"`` leaves the frame out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffdass.data.folder import DataError
from diffdass.data.labels import GTA5_ID_TO_TRAINID, map_labels
from diffdass.data.prepare import RawDataset, RawSample, read_8bit_label

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_raw_label(path: str | Path) -> np.ndarray:
    """Cityscapes label ids (uint8, H x W) of a GTA5 label PNG: its raw palette indices."""
    return read_8bit_label(path)


def to_train_ids(raw: np.ndarray) -> np.ndarray:
    """GTA5 (= Cityscapes) label ids -> train ids (uint8, unmapped ids -> 255)."""
    return map_labels(raw, GTA5_ID_TO_TRAINID)


class GTA5Reader(RawDataset):
    name = "gta5"
    splits = ("train",)
    default_splits = ("train",)

    def samples(self, split: str) -> list[RawSample]:
        self.check_split(split)
        img_dir, lbl_dir = self.root / "images", self.root / "labels"
        for d in (img_dir, lbl_dir):
            if not d.is_dir():
                raise DataError(f"{d}: no such directory (GTA5 layout: ROOT/images, ROOT/labels)")
        images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"{img_dir}: contains no images")
        return [RawSample(p.stem, p, lbl_dir / f"{p.stem}.png") for p in images]

    def read_raw_label(self, path: str | Path) -> np.ndarray:
        return read_raw_label(path)

    def to_train_ids(self, raw: np.ndarray) -> np.ndarray:
        return to_train_ids(raw)
