"""Tiny, format-faithful copies of the original datasets' layouts (for tests only).

Each writer builds a few 8x16 frames exactly as the originals store them and returns
``{stem: expected train-id array}`` computed from the datasets' published label tables,
written out here literally (independent of ``diffdass.data.labels``).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

H, W = 8, 16

# GTA5 / Cityscapes label id -> train id (the Cityscapes label table).
PUBLISHED_CITYSCAPES = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
# SYNTHIA id -> train id (the SYNTHIA-RAND-CITYSCAPES label table).
PUBLISHED_SYNTHIA = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 10, 10: 11,
    17: 12, 8: 13, 19: 15, 12: 17, 11: 18,
}  # fmt: skip
PUBLISHED_SET16 = {0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18}
PUBLISHED_SET13 = PUBLISHED_SET16 - {3, 4, 5}  # drops wall, fence, pole

# Ids that are not in the tables and must become 255.
CITYSCAPES_UNMAPPED = (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30, 34, 255)
# 259 = 256 + 3 checks that 16-bit ids are not truncated to 8 bits (3 would be road).
SYNTHIA_UNMAPPED = (0, 13, 14, 16, 18, 20, 22, 259, 1000)


def expected_train_ids(raw: np.ndarray, table: dict[int, int]) -> np.ndarray:
    out = np.full(raw.shape, 255, dtype=np.uint8)
    for k, v in table.items():
        out[raw == k] = v
    return out


def raw_ids(values, seed: int, shape=(H, W)) -> np.ndarray:
    """A label map that holds every value of ``values`` at least once (then random ones)."""
    rng = np.random.default_rng(seed)
    values = np.asarray(values)
    n = shape[0] * shape[1]
    flat = np.concatenate([values, rng.choice(values, n - len(values))])
    return rng.permutation(flat).reshape(shape)


def rgb_image(seed: int, shape=(H, W)) -> np.ndarray:
    return np.random.default_rng(1000 + seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def save_rgb(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def save_palette_png(path: Path, indices: np.ndarray) -> None:
    """An 8-bit "P" PNG whose palette indices are ``indices`` (like the GTA5 labels); the
    palette colours differ from the indices, so converting to RGB would be wrong."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = indices.shape
    im = Image.frombytes("P", (w, h), np.ascontiguousarray(indices, dtype=np.uint8).tobytes())
    pal = np.random.default_rng(7).integers(0, 256, (256, 3), dtype=np.uint8)
    im.putpalette(pal.ravel().tolist())
    im.save(path)


def save_gray_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).save(path)


def make_gta5(root: Path, n: int = 3, label_shapes: dict | None = None) -> dict[str, np.ndarray]:
    """``root/images/0000k.png`` + ``root/labels/0000k.png`` (P-mode, Cityscapes ids)."""
    values = list(PUBLISHED_CITYSCAPES) + [0, 1, 34]
    expected = {}
    for k in range(1, n + 1):
        stem = f"{k:05d}"
        shape = (label_shapes or {}).get(stem, (H, W))
        raw = raw_ids(values, seed=k, shape=shape)
        save_rgb(root / "images" / f"{stem}.png", rgb_image(k))
        save_palette_png(root / "labels" / f"{stem}.png", raw)
        expected[stem] = expected_train_ids(raw, PUBLISHED_CITYSCAPES)
    return expected


def save_synthia_label(path: Path, ids: np.ndarray, seed: int, channels: int = 3) -> None:
    """A 16-bit PNG with the class ids in the red channel (index 2 in OpenCV's BGR[A]
    order) and distractor values (instance-like ids) in the others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(500 + seed)
    arr = rng.integers(0, 65536, (*ids.shape, channels), dtype=np.uint16)
    arr[:, :, 2] = ids
    if channels == 4:
        arr[:, :, 3] = 65535  # alpha
    assert cv2.imwrite(str(path), arr)


def make_synthia(root: Path, n: int = 3, channels: int = 3) -> dict[str, np.ndarray]:
    """``root/RGB/000000k.png`` + ``root/GT/LABELS/000000k.png`` (16-bit, id in red)."""
    values = list(PUBLISHED_SYNTHIA) + list(SYNTHIA_UNMAPPED)
    expected = {}
    for k in range(n):
        stem = f"{k:07d}"
        raw = raw_ids(values, seed=k)
        save_rgb(root / "RGB" / f"{stem}.png", rgb_image(k))
        save_synthia_label(root / "GT" / "LABELS" / f"{stem}.png", raw, k, channels)
        expected[stem] = expected_train_ids(raw, PUBLISHED_SYNTHIA)
    return expected


def make_cityscapes(
    root: Path,
    variant: str = "labelIds",
    splits: dict[str, dict[str, int]] | None = None,
    train_labels: bool = True,
) -> dict[str, dict[str, np.ndarray | None]]:
    """``leftImg8bit/<split>/<city>/..._leftImg8bit.png`` and ``gtFine/<split>/<city>/...``.

    ``variant``: "labelIds", "labelTrainIds" or "both". Returns ``{split: {stem: expected
    train ids, or None where no label was written}}``."""
    splits = splits or {"train": {"aachen": 2, "bochum": 1}, "val": {"frankfurt": 2}}
    values = list(PUBLISHED_CITYSCAPES) + list(CITYSCAPES_UNMAPPED)
    out: dict[str, dict] = {}
    seed = 0
    for split, cities in splits.items():
        out[split] = {}
        for city, count in cities.items():
            for k in range(count):
                seed += 1
                stem = f"{city}_{k:06d}_{19 + k:06d}"
                save_rgb(
                    root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", rgb_image(seed)
                )
                if split == "test" or (split == "train" and not train_labels):
                    out[split][stem] = None
                    continue
                raw = raw_ids(values, seed=seed)
                train = expected_train_ids(raw, PUBLISHED_CITYSCAPES)
                gt = root / "gtFine" / split / city
                if variant in ("labelIds", "both"):
                    save_gray_png(gt / f"{stem}_gtFine_labelIds.png", raw)
                if variant in ("labelTrainIds", "both"):
                    save_gray_png(gt / f"{stem}_gtFine_labelTrainIds.png", train)
                out[split][stem] = train
    return out
