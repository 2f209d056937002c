"""Shared vocabulary of the benchmark generator: class ids, part codes, small helpers.

A layout (:mod:`.layout`) stores, per pixel, a Cityscapes *train id* (the label) and an
``instance * 16 + part`` code. The *part* code (low 4 bits) carries shape detail that both
renderers use -- a window, a tyre, the left or right face of a box, skin, a lamp, a road
marking -- never class identity: a window is GLASS whether it sits on a building, a car or
a bus. :data:`PART_SHADE` is the default brightness factor of each part.
"""

from __future__ import annotations

import numpy as np

from diffdass.data.labels import CITYSCAPES_CLASSES

NUM_CLASSES = len(CITYSCAPES_CLASSES)

# train ids
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY = range(11)
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = range(11, 19)

# Part codes (low 4 bits of the id map): shape detail shared by both domains.
BASE, SIDE_A, SIDE_B, TOP, GLASS, TIRE, DARK, BRIGHT = range(8)
SKIN, LAMP_R, LAMP_A, LAMP_G, MARK, BOTTOM, FRONT, ACCENT = range(8, 16)
PART_SHADE = np.array(
    [1.0, 0.86, 0.7, 1.12, 0.45, 0.22, 0.62, 1.22, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.94, 1.0],
    dtype=np.float32,
)


def uniform(rng: np.random.Generator, a: float, b: float) -> float:
    """One draw of ``rng.uniform(a, b)`` as a Python float."""
    return float(rng.uniform(a, b))


def part_counts(part: np.ndarray) -> np.ndarray:
    """Pixel count of each of the 16 part codes."""
    return np.bincount(part.ravel(), minlength=16)
