"""Scene layouts: one street scene as a label map plus an instance/part map.

:func:`sample_layout` draws a random pinhole camera (focal length, horizon row, camera
height, a small yaw) and a scene from the grammar in :mod:`.scene`, and returns a
:class:`Layout`. Layout parameters are in metres, so one random stream gives the same scene
at any resolution. Both domains draw their layouts here; they differ only in how a layout
is rendered (:mod:`.source`, :mod:`.target`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .camera import Camera, Canvas
from .common import uniform
from .scene import Scene


@dataclass
class Layout:
    """A scene as maps: ``label`` (H, W) train ids, ``ids`` = instance * 16 + part."""

    label: np.ndarray
    ids: np.ndarray
    inst_cls: np.ndarray
    cam: Camera
    facade_x: tuple[float, float]  # lateral position of the left / right facade planes

    @property
    def instance(self) -> np.ndarray:
        return self.ids >> 4

    @property
    def part(self) -> np.ndarray:
        return self.ids & 15


def sample_layout(rng: np.random.Generator, height: int, width: int) -> Layout:
    """Draw one street scene (label map + instance/part map) from ``rng``."""
    cam = Camera(
        f=width * uniform(rng, 0.5, 0.62),
        cx=width / 2,
        cy=height * uniform(rng, 0.36, 0.47),
        height=uniform(rng, 1.3, 1.8),
        yaw=float(np.clip(rng.normal(0, 0.05), -0.12, 0.12)),
        h=height,
        w=width,
    )
    cv = Canvas(cam)
    sc = Scene(cv, rng)
    sc.build()
    ids = cv.ids
    inst_cls = np.asarray(cv.inst_cls, dtype=np.uint8)
    label = inst_cls[ids >> 4]
    return Layout(label, ids, inst_cls, cam, (-sc.xb[0], sc.xb[1]))
