"""Class sets, palettes and raw-id -> train-id mappings (Cityscapes, GTA5, SYNTHIA).

All datasets are converted once (``diffdass prepare``) to *train ids*: 0..18 for the 19
Cityscapes evaluation classes and 255 for "ignore". SYNTHIA is kept in the same 19-way
index space (its three missing classes, terrain, truck and train, never occur) and scored
on its 16- or 13-class subset, which is the DAFormer convention.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)

# The official Cityscapes colour of each train id.
CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
)

# Cityscapes label id -> train id (also the id space of GTA5 labels).
CITYSCAPES_ID_TO_TRAINID: dict[int, int] = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}
GTA5_ID_TO_TRAINID: dict[int, int] = dict(CITYSCAPES_ID_TO_TRAINID)

# SYNTHIA-RAND-CITYSCAPES label id (last channel of the 16-bit PNG) -> train id.
SYNTHIA_ID_TO_TRAINID: dict[int, int] = {
    3: 0,
    4: 1,
    2: 2,
    21: 3,
    5: 4,
    7: 5,
    15: 6,
    9: 7,
    6: 8,
    1: 10,
    10: 11,
    17: 12,
    8: 13,
    19: 15,
    12: 17,
    11: 18,
}

# Evaluation class subsets, as train ids of the 19-class space.
CLASS_SETS: dict[str, tuple[int, ...]] = {
    "19": tuple(range(19)),
    "16": (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18),
    "13": (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18),
}


def lookup_table(mapping: dict[int, int], size: int = 65536) -> np.ndarray:
    """A dense ``uint8`` table ``lut[raw_id] = train_id`` (255 for unmapped ids)."""
    lut = np.full(size, IGNORE_INDEX, dtype=np.uint8)
    for raw, train in mapping.items():
        lut[raw] = train
    return lut


def map_labels(raw: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """Map an integer label array of raw ids to train ids; unknown ids become 255."""
    raw = np.asarray(raw)
    if raw.dtype.kind not in "iu":
        raise TypeError(f"label array must be integer, got {raw.dtype}")
    if raw.size and (raw.min() < 0 or raw.max() >= 65536):
        raise ValueError(f"label ids must lie in [0, 65535], got [{raw.min()}, {raw.max()}]")
    return lookup_table(mapping)[raw.astype(np.int64)]


def colorize(
    label: np.ndarray, palette: tuple[tuple[int, int, int], ...] | np.ndarray
) -> np.ndarray:
    """RGB image (H, W, 3, uint8) of a train-id map; ignore and out-of-palette ids are black."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    pal[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return pal[np.asarray(label, dtype=np.uint8)]


def default_palette(num_classes: int, seed: int = 0) -> np.ndarray:
    """A deterministic palette for folder datasets that do not define one."""
    if num_classes <= len(CITYSCAPES_PALETTE):
        return np.asarray(CITYSCAPES_PALETTE[:num_classes], dtype=np.uint8)
    rng = np.random.default_rng(seed)
    extra = rng.integers(0, 256, size=(num_classes - len(CITYSCAPES_PALETTE), 3), dtype=np.uint8)
    return np.concatenate([np.asarray(CITYSCAPES_PALETTE, dtype=np.uint8), extra])
