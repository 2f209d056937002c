"""Cityscapes (Cordts et al. 2016): the target domain; 2,975 train / 500 val / 1,525 test.

Layout of the original download (``leftImg8bit_trainvaltest.zip`` and
``gtFine_trainvaltest.zip`` unpacked into ``ROOT``)::

    ROOT/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    ROOT/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
    ROOT/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png  # optional

The stem of a sample is ``<city>_<seq>_<frame>``. Its label is ``*_gtFine_labelTrainIds.png``
when present (already train ids, made by cityscapesscripts' ``createTrainIdLabelImgs``;
checked to hold only 0..18 and 255), otherwise ``*_gtFine_labelIds.png`` (Cityscapes label
ids, mapped with :data:`diffdass.data.labels.CITYSCAPES_ID_TO_TRAINID`, other ids -> 255).
Both are 8-bit single-channel PNGs; anything else is an error naming the file.

Splits: ``val`` needs its labels (it is the evaluation set). ``train`` may be prepared
image-only (the target training split of unsupervised adaptation needs no labels); labels
found there are converted as well, for an oracle (supervised-on-target) reference only:
the adaptation methods never read target ``train`` labels. ``test`` (not prepared unless
asked for) is always image-only: its public labels are placeholders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffdass.data.folder import DataError
from diffdass.data.labels import CITYSCAPES_ID_TO_TRAINID, IGNORE_INDEX, map_labels
from diffdass.data.prepare import RawDataset, RawSample, read_8bit_label

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"
NUM_CLASSES = len(set(CITYSCAPES_ID_TO_TRAINID.values()))


def read_raw_label(path: str | Path) -> np.ndarray:
    """Raw values (uint8, H x W) of a ``*_labelIds.png`` or ``*_labelTrainIds.png``."""
    return read_8bit_label(path)


def to_train_ids(
    raw: np.ndarray, kind: str = "labelIds", path: str | Path | None = None
) -> np.ndarray:
    """``kind="labelIds"``: map label ids to train ids (unmapped -> 255).
    ``kind="labelTrainIds"``: check the values are train ids (0..18 or 255) and return them."""
    if kind == "labelIds":
        return map_labels(raw, CITYSCAPES_ID_TO_TRAINID)
    if kind != "labelTrainIds":
        raise ValueError(f"kind must be 'labelIds' or 'labelTrainIds', got {kind!r}")
    raw = np.asarray(raw)
    bad = np.unique(raw[(raw >= NUM_CLASSES) & (raw != IGNORE_INDEX)])
    if bad.size:
        raise DataError(
            f"{path or 'labelTrainIds array'}: values {bad[:10].tolist()} are not train ids "
            f"(0..{NUM_CLASSES - 1} or {IGNORE_INDEX})"
        )
    return raw.astype(np.uint8)


def label_kind(path: str | Path) -> str:
    """``"labelTrainIds"`` or ``"labelIds"``, from the file name."""
    return "labelTrainIds" if str(path).endswith(TRAIN_IDS_SUFFIX) else "labelIds"


class CityscapesReader(RawDataset):
    name = "cityscapes"
    splits = ("train", "val", "test")
    default_splits = ("train", "val")

    def samples(self, split: str) -> list[RawSample]:
        self.check_split(split)
        img_dir = self.root / "leftImg8bit" / split
        if not img_dir.is_dir():
            raise DataError(
                f"{img_dir}: no such directory (Cityscapes layout: "
                f"ROOT/leftImg8bit/{split}/<city>/<stem>{IMAGE_SUFFIX})"
            )
        images = sorted(img_dir.glob(f"*/*{IMAGE_SUFFIX}"), key=lambda p: p.name)
        if not images:
            raise DataError(f"{img_dir}: contains no <city>/*{IMAGE_SUFFIX} images")
        gt_dir = self.root / "gtFine" / split
        if split == "val" and not gt_dir.is_dir():
            raise DataError(f"{gt_dir}: no such directory; the val split needs its gtFine labels")
        samples = []
        for p in images:
            stem = p.name[: -len(IMAGE_SUFFIX)]
            city = p.parent.name
            if split == "test":
                samples.append(RawSample(stem, p, None))
                continue
            label = gt_dir / city / f"{stem}{TRAIN_IDS_SUFFIX}"
            if not label.is_file():
                label = gt_dir / city / f"{stem}{LABEL_IDS_SUFFIX}"
            samples.append(RawSample(stem, p, label, label_optional=split == "train"))
        return samples

    def read_raw_label(self, path: str | Path) -> np.ndarray:
        return read_raw_label(path)

    def to_train_ids(self, raw: np.ndarray, kind: str = "labelIds") -> np.ndarray:
        return to_train_ids(raw, kind)

    def load_train_ids(self, path: str | Path) -> np.ndarray:
        return to_train_ids(read_raw_label(path), label_kind(path), path)
