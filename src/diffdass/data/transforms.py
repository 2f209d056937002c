"""Joint image/label augmentation on numpy arrays, driven by an explicit ``np.random.Generator``.

A transform is a callable ``(image uint8 HxWx3, label uint8 HxW, rng) -> (image, label)``.
Images are resized bilinearly, labels with nearest neighbour, so label ids never blend.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from diffdass.data.labels import IGNORE_INDEX


def resize_pair(
    img: np.ndarray, lbl: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Resize to ``size`` = (H, W)."""
    h, w = size
    if img.shape[:2] == (h, w):
        return img, lbl
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    lbl = cv2.resize(lbl, (w, h), interpolation=cv2.INTER_NEAREST)
    return img, lbl


@dataclass(frozen=True)
class Resize:
    """Resize to a fixed (H, W) (the dataset's working resolution, e.g. GTA5 720x1280)."""

    height: int
    width: int

    def __call__(self, img, lbl, rng):
        return resize_pair(img, lbl, (self.height, self.width))


@dataclass(frozen=True)
class RandomScale:
    """Rescale by a factor drawn uniformly from ``[low, high]``."""

    low: float = 0.5
    high: float = 1.5

    def __call__(self, img, lbl, rng):
        s = float(rng.uniform(self.low, self.high))
        h, w = img.shape[:2]
        return resize_pair(img, lbl, (max(1, round(h * s)), max(1, round(w * s))))


@dataclass(frozen=True)
class RandomCrop:
    """Crop (H, W); pads with zeros / ignore first if the input is smaller."""

    height: int
    width: int
    ignore_index: int = IGNORE_INDEX

    def __call__(self, img, lbl, rng):
        h, w = img.shape[:2]
        ph, pw = max(0, self.height - h), max(0, self.width - w)
        if ph or pw:
            img = np.pad(img, ((0, ph), (0, pw), (0, 0)))
            lbl = np.pad(lbl, ((0, ph), (0, pw)), constant_values=self.ignore_index)
            h, w = img.shape[:2]
        y = int(rng.integers(0, h - self.height + 1))
        x = int(rng.integers(0, w - self.width + 1))
        return (
            img[y : y + self.height, x : x + self.width],
            lbl[y : y + self.height, x : x + self.width],
        )


@dataclass(frozen=True)
class RandomHFlip:
    p: float = 0.5

    def __call__(self, img, lbl, rng):
        if rng.random() < self.p:
            return img[:, ::-1], lbl[:, ::-1]
        return img, lbl


class Compose:
    def __init__(self, transforms) -> None:
        self.transforms = list(transforms)

    def __call__(self, img, lbl, rng):
        for t in self.transforms:
            img, lbl = t(img, lbl, rng)
        return img, lbl

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


def train_transform(
    crop: tuple[int, int] | None,
    resize: tuple[int, int] | None = None,
    scale: tuple[float, float] | None = (0.75, 1.25),
    hflip: bool = True,
) -> Compose:
    """The standard training augmentation: [resize] -> [random rescale] -> [crop] -> [flip]."""
    ts: list = []
    if resize is not None:
        ts.append(Resize(*resize))
    if scale is not None and tuple(scale) != (1.0, 1.0):
        ts.append(RandomScale(*scale))
    if crop is not None:
        ts.append(RandomCrop(*crop))
    if hflip:
        ts.append(RandomHFlip())
    return Compose(ts)
