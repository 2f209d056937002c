"""The built-in benchmark: a procedural synthetic -> "real" street-scene adaptation task.

``generate_benchmark(root)`` writes, deterministically from a seed and with no network::

    ROOT/benchmark.json                      # config, generator version, content hash, stats
    ROOT/source/classes.yaml                 # the 19 Cityscapes classes and palette
    ROOT/source/train/{images,labels}/*.png  # labeled "synthetic" source domain
    ROOT/target/classes.yaml
    ROOT/target/train/images/*.png           # unlabeled "real" target domain (labels withheld)
    ROOT/target/train_oracle/{images,labels} # the SAME images as target/train, WITH labels
    ROOT/target/val/{images,labels}/*.png    # labeled target validation split

``target/train_oracle`` exists only to train the *target-oracle* upper bound that puts the
adaptation results to scale. An adaptation method must never read it: it sees
``source/train`` (images + labels) and ``target/train`` (images only), and is scored on
``target/val``.

Design
------
*Layout (shared by both domains).* Every image starts as a label map drawn from one scene
generator, so both domains have the same label distribution and differ only in
appearance. A scene is a dashcam view through a pinhole camera (random focal length,
horizon row, camera height and a small yaw): sky on top; a straight road receding to the
vanishing point with lane markings, sometimes a cross street with a zebra crossing;
sidewalks on both sides, terrain strips and a far ground plane; facades of buildings with
windows on both sides (random heights, setbacks and gaps) and a far skyline; walls,
fences and hedges at the building bases and in the gaps; street trees; poles carrying
traffic signs (circles, triangles, plates), traffic lights (on the pole or on an arm over
the road) and street lamps; pedestrians (walking or standing, groups, crossing);
riders on bicycles and motorcycles; parked and moving cars (both directions, on the cross
street too), trucks, buses and, occasionally, a tram (train). All 19 Cityscapes classes
(train ids 0..18) occur; objects are 3-D boxes, spheres and rods projected through the
camera, so they shrink towards the horizon, and they are drawn far to near (painter's
algorithm) so that occlusion is right. Counts are random (Poisson), and the small classes
(pole, traffic light/sign, person, rider, bicycle, motorcycle) occur in most images.
Besides the label map, the layout keeps an instance id and a *part* code per pixel
(window, tyre, face orientation, skin, lamp, road marking, ...), from which each domain
renders its appearance; the part codes carry shape detail, not class identity.

*Source ("synthetic").* Flat shading with a clean, saturated per-class palette
(:data:`SOURCE_PALETTE`, a video-game look distinct from the label colours), a small
per-object colour jitter, per-face shading of the boxes, hard edges, no noise and one
fixed vertical lighting gradient.

*Target ("real").* Every class is textured with real photographs bundled inside
scikit-image (:data:`TEXTURE_SOURCES`; only files shipped in the wheel, never the pooch
downloads): ground classes get gravel/brick/grass mapped onto the ground plane with the
camera homography (so the texture recedes in perspective), facades get brick/gravel/moon
textures mapped onto the two facade planes, other classes get a random crop (position and
scale) whose luminance modulates a tint from :data:`TARGET_PALETTE` -- a desaturated,
shifted, more natural palette (grey road, brick-brown buildings, pale sky) with
per-object variation (cars, clothes, buses come in several colours) -- and objects get
part of the photo's own colour blended in. Then per image: a cloudy sky gradient, a cast
shadow across the ground, brightness/contrast/colour-temperature variation, vignetting,
Gaussian defocus blur and sensor noise. The colours move and the statistics change
(texture, noise, blur) but shape and context still determine the label, so the gap is
large (a source-trained segmenter relies on the flat colours) yet bridgeable.

Determinism: image ``index`` of stream ``domain_id`` (0 source/train, 1 target/train,
2 target/val) draws its layout from ``np.random.default_rng([seed, domain_id, index, 0])``
and its appearance from ``[seed, domain_id, index, 1]``, so any single image can be
regenerated on its own (:func:`make_sample`) and the output is byte-identical across runs,
processes and worker counts. Layout parameters are in metres, so a seed gives the same
scene at any resolution. The whole root is written into a temporary sibling directory and
renamed into place, so ``ROOT`` is never half-written; ``benchmark.json`` is written last
and an existing complete root with the same config and generator version is left
untouched (bump :data:`GENERATOR_VERSION` whenever the output changes).

Cost: about 10-15 ms of CPU for a layout and 10 ms for a target rendering at 64x128
(about 20 s of CPU for the default 900 images, spread over two spawned worker processes);
at 256x512 about 0.2 s per image.

Public API: :class:`BenchmarkConfig`, :func:`generate_benchmark`, :func:`preview_figure`,
:func:`make_sample` (one image), :func:`sample_layout` / :func:`render_source` /
:func:`render_target` (render any label layout in either style, e.g. for paired checks of a
translation model), :func:`content_hash`. Command line:
``python -m diffdass.data.benchmark ROOT [--height 256 --width 512] [--preview out.png]``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from diffdass.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, IGNORE_INDEX, colorize

__all__ = [
    "GENERATOR_VERSION",
    "SOURCE_PALETTE",
    "SPLITS",
    "TARGET_PALETTE",
    "TEXTURE_SOURCES",
    "BenchmarkConfig",
    "Layout",
    "content_hash",
    "generate_benchmark",
    "load_texture",
    "make_sample",
    "preview_figure",
    "render_source",
    "render_target",
    "sample_layout",
]

GENERATOR_VERSION = 2  # 2: far cars/people drawn without sub-pixel parts
NUM_CLASSES = len(CITYSCAPES_CLASSES)

# train ids
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY = range(11)
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = range(11, 19)

# Part codes (low 4 bits of the id map): shape detail shared by both domains.
BASE, SIDE_A, SIDE_B, TOP, GLASS, TIRE, DARK, BRIGHT = range(8)
SKIN, LAMP_R, LAMP_A, LAMP_G, MARK, BOTTOM, FRONT, ACCENT = range(8, 16)
_SHADE = np.array(
    [1.0, 0.86, 0.7, 1.12, 0.45, 0.22, 0.62, 1.22, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.94, 1.0],
    dtype=np.float32,
)

#: Split name -> (domain id of the seed stream, directory, config field with its size).
SPLITS: dict[str, tuple[int, str, str]] = {
    "source/train": (0, "source/train", "n_source"),
    "target/train": (1, "target/train", "n_target_train"),
    "target/val": (2, "target/val", "n_target_val"),
}

#: Flat "synthetic" class colours (a saturated game look, not the label palette).
SOURCE_PALETTE: tuple[tuple[int, int, int], ...] = (
    (105, 95, 128),  # road
    (214, 172, 204),  # sidewalk
    (206, 140, 92),  # building
    (236, 224, 158),  # wall
    (172, 114, 58),  # fence
    (178, 178, 198),  # pole
    (255, 206, 30),  # traffic light
    (58, 96, 246),  # traffic sign
    (44, 196, 64),  # vegetation
    (178, 216, 84),  # terrain
    (94, 186, 255),  # sky
    (236, 60, 76),  # person
    (255, 132, 10),  # rider
    (44, 70, 212),  # car
    (34, 136, 172),  # truck
    (250, 214, 0),  # bus
    (206, 44, 166),  # train
    (126, 44, 226),  # motorcycle
    (186, 24, 64),  # bicycle
)

#: "Real" tints per class: several variants (one is drawn per object), desaturated and
#: shifted relative to the source palette.
TARGET_PALETTE: tuple[tuple[tuple[int, int, int], ...], ...] = (
    ((88, 86, 84), (78, 78, 80), (98, 94, 90)),  # road
    ((150, 142, 132), (135, 132, 128), (160, 150, 138)),  # sidewalk
    ((128, 108, 96), (150, 140, 125), (108, 102, 98), (165, 150, 122), (122, 82, 66)),
    ((158, 150, 135), (140, 138, 132), (170, 160, 140)),  # wall
    ((112, 98, 80), (92, 96, 92), (130, 118, 100)),  # fence
    ((98, 102, 108), (80, 84, 86), (120, 120, 116)),  # pole
    ((58, 62, 58), (48, 50, 54), (80, 78, 60)),  # traffic light
    ((176, 66, 56), (52, 82, 150), (200, 198, 186), (190, 160, 60)),  # traffic sign
    ((70, 98, 48), (58, 84, 44), (88, 108, 56), (76, 92, 40)),  # vegetation
    ((128, 118, 78), (110, 112, 70), (140, 126, 96)),  # terrain
    ((190, 202, 215), (170, 190, 212), (200, 200, 196)),  # sky
    ((40, 40, 50), (72, 62, 56), (34, 46, 82), (120, 100, 80), (150, 44, 44), (196, 188, 170)),
    ((60, 58, 66), (90, 70, 60), (40, 56, 90), (130, 120, 100)),  # rider
    (
        (178, 178, 184),
        (36, 36, 40),
        (220, 220, 214),
        (42, 56, 92),
        (132, 34, 32),
        (92, 96, 100),
        (70, 84, 70),
    ),  # car
    ((190, 190, 184), (150, 52, 40), (72, 86, 110), (200, 170, 90)),  # truck
    ((176, 60, 46), (214, 186, 62), (62, 110, 150), (200, 200, 196)),  # bus
    ((206, 206, 196), (160, 160, 166), (190, 60, 50)),  # train
    ((46, 46, 52), (122, 32, 30), (40, 60, 110)),  # motorcycle
    ((56, 60, 70), (140, 140, 140), (40, 90, 60)),  # bicycle
)

#: Photographs bundled with scikit-image used as target textures (all load offline).
TEXTURE_SOURCES: tuple[str, ...] = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "moon",
    "page",
    "rocket",
    "stereo_motorcycle",
    "text",
)

# class -> (texture pool, luminance contrast, crop scale range at width 256, photo colour mix)
_TEX: dict[int, tuple[tuple[str, ...], float, tuple[float, float], float]] = {
    POLE: (("camera", "moon"), 0.25, (0.6, 1.5), 0.0),
    LIGHT: (("coffee", "camera"), 0.25, (0.5, 1.5), 0.25),
    SIGN: (("text", "page"), 0.3, (0.4, 1.0), 0.0),
    VEGETATION: (("grass",), 0.42, (0.4, 1.4), 0.0),
    PERSON: (("astronaut", "chelsea", "coffee"), 0.3, (0.5, 1.5), 0.45),
    RIDER: (("astronaut", "stereo_motorcycle"), 0.3, (0.5, 1.5), 0.45),
    CAR: (("stereo_motorcycle", "rocket", "coffee"), 0.2, (0.6, 1.8), 0.25),
    TRUCK: (("rocket", "stereo_motorcycle"), 0.2, (0.6, 1.8), 0.25),
    BUS: (("rocket", "coffee"), 0.2, (0.6, 1.8), 0.2),
    TRAIN: (("rocket", "astronaut"), 0.2, (0.6, 1.8), 0.2),
    MOTORCYCLE: (("stereo_motorcycle",), 0.3, (0.4, 1.2), 0.4),
    BICYCLE: (("stereo_motorcycle", "coins"), 0.3, (0.4, 1.2), 0.35),
}
# ground classes: (pool, contrast, texture pixels per metre at width 256)
_GROUND_TEX = {
    ROAD: (("gravel",), 0.22, (80.0, 160.0)),
    SIDEWALK: (("brick",), 0.28, (70.0, 130.0)),
    TERRAIN: (("grass", "gravel"), 0.38, (60.0, 120.0)),
}
# facade classes: ((texture, pixels per metre at width 256), ...), contrast
_FACADE_TEX = {
    BUILDING: (
        (
            ("brick", (60.0, 110.0)),
            ("gravel", (15.0, 40.0)),
            ("moon", (10.0, 30.0)),
            ("coins", (15.0, 35.0)),
        ),
        0.3,
    ),
    WALL: ((("moon", (15.0, 45.0)), ("gravel", (20.0, 50.0)), ("brick", (70.0, 120.0))), 0.3),
    FENCE: ((("camera", (15.0, 45.0)), ("text", (30.0, 60.0)), ("gravel", (20.0, 50.0))), 0.3),
}


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class BenchmarkConfig:
    """Size and seed of a generated benchmark (the defaults fit a 2-core CPU in < 30 s).

    Use ``height=256, width=512`` (and more images) for GPU-scale experiments.
    """

    seed: int = 0
    height: int = 64
    width: int = 128
    n_source: int = 400
    n_target_train: int = 400
    n_target_val: int = 100

    def __post_init__(self) -> None:
        if self.height < 16 or self.width < 16:
            raise ValueError(f"height and width must be >= 16, got {self.height}x{self.width}")
        for name in ("n_source", "n_target_train", "n_target_val"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BenchmarkConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def count(self, split: str) -> int:
        return int(getattr(self, SPLITS[split][2]))


# --------------------------------------------------------------------------- textures


@functools.cache
def load_texture(name: str) -> np.ndarray:
    """A bundled scikit-image photo as float32 RGB in [0, 1] (grey images are replicated)."""
    if name not in TEXTURE_SOURCES:
        raise KeyError(f"unknown texture {name!r}; choose from {TEXTURE_SOURCES}")
    import skimage.data

    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo_motorcycle -> (left, right, disparity)
        img = img[0]
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3].astype(np.float32) / 255.0
    img.setflags(write=False)
    return img


@functools.cache
def _texture_gray(name: str) -> np.ndarray:
    """Zero-mean, unit-std luminance of a texture, clipped to +-2.5."""
    rgb = load_texture(name)
    g = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    g = (g - g.mean()) / (g.std() + 1e-3)
    g = np.clip(g, -2.5, 2.5).astype(np.float32)
    g.setflags(write=False)
    return g


def _crop(
    img: np.ndarray,
    rng: np.random.Generator,
    h: int,
    w: int,
    scale: float,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """A random crop of ``img`` covering ``scale * (h, w)`` texture pixels, resized to (h, w).

    With ``mask``, only its bounding box is computed (zeros elsewhere).
    """
    th, tw = img.shape[:2]
    s = min(scale, th / h, tw / w)
    ch, cw = max(2, int(round(h * s))), max(2, int(round(w * s)))
    y0 = int(rng.integers(0, th - ch + 1))
    x0 = int(rng.integers(0, tw - cw + 1))
    flip = rng.random() < 0.5
    interp = cv2.INTER_AREA if s > 1 else cv2.INTER_LINEAR
    if mask is None:
        out = cv2.resize(img[y0 : y0 + ch, x0 : x0 + cw], (w, h), interpolation=interp)
        return out[:, ::-1] if flip else out
    out = np.zeros((h, w) + img.shape[2:], np.float32)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return out
    a, b, c, d = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    if flip:  # output column x reads crop column w - 1 - x
        c, d = w - d, w - c
    sy, sx = ch / h, cw / w
    ty0, ty1 = y0 + int(a * sy), y0 + max(int(a * sy) + 1, int(math.ceil(b * sy)))
    tx0, tx1 = x0 + int(c * sx), x0 + max(int(c * sx) + 1, int(math.ceil(d * sx)))
    roi = cv2.resize(img[ty0:ty1, tx0:tx1], (int(d - c), int(b - a)), interpolation=interp)
    if flip:
        out[a:b, w - d : w - c] = roi[:, ::-1]
    else:
        out[a:b, c:d] = roi
    return out


# --------------------------------------------------------------------------- camera


class _Camera:
    """Pinhole camera at (0, height, 0) looking along +Z (yawed), X right, Y up, metres."""

    ZNEAR = 0.25

    def __init__(self, f: float, cx: float, cy: float, height: float, yaw: float, h: int, w: int):
        self.f, self.cx, self.cy, self.height = f, cx, cy, height
        self.c, self.s = math.cos(yaw), math.sin(yaw)
        self.H, self.W = h, w
        self.pos = np.array([0.0, height, 0.0])
        # world -> camera: (X, Y, Z) @ rot + shift
        self.rot = np.array([[self.c, 0.0, self.s], [0.0, 1.0, 0.0], [-self.s, 0.0, self.c]])
        self.shift = np.array([0.0, -height, 0.0])
        self.center = np.array([cx, cy])
        self.flip = np.array([1.0, -1.0])

    def to_cam(self, p: np.ndarray) -> np.ndarray:
        return p @ self.rot + self.shift

    def project_cam(self, pc: np.ndarray) -> np.ndarray:
        inv = self.f / pc[..., 2:3]
        return self.center + pc[..., :2] * inv * self.flip

    def project(self, p: np.ndarray) -> np.ndarray:
        return self.project_cam(self.to_cam(np.asarray(p, dtype=np.float64)))

    def depth(self, p) -> float:
        p = np.asarray(p, dtype=np.float64)
        return float(self.s * p[0] + self.c * p[2])

    def scale(self, z: float) -> float:
        """Pixels per metre at camera depth ``z``."""
        return self.f / max(z, self.ZNEAR)


def _clip_poly(poly: np.ndarray, axis: int, bound: float, keep_greater: bool) -> np.ndarray:
    """Sutherland-Hodgman clip of a polygon (n, k) against ``p[axis] >= bound`` (or <=)."""
    out = []
    n = len(poly)
    sign = 1.0 if keep_greater else -1.0
    for i in range(n):
        a, b = poly[i], poly[(i + 1) % n]
        da, db = sign * (a[axis] - bound), sign * (b[axis] - bound)
        if da >= 0:
            out.append(a)
        if (da >= 0) != (db >= 0):
            t = da / (da - db)
            out.append(a + t * (b - a))
    return np.asarray(out) if out else np.zeros((0, poly.shape[1]))


# --------------------------------------------------------------------------- canvas


# Box corners: index = 4 * (along heading > 0) + 2 * (along right > 0) + (up > 0).
_BOX_SIGNS = np.array(
    [[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], dtype=np.float64
)
_FACE_NAMES = ("front", "rear", "side", "side", "top", "bottom")
_FACE_QUADS = np.array(
    [[4, 6, 7, 5], [0, 2, 3, 1], [2, 6, 7, 3], [0, 4, 5, 1], [1, 3, 7, 5], [0, 2, 6, 4]]
)
_FACE_QUADS_T = tuple(tuple(int(i) for i in q) for q in _FACE_QUADS)


class _Canvas:
    """Rasterises projected primitives into one int32 map of ``instance * 16 + part``."""

    GUARD = 4.0  # polygons are clipped to the image enlarged by this factor

    def __init__(self, cam: _Camera):
        self.cam = cam
        self.ids = np.zeros((cam.H, cam.W), dtype=np.int32)  # instance 0 = sky
        self.inst_cls: list[int] = [SKY]

    def new(self, cls: int) -> int:
        self.inst_cls.append(cls)
        return len(self.inst_cls) - 1

    # 2-D -------------------------------------------------------------
    def _to_int(self, xy: np.ndarray) -> np.ndarray:
        return np.round(xy * 8.0).astype(np.int32)

    def fill2d(self, xy: np.ndarray, inst: int, part: int) -> None:
        if len(xy) < 3:
            return
        lo, hi = xy.min(0), xy.max(0)
        W, H, g = self.cam.W, self.cam.H, self.GUARD
        if hi[0] < -1 or lo[0] > W + 1 or hi[1] < -1 or lo[1] > H + 1:
            return
        if lo[0] < -g * W:
            xy = _clip_poly(xy, 0, -g * W, True)
        if len(xy) and hi[0] > (g + 1) * W:
            xy = _clip_poly(xy, 0, (g + 1) * W, False)
        if len(xy) and lo[1] < -g * H:
            xy = _clip_poly(xy, 1, -g * H, True)
        if len(xy) and hi[1] > (g + 1) * H:
            xy = _clip_poly(xy, 1, (g + 1) * H, False)
        if len(xy) >= 3:
            cv2.fillPoly(self.ids, [self._to_int(xy)], inst * 16 + part, cv2.LINE_8, 3)

    def _visible(self, xy: np.ndarray) -> bool:
        lo, hi = xy.min(0), xy.max(0)
        return hi[0] >= -1 and lo[0] <= self.cam.W + 1 and hi[1] >= -1 and lo[1] <= self.cam.H + 1

    # 3-D -------------------------------------------------------------
    def poly(self, pts, inst: int, part: int) -> None:
        """Fill a planar 3-D polygon (world coordinates)."""
        pc = self.cam.to_cam(np.asarray(pts, dtype=np.float64))
        if pc[:, 2].min() < _Camera.ZNEAR:
            pc = _clip_poly(pc, 2, _Camera.ZNEAR, True)
            if len(pc) < 3:
                return
        self.fill2d(self.cam.project_cam(pc), inst, part)

    def polys(self, quads: np.ndarray, inst: int, part: int) -> None:
        """Fill many small 3-D quads (n, 4, 3) at once; quads crossing the near plane are dropped."""
        if len(quads) == 0:
            return
        pc = self.cam.to_cam(quads)
        pc = pc[pc[:, :, 2].min(axis=1) > _Camera.ZNEAR]
        if len(pc) == 0:
            return
        xy = self.cam.project_cam(pc)
        W, H = self.cam.W, self.cam.H
        keep = (
            (xy[:, :, 0].max(1) >= 0)
            & (xy[:, :, 0].min(1) <= W)
            & (xy[:, :, 1].max(1) >= 0)
            & (xy[:, :, 1].min(1) <= H)
        )
        xy = xy[keep]
        if len(xy):
            cv2.fillPoly(self.ids, list(self._to_int(xy)), inst * 16 + part, cv2.LINE_8, 3)

    def box(
        self,
        inst: int,
        x: float,
        z: float,
        heading: float,
        length: float,
        width: float,
        y0: float,
        y1: float,
        parts: dict | None = None,
    ) -> None:
        """An oriented box on (x, z) (``heading`` 0 = along +Z); draws its visible faces.

        ``parts`` maps face names (front, rear, side, top, bottom) to part codes; by default
        the faces are shaded from their orientation (a fixed sun from the front left).
        Plain-float arithmetic: this is the hot path of the layout.
        """
        cam = self.cam
        cc, ss = cam.c, cam.s
        sh, ch = math.sin(heading), math.cos(heading)
        hl, hw, hh = length / 2, width / 2, (y1 - y0) / 2
        # half axes in world (along heading, right, up) and in camera coordinates
        dwx, dwz = sh * hl, ch * hl
        rwx, rwz = ch * hw, -sh * hw
        dx, dz = cc * dwx - ss * dwz, ss * dwx + cc * dwz
        rx, rz = cc * rwx - ss * rwz, ss * rwx + cc * rwz
        cx_, cy_, cz_ = cc * x - ss * z, (y0 + y1) / 2 - cam.height, ss * x + cc * z
        # outward face normals (camera coords) -> visible if the camera (origin) is outside
        normals = ((dx, 0.0, dz), (-dx, 0.0, -dz), (rx, 0.0, rz), (-rx, 0.0, -rz))
        normals += ((0.0, hh, 0.0), (0.0, -hh, 0.0))
        vis = [
            -(nx * (cx_ + nx) + ny * (cy_ + ny) + nz * (cz_ + nz)) > 1e-9 for nx, ny, nz in normals
        ]
        if not any(vis):
            return
        corners = [
            (cx_ + a * dx + b * rx, cy_ + c * hh, cz_ + a * dz + b * rz)
            for a in (-1, 1)
            for b in (-1, 1)
            for c in (-1, 1)
        ]
        parts = parts or {}
        world_n = ((dwx, dwz), (-dwx, -dwz), (rwx, rwz), (-rwx, -rwz))
        faces = []
        for k in range(6):
            if not vis[k]:
                continue
            name = _FACE_NAMES[k]
            if name in parts:
                part = parts[name]
            elif name == "top":
                part = TOP
            elif name == "bottom":
                part = BOTTOM
            elif name == "side":
                part = SIDE_A if world_n[k][0] > 0 else SIDE_B
            else:
                part = BASE if world_n[k][1] < 0 else FRONT
            faces.append((k, part))
        if min(p[2] for p in corners) > _Camera.ZNEAR:
            f, px, py = cam.f, cam.cx, cam.cy
            xs = [px + f * p[0] / p[2] for p in corners]
            ys = [py - f * p[1] / p[2] for p in corners]
            lo_x, hi_x, lo_y, hi_y = min(xs), max(xs), min(ys), max(ys)
            W, H, g = cam.W, cam.H, self.GUARD
            if hi_x < -1 or lo_x > W + 1 or hi_y < -1 or lo_y > H + 1:
                return
            if lo_x > -g * W and hi_x < (g + 1) * W and lo_y > -g * H and hi_y < (g + 1) * H:
                ixy = [(round(a * 8), round(b * 8)) for a, b in zip(xs, ys, strict=True)]
                for k, part in faces:
                    pts = np.array([ixy[i] for i in _FACE_QUADS_T[k]], dtype=np.int32)
                    cv2.fillPoly(self.ids, [pts], inst * 16 + part, cv2.LINE_8, 3)
                return
        # slow path: clip against the near plane / guard band
        wc = np.array([x, (y0 + y1) / 2, z])
        axes = np.array([[dwx, 0.0, dwz], [rwx, 0.0, rwz], [0.0, hh, 0.0]])
        world = wc + _BOX_SIGNS @ axes
        for k, part in faces:
            self.poly(world[_FACE_QUADS[k]], inst, part)

    def sphere(self, inst: int, part: int, center, radius: float) -> None:
        pc = self.cam.to_cam(np.asarray(center, dtype=np.float64))
        if pc[2] < _Camera.ZNEAR + radius:
            return
        xy = self.cam.project_cam(pc)
        rad = self.cam.f * radius / pc[2]
        if (
            xy[0] + rad < 0
            or xy[0] - rad > self.cam.W
            or xy[1] + rad < 0
            or xy[1] - rad > self.cam.H
        ):
            return
        cv2.circle(
            self.ids,
            (int(round(xy[0] * 8)), int(round(xy[1] * 8))),
            max(1, int(round(rad * 8))),
            inst * 16 + part,
            -1,
            cv2.LINE_8,
            3,
        )

    def rod(self, inst: int, part: int, p0, p1, thickness: float) -> None:
        """A line of world thickness ``thickness`` (at least one pixel)."""
        pc = self.cam.to_cam(np.asarray([p0, p1], dtype=np.float64))
        if pc[:, 2].min() < _Camera.ZNEAR:
            return
        xy = self.cam.project_cam(pc)
        if not self._visible(xy):
            return
        t = max(1, int(round(self.cam.f * thickness / pc[:, 2].mean())))
        a, b = self._to_int(xy)
        cv2.line(
            self.ids,
            tuple(int(v) for v in a),
            tuple(int(v) for v in b),
            inst * 16 + part,
            t,
            cv2.LINE_8,
            3,
        )

    def ring(self, inst: int, part: int, center, d, radius: float, thickness: float, filled=False):
        """A wheel: a circle in the vertical plane through ``center`` along direction ``d``."""
        a = np.linspace(0, 2 * np.pi, 17)[:-1]
        up = np.array([0.0, 1.0, 0.0])
        pts = np.asarray(center) + radius * (np.cos(a)[:, None] * d + np.sin(a)[:, None] * up)
        pc = self.cam.to_cam(pts)
        if pc[:, 2].min() < _Camera.ZNEAR:
            return
        xy = self.cam.project_cam(pc)
        if not self._visible(xy):
            return
        if filled:
            self.fill2d(xy, inst, part)
            return
        t = max(1, int(round(self.cam.f * thickness / pc[:, 2].mean())))
        cv2.polylines(self.ids, [self._to_int(xy)], True, inst * 16 + part, t, cv2.LINE_8, 3)


# --------------------------------------------------------------------------- layout


@dataclass
class Layout:
    """A scene as maps: ``label`` (H, W) train ids, ``ids`` = instance * 16 + part."""

    label: np.ndarray
    ids: np.ndarray
    inst_cls: np.ndarray
    cam: _Camera
    facade_x: tuple[float, float]  # lateral position of the left / right facade planes

    @property
    def instance(self) -> np.ndarray:
        return self.ids >> 4

    @property
    def part(self) -> np.ndarray:
        return self.ids & 15


class _Footprints:
    """Axis-aligned ground footprints, to keep objects from overlapping."""

    def __init__(self):
        self.boxes: list[tuple[float, float, float, float]] = []

    def try_add(self, x: float, z: float, heading: float, length: float, width: float, margin=0.3):
        ex = abs(math.sin(heading)) * length / 2 + abs(math.cos(heading)) * width / 2 + margin
        ez = abs(math.cos(heading)) * length / 2 + abs(math.sin(heading)) * width / 2 + margin
        b = (x - ex, x + ex, z - ez, z + ez)
        for o in self.boxes:
            if b[0] < o[1] and o[0] < b[1] and b[2] < o[3] and o[2] < b[3]:
                return None
        self.boxes.append(b)
        return b


def _u(rng, a, b) -> float:
    return float(rng.uniform(a, b))


def sample_layout(rng: np.random.Generator, height: int, width: int) -> Layout:
    """Draw one street scene (label map + instance/part map) from ``rng``."""
    cam = _Camera(
        f=width * _u(rng, 0.5, 0.62),
        cx=width / 2,
        cy=height * _u(rng, 0.36, 0.47),
        height=_u(rng, 1.3, 1.8),
        yaw=float(np.clip(rng.normal(0, 0.05), -0.12, 0.12)),
        h=height,
        w=width,
    )
    cv = _Canvas(cam)
    sc = _Scene(cv, rng)
    sc.build()
    ids = cv.ids
    inst_cls = np.asarray(cv.inst_cls, dtype=np.uint8)
    label = inst_cls[ids >> 4]
    return Layout(label, ids, inst_cls, cam, (-sc.xb[0], sc.xb[1]))


class _Scene:
    """The street-scene grammar; ``build`` draws it onto a canvas, far to near."""

    ZFAR = 3000.0

    def __init__(self, cv: _Canvas, rng: np.random.Generator):
        self.cv, self.rng, self.cam = cv, rng, cv.cam
        r = rng
        self.road = (_u(r, 2.0, 8.0), _u(r, 2.0, 8.0))  # distance of the left / right road edge
        self.sw = tuple(_u(r, 1.8, 5.0) if r.random() < 0.93 else 0.0 for _ in range(2))
        self.terr = tuple(_u(r, 1.0, 6.0) if r.random() < 0.55 else 0.0 for _ in range(2))
        self.setback = tuple(_u(r, 0.0, 2.0) for _ in range(2))
        self.xb = tuple(
            self.road[i] + self.sw[i] + self.terr[i] + self.setback[i] for i in range(2)
        )
        self.cross = None
        if r.random() < 0.35:
            zc = _u(r, 14.0, 45.0)
            self.cross = (zc, zc + _u(r, 8.0, 14.0))
        self.two_way = self.road[0] > 4.5
        self.items: list[tuple[float, int, object]] = []  # (sort depth, order, draw callable)
        self.fp = _Footprints()

    # helpers ---------------------------------------------------------
    def _add(self, z: float, fn) -> None:
        self.items.append((z, len(self.items), fn))

    def _in_cross(self, z0: float, z1: float, margin: float = 0.0) -> bool:
        return (
            self.cross is not None and z0 < self.cross[1] + margin and z1 > self.cross[0] - margin
        )

    def _depth_z(self, near: float, far: float) -> float:
        """A depth biased towards the camera (more near objects than far ones)."""
        return near + (far - near) * float(self.rng.random()) ** 1.4

    # build -----------------------------------------------------------
    def build(self) -> None:
        self._ground()
        self._skyline()
        self._buildings()
        self._street_objects()
        for _, _, fn in sorted(self.items, key=lambda t: (-t[0], t[1])):
            fn()

    def _strip(self, inst: int, part: int, x0: float, x1: float, z0: float, z1: float) -> None:
        self.cv.poly([[x0, 0, z0], [x1, 0, z0], [x1, 0, z1], [x0, 0, z1]], inst, part)

    def _ground(self) -> None:
        cv, r, zf = self.cv, self.rng, self.ZFAR
        far_cls = TERRAIN if r.random() < 0.6 else SIDEWALK
        self._strip(cv.new(far_cls), BASE, -500, 500, 0.3, zf)
        for s, side in ((-1, 0), (1, 1)):
            a0 = self.road[side]
            a1 = a0 + self.sw[side]
            a2 = a1 + self.terr[side]
            a3 = self.xb[side]
            if self.sw[side] > 0:
                sw = cv.new(SIDEWALK)
                self._strip(sw, BASE, s * a0, s * a1, 0.3, zf)
                self._strip(sw, BASE, s * a2, s * (a3 + 1.0), 0.3, zf)
                # kerb stones
                self._strip(sw, BRIGHT, s * a0, s * (a0 + 0.2), 0.3, zf)
            if self.terr[side] > 0:
                self._strip(cv.new(TERRAIN), BASE, s * a1, s * a2, 0.3, zf)
        road = cv.new(ROAD)
        self.road_inst = road
        rl, rr = self.road
        self._strip(road, BASE, -rl, rr, 0.3, zf)
        if self.cross:
            zc0, zc1 = self.cross
            self._strip(road, BASE, -500, 500, zc0, zc1)
            # zebra crossing before the junction
            x = -rl + 0.5
            while x < rr - 0.5:
                self._strip(road, MARK, x, x + 0.5, zc0 - 4.0, zc0 - 1.0)
                x += 1.0
            self._strip(road, MARK, -rl, rr, zc0 - 0.6, zc0 - 0.3)
        # lane markings
        lane_w = _u(r, 3.0, 3.6)
        bounds = []  # (lateral position, solid centre line?)
        x = lane_w / 2
        while x < rr - 1.0:
            bounds.append((x, False))
            x += lane_w
        x = -lane_w / 2
        while x > -rl + 1.0:
            bounds.append((x, self.two_way and x == -lane_w / 2))
            x -= lane_w
        dash, gap = _u(r, 2.0, 4.0), _u(r, 5.0, 9.0)
        z_off = _u(r, 0, dash + gap)
        quads = []
        for bx, solid in bounds:
            if solid:
                segs = [(1.0, 150.0)]
            else:
                segs = []
                z = 1.0 + z_off - (dash + gap)
                while z < 150:
                    segs.append((max(z, 0.5), z + dash))
                    z += dash + gap
            for z0, z1 in segs:
                if z1 <= z0 or self._in_cross(z0, z1, 4.5):
                    continue
                quads.append(
                    [[bx - 0.07, 0, z0], [bx + 0.07, 0, z0], [bx + 0.07, 0, z1], [bx - 0.07, 0, z1]]
                )
        self.cv.polys(np.asarray(quads, dtype=np.float64).reshape(-1, 4, 3), road, MARK)
        self.lane_w = lane_w

    def _skyline(self) -> None:
        cv, r = self.cv, self.rng
        x = -150.0 + _u(r, -10, 0)
        while x < 150:
            w = _u(r, 10, 40)
            z = _u(r, 150, 320)
            h = float(np.clip(np.exp(r.normal(math.log(22), 0.5)), 8, 90))
            if r.random() < 0.25:
                inst = cv.new(VEGETATION)
                for _ in range(4):
                    cv.sphere(inst, BASE, [x + _u(r, 0, w), _u(r, 2, 8), z], _u(r, 4, 9))
            else:
                inst = cv.new(BUILDING)
                cv.poly([[x, 0, z], [x + w, 0, z], [x + w, h, z], [x, h, z]], inst, BASE)
            x += w

    def _buildings(self) -> None:
        """Side facades (and what shows in their gaps), sorted far to near among themselves."""
        r = self.rng
        blocks = []
        for s, side in ((-1, 0), (1, 1)):
            z = _u(r, -4.0, 10.0)
            while z < 160:
                if self.cross and z < self.cross[1] + 1 and z + 4 > self.cross[0] - 1:
                    z = self.cross[1] + _u(r, 1.0, 4.0)
                    continue
                if r.random() < 0.25:  # a gap
                    g = _u(r, 4.0, 20.0)
                    blocks.append(("gap", s, side, z, z + g))
                    z += g
                    continue
                length = _u(r, 8.0, 35.0)
                z1 = z + length
                if self.cross and z1 > self.cross[0] - 1 and z < self.cross[1]:
                    z1 = self.cross[0] - 1
                if z1 - z > 2:
                    blocks.append(("bld", s, side, z, z1))
                z = z1
        drawn = []
        for kind, s, side, z0, z1 in blocks:
            xb = self.xb[side]
            if kind == "gap":
                drawn.append((z0, lambda s=s, xb=xb, z0=z0, z1=z1: self._gap(s, xb, z0, z1)))
            else:
                h = float(np.clip(np.exp(r.normal(math.log(14), 0.45)), 5, 45))
                dx = _u(r, 0, 1.5) if r.random() < 0.4 else 0.0
                base = self._base_structure(s, side, z0, z1)
                drawn.append(
                    (
                        z0,
                        lambda s=s, x=xb + dx, z0=z0, z1=z1, h=h, base=base: self._building(
                            s, x, z0, z1, h, base
                        ),
                    )
                )
        for _, fn in sorted(drawn, key=lambda t: -t[0]):
            fn()

    def _base_structure(self, s, side, z0, z1):
        """A wall, fence or hedge in front of a building (along the terrain strip), or None."""
        r = self.rng
        if self.terr[side] <= 0 or r.random() > 0.45:
            return None
        kind = r.choice([WALL, FENCE, VEGETATION], p=[0.35, 0.35, 0.3])
        h = _u(r, 0.8, 2.0)
        x = s * (self.road[side] + self.sw[side] + 0.15)
        return int(kind), x, h

    def _building(self, s, xb, z0, z1, h, base) -> None:
        cv, r = self.cv, self.rng
        inst = cv.new(BUILDING)
        x = s * xb
        side_part = SIDE_A if s < 0 else SIDE_B
        z0c = max(z0, 0.3)
        cv.poly([[x, 0, z0c], [x, 0, z1], [x, h, z1], [x, h, z0c]], inst, side_part)
        if z0 > 0.5:
            xo = x + s * 30
            cv.poly([[x, 0, z0], [xo, 0, z0], [xo, h, z0], [x, h, z0]], inst, BASE)
        # windows
        floor = _u(r, 2.9, 3.6)
        ww, sp = _u(r, 0.9, 1.6), _u(r, 2.2, 3.4)
        wh = floor * _u(r, 0.4, 0.6)
        ys = np.arange(floor * 0.3 + (floor if r.random() < 0.5 else 0), h - floor * 0.6, floor)
        zs = np.arange(max(z0, 0.5) + _u(r, 0.4, 1.2), z1 - ww - 0.3, sp)
        if len(ys) and len(zs) and self.cam.scale(max(z0, 1.0)) * wh > 1.0:
            Y, Z = np.meshgrid(ys, zs, indexing="ij")
            Y, Z = Y.ravel(), Z.ravel()
            xs = np.full_like(Y, x - s * 0.02)
            q = np.stack(
                [
                    np.stack([xs, Y, Z], -1),
                    np.stack([xs, Y, Z + ww], -1),
                    np.stack([xs, Y + wh, Z + ww], -1),
                    np.stack([xs, Y + wh, Z], -1),
                ],
                axis=1,
            )
            cv.polys(q, inst, GLASS)
        if r.random() < 0.35:  # shop front / entrance at street level
            zz = _u(r, z0, max(z0 + 0.1, z1 - 4))
            cv.poly(
                [
                    [x - s * 0.03, 0, zz],
                    [x - s * 0.03, 0, zz + 3.5],
                    [x - s * 0.03, 2.6, zz + 3.5],
                    [x - s * 0.03, 2.6, zz],
                ],
                inst,
                DARK,
            )
        if base is not None:
            kind, bx, bh = base
            self._barrier(kind, bx, max(z0, 0.5), z1, bh)

    def _barrier(self, kind: int, x: float, z0: float, z1: float, h: float) -> None:
        """A wall, fence or hedge along the plane X = x from z0 to z1."""
        cv, r = self.cv, self.rng
        inst = cv.new(kind)
        side_part = SIDE_A if x < 0 else SIDE_B
        if kind == VEGETATION:
            cv.box(inst, x, (z0 + z1) / 2, 0.0, z1 - z0, 0.8, 0.0, h)
            return
        t = 0.25 if kind == WALL else 0.06
        cv.box(inst, x, (z0 + z1) / 2, 0.0, z1 - z0, t, 0.0, h, parts={"side": side_part})
        if kind == WALL and r.random() < 0.6:
            cv.box(
                inst,
                x,
                (z0 + z1) / 2,
                0.0,
                z1 - z0,
                t + 0.08,
                h - 0.15,
                h + 0.05,
                parts={"side": BRIGHT, "top": BRIGHT},
            )
        if kind == FENCE:
            step = _u(r, 1.5, 3.0)
            zs = np.arange(z0, z1, step)
            if len(zs) and self.cam.scale(max(z0, 1.0)) * 0.08 > 0.3:
                xs = np.full_like(zs, x - np.sign(x) * 0.04)
                q = np.stack(
                    [
                        np.stack([xs, 0 * zs, zs], -1),
                        np.stack([xs, 0 * zs, zs + 0.1], -1),
                        np.stack([xs, 0 * zs + h + 0.1, zs + 0.1], -1),
                        np.stack([xs, 0 * zs + h + 0.1, zs], -1),
                    ],
                    axis=1,
                )
                cv.polys(q, inst, DARK)
            xr = x - np.sign(x) * 0.04
            for yy in (h * 0.85, h * 0.3):
                cv.poly(
                    [[xr, yy, z0], [xr, yy, z1], [xr, yy + 0.07, z1], [xr, yy + 0.07, z0]],
                    inst,
                    DARK,
                )

    def _gap(self, s, xb, z0, z1) -> None:
        """What shows between two buildings: trees, a wall or a fence, sometimes a far facade."""
        cv, r = self.cv, self.rng
        if r.random() < 0.35:  # a building set far back
            inst = cv.new(BUILDING)
            x = s * (xb + _u(r, 10, 30))
            h = _u(r, 8, 30)
            cv.poly(
                [[x, 0, z0 - 5], [x, 0, z1 + 5], [x, h, z1 + 5], [x, h, z0 - 5]],
                inst,
                SIDE_A if s < 0 else SIDE_B,
            )
        if r.random() < 0.7:
            inst = cv.new(VEGETATION)
            for _ in range(int(r.integers(2, 6))):
                zz = _u(r, z0, z1)
                rad = _u(r, 2.0, 5.0)
                cv.sphere(
                    inst,
                    int(r.choice([BASE, SIDE_A, DARK])),
                    [s * (xb + _u(r, 2, 10)), _u(r, 3, 9), zz],
                    rad,
                )
        roll = r.random()
        if roll < 0.4:
            self._barrier(WALL, s * (xb - 0.2), max(z0, 0.5), z1, _u(r, 1.0, 2.6))
        elif roll < 0.8:
            self._barrier(FENCE, s * (xb - 0.2), max(z0, 0.5), z1, _u(r, 1.0, 2.2))

    # street objects --------------------------------------------------------
    def _street_objects(self) -> None:
        r = self.rng
        self._poles()
        self._trees()
        # large vehicles first, so that they find room
        if r.random() < 0.2:
            self._vehicle(TRAIN)
        for _ in range(int(r.poisson(0.55))):
            self._vehicle(BUS)
        for _ in range(int(r.poisson(0.5))):
            self._vehicle(TRUCK)
        for _ in range(int(r.poisson(3.0))):
            self._pedestrian()
        for _ in range(int(r.poisson(1.1))):
            self._rider()
        for _ in range(int(r.poisson(0.5))):
            self._parked_two_wheeler(BICYCLE)
        for _ in range(int(r.poisson(0.35))):
            self._parked_two_wheeler(MOTORCYCLE)
        self._parked_cars()
        for _ in range(int(r.poisson(3.0))):
            self._vehicle(CAR)
        if self.cross:
            for _ in range(int(r.poisson(1.2))):
                self._cross_vehicle()

    def _px(self, x: float, z: float) -> float:
        """Pixels per metre at ground position (x, z)."""
        return self.cam.scale(self.cam.depth([x, 0.0, z]))

    def _kerb_x(self, side: int, inset: float) -> float:
        s = -1 if side == 0 else 1
        return s * (self.road[side] + inset)

    def _poles(self) -> None:
        r = self.rng
        specs = []
        for side in (0, 1):
            for _ in range(int(r.poisson(2.3))):
                specs.append((side, self._depth_z(3.0, 70.0), None))
        if self.cross:  # traffic lights at the junction corners
            for side in (0, 1):
                if r.random() < 0.8:
                    specs.append((side, self.cross[0] - _u(r, 0.5, 2.0), "light"))
        for side, z, force in specs:
            if self.sw[side] <= 0 and force is None and r.random() < 0.5:
                continue
            x = self._kerb_x(side, _u(r, 0.3, 0.6))
            if self.fp.try_add(x, z, 0, 0.4, 0.4, margin=0.2) is None:
                continue
            h = _u(r, 3.5, 8.5)
            kind = force or r.choice(
                ["sign", "light", "lamp", "sign+light", "plain"], p=[0.4, 0.2, 0.2, 0.1, 0.1]
            )
            self._add(z, functools.partial(self._pole, x, z, h, str(kind)))

    def _pole(self, x: float, z: float, h: float, kind: str) -> None:
        cv, r = self.cv, self.rng
        pole = cv.new(POLE)
        w = _u(r, 0.12, 0.24)
        cv.box(pole, x, z, 0.0, w, w, 0.0, h)
        s_in = 1.0 if x < 0 else -1.0  # towards the road centre
        if "sign" in kind:
            sign = cv.new(SIGN)
            sz = _u(r, 0.5, 0.9)
            y = _u(r, 2.0, min(3.2, h - 0.4))
            zs = z - w / 2 - 0.03
            shape = r.choice(["circle", "triangle", "rect", "rect"])
            if shape == "circle":
                cv.sphere(sign, BASE, [x, y, zs], sz / 2)
                if r.random() < 0.6:
                    cv.sphere(sign, ACCENT, [x, y, zs - 0.01], sz * 0.33)
            elif shape == "triangle":
                cv.poly(
                    [
                        [x - sz / 2, y - sz * 0.4, zs],
                        [x + sz / 2, y - sz * 0.4, zs],
                        [x, y + sz * 0.5, zs],
                    ],
                    sign,
                    BASE,
                )
            else:
                ww = sz * _u(r, 0.8, 1.8)
                cv.box(
                    sign,
                    x + s_in * (ww / 2 - w),
                    zs,
                    0.0,
                    0.03,
                    ww,
                    y - sz / 2,
                    y + sz / 2,
                    parts={"rear": BASE, "front": BASE},
                )
                if r.random() < 0.5:
                    cv.box(
                        sign,
                        x + s_in * (ww / 2 - w),
                        zs - 0.02,
                        0.0,
                        0.01,
                        ww * 0.7,
                        y - sz * 0.2,
                        y + sz * 0.2,
                        parts={"rear": ACCENT, "front": ACCENT},
                    )
        if "light" in kind:
            light = cv.new(LIGHT)
            if r.random() < 0.45 and h > 4.5:  # on an arm over the road
                arm = _u(r, 2.0, 5.5)
                ya = h - 0.3
                cv.box(pole, x + s_in * arm / 2, z, 0.0, 0.12, arm, ya - 0.06, ya + 0.06)
                lx, ly = x + s_in * (arm - 0.3), ya - 0.1
            else:
                lx, ly = x, min(h, 3.6)
            self._traffic_light(light, lx, ly, z - w / 2 - 0.2)
        if kind == "lamp":
            arm = _u(r, 1.0, 2.5)
            cv.box(pole, x + s_in * arm / 2, z, 0.0, 0.1, arm, h - 0.1, h)
            cv.box(pole, x + s_in * arm, z, 0.0, 0.3, 0.6, h - 0.25, h, parts={"bottom": BRIGHT})

    def _traffic_light(self, inst: int, x: float, ytop: float, z: float) -> None:
        cv, r = self.cv, self.rng
        hb, wb = 0.95, 0.36
        cv.box(inst, x, z, 0.0, 0.3, wb, ytop - hb, ytop)
        lit = int(r.integers(0, 3))
        for k, part in enumerate((LAMP_R, LAMP_A, LAMP_G)):
            y = ytop - 0.17 - k * 0.3
            cv.sphere(inst, part if k == lit else DARK, [x, y, z - 0.16], 0.1)

    def _trees(self) -> None:
        r = self.rng
        for side in (0, 1):
            if self.sw[side] <= 0 or r.random() > 0.55:
                continue
            x = self._kerb_x(side, self.sw[side] - _u(r, 0.5, 0.9) if self.sw[side] > 1.2 else 0.6)
            z = _u(r, 2.0, 12.0)
            step = _u(r, 7.0, 14.0)
            while z < 90:
                if not self._in_cross(z, z, 3) and self.fp.try_add(x, z, 0, 0.5, 0.5, 0.2):
                    self._add(z, functools.partial(self._tree, x, z))
                z += step * _u(r, 0.8, 1.2)
        for side in (0, 1):  # bushes / lone trees on terrain strips
            if self.terr[side] <= 0:
                continue
            for _ in range(int(r.poisson(1.5))):
                x = self._kerb_x(side, self.sw[side] + _u(r, 0.3, self.terr[side]))
                z = self._depth_z(4.0, 60.0)
                if self.fp.try_add(x, z, 0, 1.0, 1.0, 0.1):
                    self._add(z, functools.partial(self._bush, x, z))

    def _tree(self, x: float, z: float) -> None:
        cv, r = self.cv, self.rng
        inst = cv.new(VEGETATION)
        th = _u(r, 2.0, 3.5)
        tw = _u(r, 0.22, 0.4)
        cv.box(
            inst,
            x,
            z,
            0.0,
            tw,
            tw,
            0.0,
            th + 0.5,
            parts={"side": DARK, "front": DARK, "rear": DARK},
        )
        rad = _u(r, 1.4, 3.2)
        cy = th + rad * 0.8
        for _ in range(int(r.integers(3, 7))):
            off = r.normal(0, rad * 0.35, 3)
            cv.sphere(
                inst,
                int(r.choice([BASE, SIDE_A, SIDE_B, DARK, BRIGHT])),
                [x + off[0], cy + off[1], z + off[2]],
                rad * _u(r, 0.55, 0.85),
            )

    def _bush(self, x: float, z: float) -> None:
        cv, r = self.cv, self.rng
        inst = cv.new(VEGETATION)
        rad = _u(r, 0.5, 1.2)
        for _ in range(int(r.integers(2, 4))):
            off = r.normal(0, rad * 0.4, 2)
            cv.sphere(
                inst,
                int(r.choice([BASE, SIDE_A, DARK])),
                [x + off[0], rad * 0.8, z + off[1]],
                rad * _u(r, 0.6, 0.9),
            )

    def _pedestrian(self) -> None:
        r = self.rng
        crossing = r.random() < 0.2
        if crossing:
            z = (
                self.cross[0] - _u(r, 1.0, 4.0)
                if self.cross and r.random() < 0.6
                else self._depth_z(4.0, 40.0)
            )
            x = _u(r, -self.road[0], self.road[1])
            heading = math.pi / 2 if r.random() < 0.5 else -math.pi / 2
        else:
            side = int(r.integers(0, 2))
            if self.sw[side] <= 0:
                return
            x = self._kerb_x(side, _u(r, 0.4, max(0.5, self.sw[side] - 0.3)))
            z = self._depth_z(3.5, 60.0)
            heading = 0.0 if r.random() < 0.5 else math.pi
            heading += r.normal(0, 0.3)
        n = 1 if r.random() < 0.7 else int(r.integers(2, 4))
        for k in range(n):
            xx = x + (k and r.normal(0, 0.5))
            zz = z + (k and r.normal(0, 0.8))
            if self.fp.try_add(xx, zz, heading, 0.35, 0.6, margin=0.05) is None:
                continue
            h = _u(r, 1.55, 1.95) if r.random() < 0.9 else _u(r, 1.05, 1.4)
            walk = _u(r, -1, 1) if r.random() < 0.75 else 0.0
            self._add(zz, functools.partial(self._person, xx, zz, h, heading, walk))

    def _person(self, x: float, z: float, h: float, heading: float, walk: float) -> None:
        cv = self.cv
        inst = cv.new(PERSON)
        d = np.array([math.sin(heading), math.cos(heading)])
        rr = np.array([math.cos(heading), -math.sin(heading)])
        stride = 0.12 * h * walk
        leg = 0.47 * h
        if self._px(x, z) * 0.075 * h < 0.5:  # too small for limbs
            cv.box(inst, x, z, heading, 0.13 * h, 0.24 * h, 0.0, 0.82 * h)
            cv.sphere(inst, SKIN, [x, 0.905 * h, z], 0.065 * h)
            return
        for k in (-1, 1):
            p = np.array([x, z]) + rr * (k * 0.055 * h) + d * (k * stride / 2)
            cv.box(
                inst,
                p[0],
                p[1],
                heading,
                0.09 * h,
                0.075 * h,
                0.0,
                leg,
                parts={"side": DARK, "front": DARK, "rear": DARK, "top": DARK},
            )
        for k in (-1, 1):
            p = np.array([x, z]) + rr * (k * 0.145 * h) - d * (k * stride / 3)
            cv.box(inst, p[0], p[1], heading, 0.06 * h, 0.05 * h, 0.45 * h, 0.8 * h)
        cv.box(inst, x, z, heading, 0.13 * h, 0.24 * h, leg - 0.02 * h, 0.82 * h)
        cv.sphere(inst, SKIN, [x, 0.905 * h, z], 0.065 * h)

    def _rider(self) -> None:
        r = self.rng
        motor = r.random() < 0.4
        if self.cross and r.random() < 0.15:
            z = _u(r, self.cross[0] + 1.5, self.cross[1] - 1.5)
            x = _u(r, -self.xb[0] + 2, self.xb[1] - 2)
            heading = math.pi / 2 if r.random() < 0.5 else -math.pi / 2
        else:
            side = int(r.integers(0, 2))
            x = self._kerb_x(side, -_u(r, 0.6, 1.6))
            z = self._depth_z(4.0, 50.0)
            heading = 0.0 if (side == 1 or not self.two_way or r.random() < 0.3) else math.pi
            heading += r.normal(0, 0.08)
        length = 1.9 if motor else 1.7
        if self.fp.try_add(x, z, heading, length, 0.7, margin=0.1) is None:
            return
        h = _u(r, 1.6, 1.9)
        self._add(z, functools.partial(self._ride, x, z, heading, motor, h))

    def _two_wheeler(self, inst: int, x: float, z: float, heading: float, motor: bool) -> dict:
        cv = self.cv
        d3 = np.array([math.sin(heading), 0.0, math.cos(heading)])
        r3 = np.array([math.cos(heading), 0.0, -math.sin(heading)])
        p = np.array([x, 0.0, z])
        if motor:
            rad, wb = 0.31, 1.4
            for k in (-1, 1):
                cv.ring(inst, TIRE, p + d3 * (k * wb / 2) + [0, rad, 0], d3, rad, 0.1, filled=True)
            cv.box(inst, x, z, heading, 1.1, 0.36, 0.35, 0.85)
            cv.box(
                inst,
                *(p + d3 * 0.25)[[0, 2]],
                heading,
                0.45,
                0.32,
                0.8,
                1.0,
                parts={"side": SIDE_A, "top": TOP},
            )
            cv.rod(
                inst,
                DARK,
                p + d3 * 0.6 + [0, 1.0, 0] - r3 * 0.35,
                p + d3 * 0.6 + [0, 1.0, 0] + r3 * 0.35,
                0.05,
            )
            cv.rod(inst, DARK, p + d3 * 0.7 + [0, 0.3, 0], p + d3 * 0.6 + [0, 1.0, 0], 0.06)
            return {"seat": 0.85, "bar": p + d3 * 0.6 + [0, 1.0, 0]}
        rad, wb = 0.34, 1.05
        for k in (-1, 1):
            cv.ring(inst, TIRE, p + d3 * (k * wb / 2) + [0, rad, 0], d3, rad, 0.05)
        rear = p - d3 * wb / 2 + [0, rad, 0]
        front = p + d3 * wb / 2 + [0, rad, 0]
        bb = p + [0, 0.3, 0]
        seat = p - d3 * 0.12 + [0, 0.88, 0]
        head = p + d3 * 0.38 + [0, 0.85, 0]
        bar = p + d3 * 0.36 + [0, 1.0, 0]
        for a, b in (
            (rear, bb),
            (rear, seat),
            (bb, seat),
            (seat, head),
            (bb, head),
            (head, front),
            (head, bar),
        ):
            cv.rod(inst, BASE, a, b, 0.04)
        cv.rod(inst, DARK, bar - r3 * 0.25, bar + r3 * 0.25, 0.04)
        return {"seat": 0.9, "bar": bar}

    def _ride(self, x: float, z: float, heading: float, motor: bool, h: float) -> None:
        cv, r = self.cv, self.rng
        veh = cv.new(MOTORCYCLE if motor else BICYCLE)
        geo = self._two_wheeler(veh, x, z, heading, motor)
        inst = cv.new(RIDER)
        d = np.array([math.sin(heading), math.cos(heading)])
        rr = np.array([math.cos(heading), -math.sin(heading)])
        ys = geo["seat"]
        p = np.array([x, z])
        for k in (-1, 1):
            q = p + rr * (k * 0.13) + d * 0.1
            cv.box(
                inst,
                q[0],
                q[1],
                heading,
                0.14,
                0.12,
                0.3,
                ys + 0.05,
                parts={"side": DARK, "front": DARK, "rear": DARK, "top": DARK},
            )
        t = 0.31 * h
        q = p - d * 0.05
        cv.box(inst, q[0], q[1], heading, 0.24, 0.4, ys, ys + t * 0.55)
        q = p + d * 0.07
        cv.box(inst, q[0], q[1], heading, 0.24, 0.42, ys + t * 0.5, ys + t)
        for k in (-1, 1):
            gx, gz = p + rr * (k * 0.2) + d * 0.07  # shoulder on the ground plane
            sh = np.array([gx, ys + t * 0.95, gz])
            cv.rod(inst, BASE, sh, geo["bar"] + np.array([rr[0], 0, rr[1]]) * (k * 0.22), 0.08)
        head = p + d * 0.15
        helmet = motor and r.random() < 0.85
        cv.sphere(
            inst,
            DARK if helmet else SKIN,
            [head[0], ys + t + 0.12, head[1]],
            0.115 if helmet else 0.1,
        )

    def _parked_two_wheeler(self, cls: int) -> None:
        r = self.rng
        side = int(r.integers(0, 2))
        if self.sw[side] <= 0:
            return
        x = self._kerb_x(side, _u(r, 0.5, max(0.6, self.sw[side] - 0.5)))
        z = self._depth_z(4.0, 40.0)
        heading = _u(r, -math.pi, math.pi)
        length = 1.9 if cls == MOTORCYCLE else 1.7
        if self.fp.try_add(x, z, heading, length, 0.6, margin=0.05) is None:
            return
        self._add(z, functools.partial(self._two_wheeler_only, cls, x, z, heading))

    def _two_wheeler_only(self, cls: int, x: float, z: float, heading: float) -> None:
        self._two_wheeler(self.cv.new(cls), x, z, heading, cls == MOTORCYCLE)

    def _lane_x(self) -> tuple[float, float]:
        """A lane centre and the driving direction there."""
        r = self.rng
        lw = self.lane_w
        centres = []
        x = 0.0
        while x < self.road[1] - lw / 2 + 0.3:
            centres.append(x)
            x += lw
        x = -lw
        while x > -self.road[0] + lw / 2 - 0.3:
            centres.append(x)
            x -= lw
        c = float(r.choice(centres)) + r.normal(0, 0.2)
        heading = math.pi if (self.two_way and c < -lw / 2) else 0.0
        return c, heading

    def _vehicle(self, cls: int) -> None:
        r = self.rng
        x, heading = self._lane_x()
        dims = {
            CAR: (_u(r, 3.8, 4.9), _u(r, 1.7, 1.9)),
            TRUCK: (_u(r, 7.0, 10.0), 2.5),
            BUS: (_u(r, 10.5, 12.5), 2.55),
            TRAIN: (_u(r, 20.0, 32.0), 2.6),
        }[cls]
        length, width = dims
        near = 6.0 if abs(x) < 1.5 else 3.0
        z = self._depth_z(near, 50.0 if cls == TRAIN else 90.0) + length / 2
        if cls == TRAIN:
            x = float(np.clip(x, -self.road[0] + 1.6, self.road[1] - 1.6))
        heading += r.normal(0, 0.03)
        if self._in_cross(z - length / 2, z + length / 2) and cls != CAR:
            return
        if self.fp.try_add(x, z, heading, length, width, margin=0.6) is None:
            return
        self._add(
            z - length / 2, functools.partial(self._draw_vehicle, cls, x, z, heading, length, width)
        )

    def _parked_cars(self) -> None:
        r = self.rng
        for side in (0, 1):
            if r.random() > 0.5 or self.road[side] < 3.0:
                continue
            x = self._kerb_x(side, -_u(r, 0.95, 1.15))
            z = _u(r, 2.0, 14.0)
            for _ in range(int(r.integers(2, 9))):
                length = _u(r, 3.8, 4.9)
                if r.random() > 0.2 and not self._in_cross(z, z + length, 1.0):
                    zc = z + length / 2
                    heading = r.normal(0, 0.03) + (math.pi if r.random() < 0.3 else 0.0)
                    cls = CAR if r.random() < 0.93 else TRUCK
                    if cls == TRUCK:
                        length = _u(r, 6.0, 8.0)
                        zc = z + length / 2
                    width = _u(r, 1.7, 1.9) if cls == CAR else 2.4
                    if self.fp.try_add(x, zc, heading, length, width, margin=0.2):
                        self._add(
                            z,
                            functools.partial(
                                self._draw_vehicle, cls, x, zc, heading, length, width
                            ),
                        )
                z += length + _u(r, 0.6, 2.5)

    def _cross_vehicle(self) -> None:
        r = self.rng
        z0, z1 = self.cross
        half = (z1 - z0) / 2
        heading = math.pi / 2 if r.random() < 0.5 else -math.pi / 2
        z = z0 + half + (half / 2 if heading > 0 else -half / 2) + r.normal(0, 0.3)
        x = _u(r, -self.xb[0] - 2, self.xb[1] + 2)
        cls = CAR if r.random() < 0.8 else (BUS if r.random() < 0.5 else TRUCK)
        length, width = (_u(r, 3.8, 4.9), 1.8) if cls == CAR else (_u(r, 8.0, 12.0), 2.5)
        if self.fp.try_add(x, z, heading, length, width, margin=0.5) is None:
            return
        self._add(
            z - width / 2, functools.partial(self._draw_vehicle, cls, x, z, heading, length, width)
        )

    def _draw_vehicle(self, cls, x, z, heading, length, width) -> None:
        cv, r = self.cv, self.rng
        inst = cv.new(cls)
        d = np.array([math.sin(heading), math.cos(heading)])
        rr = np.array([math.cos(heading), -math.sin(heading)])
        p = np.array([x, z])
        tire = {"side": TIRE, "front": TIRE, "rear": TIRE, "top": TIRE}
        glass = {"side": GLASS, "front": GLASS, "rear": GLASS}

        def at(a, b=0.0):
            q = p + d * a + rr * b
            return float(q[0]), float(q[1])

        px = self._px(x, z)  # detail smaller than half a pixel is skipped
        if cls == CAR:
            h = _u(r, 1.35, 1.6)
            wheels = px * 0.25 >= 0.5
            for a in (length / 2 - 0.8, -length / 2 + 0.8):
                for b in (-1, 1) if wheels else ():
                    cv.box(
                        inst,
                        *at(a, b * (width / 2 - 0.13)),
                        heading,
                        0.62,
                        0.24,
                        0.0,
                        0.62,
                        parts=tire,
                    )
            yb = _u(r, 0.82, 0.95)
            cv.box(inst, x, z, heading, length, width, 0.25 if wheels else 0.0, yb)
            cl = length * _u(r, 0.45, 0.58)
            off = -length * _u(r, 0.0, 0.1)
            cv.box(inst, *at(off), heading, cl, width * 0.88, yb, h, parts={**glass, "top": TOP})
            for b in (-1, 1) if px * 0.12 >= 0.5 else ():
                cv.box(
                    inst,
                    *at(-length / 2 + 0.01, b * (width / 2 - 0.22)),
                    heading,
                    0.04,
                    0.3,
                    yb - 0.2,
                    yb - 0.08,
                    parts={"rear": LAMP_R, "side": LAMP_R},
                )
                cv.box(
                    inst,
                    *at(length / 2 - 0.01, b * (width / 2 - 0.22)),
                    heading,
                    0.04,
                    0.3,
                    yb - 0.22,
                    yb - 0.1,
                    parts={"front": BRIGHT, "side": BRIGHT},
                )
        elif cls == TRUCK:
            for a in (length / 2 - 1.0, -length / 2 + 1.2, -length / 2 + 2.5):
                for b in (-1, 1):
                    cv.box(
                        inst,
                        *at(a, b * (width / 2 - 0.15)),
                        heading,
                        1.0,
                        0.3,
                        0.0,
                        1.0,
                        parts=tire,
                    )
            cab = 2.2
            cv.box(inst, *at(length / 2 - cab / 2), heading, cab, width, 0.5, 2.9)
            cv.box(
                inst,
                *at(length / 2 - cab / 2 + 0.02),
                heading,
                cab - 0.3,
                width + 0.02,
                1.8,
                2.6,
                parts=glass,
            )
            cargo = length - cab - 0.3
            hc = _u(r, 3.2, 3.9)
            cv.box(
                inst,
                *at(-length / 2 + cargo / 2),
                heading,
                length - cab - 0.3,
                width + 0.05,
                0.9,
                0.95,
                parts={"side": DARK, "rear": DARK, "front": DARK, "top": DARK},
            )
            cv.box(inst, *at(-length / 2 + cargo / 2), heading, cargo, width + 0.05, 0.95, hc)
            for b in (-1, 1):
                cv.box(
                    inst,
                    *at(-length / 2 + 0.01, b * (width / 2 - 0.25)),
                    heading,
                    0.04,
                    0.3,
                    0.95,
                    1.1,
                    parts={"rear": LAMP_R},
                )
        else:  # bus / tram
            hb = 3.1 if cls == BUS else 3.4
            y0 = 0.3 if cls == BUS else 0.4
            if cls == BUS:
                for a in (length / 2 - 2.5, -length / 2 + 3.0):
                    for b in (-1, 1):
                        cv.box(
                            inst,
                            *at(a, b * (width / 2 - 0.15)),
                            heading,
                            1.0,
                            0.3,
                            0.0,
                            1.0,
                            parts=tire,
                        )
                segs = [(0.0, length)]
            else:
                cv.box(
                    inst,
                    x,
                    z,
                    heading,
                    length - 1.0,
                    width - 0.3,
                    0.0,
                    0.45,
                    parts={"side": DARK, "front": DARK, "rear": DARK},
                )
                n = max(2, int(round(length / 10)))
                sl = length / n
                segs = [(-length / 2 + sl * (k + 0.5), sl - 0.35) for k in range(n)]
            for c, sl in segs:
                cv.box(inst, *at(c), heading, sl, width, y0, hb)
                cv.box(
                    inst,
                    *at(c),
                    heading,
                    sl - 0.5,
                    width + 0.04,
                    1.3,
                    2.6 if cls == BUS else 2.8,
                    parts=glass,
                )
                cv.box(
                    inst,
                    *at(c),
                    heading,
                    sl - 0.2,
                    width + 0.05,
                    0.85,
                    1.05,
                    parts={"side": ACCENT, "front": ACCENT, "rear": ACCENT},
                )
            if cls == TRAIN:
                top = np.array([*at(0.0)])
                base = np.array([top[0], hb, top[1]])
                tip = base + np.array([0, 1.2, 0]) + np.array([d[0], 0, d[1]]) * 1.0
                cv.rod(inst, DARK, base, tip, 0.06)
                cv.rod(
                    inst,
                    DARK,
                    tip - np.array([rr[0], 0, rr[1]]) * 0.8,
                    tip + np.array([rr[0], 0, rr[1]]) * 0.8,
                    0.05,
                )


# --------------------------------------------------------------------------- rendering


def _special_parts(part: np.ndarray) -> np.ndarray:
    return np.bincount(part.ravel(), minlength=16)


def render_source(layout: Layout, rng: np.random.Generator) -> np.ndarray:
    """The "synthetic" look: flat per-class colours, face shading, hard edges, no noise."""
    H, W = layout.label.shape
    inst, part = layout.instance, layout.part
    n = len(layout.inst_cls)
    pal = np.asarray(SOURCE_PALETTE, dtype=np.float32)
    cols = pal[layout.inst_cls] * (1.0 + rng.normal(0, 0.05, (n, 1))).astype(np.float32)
    cols += rng.normal(0, 4.0, (n, 3)).astype(np.float32)
    img = cols[inst] * _SHADE[part][..., None]
    counts = _special_parts(part)
    specials = {
        SKIN: np.array([236, 196, 166], np.float32),
        LAMP_R: np.array([255, 40, 30], np.float32),
        LAMP_A: np.array([255, 180, 0], np.float32),
        LAMP_G: np.array([30, 240, 90], np.float32),
        ACCENT: np.array([246, 246, 246], np.float32),
    }
    for p, col in specials.items():
        if counts[p]:
            img[part == p] = col
    if counts[MARK]:
        m = part == MARK
        img[m] = 0.25 * img[m] + 0.75 * np.array([248, 248, 240], np.float32)
    grad = np.linspace(1.07, 0.92, H, dtype=np.float32)[:, None, None]
    return np.clip(img * grad, 0, 255).round().astype(np.uint8)


def _ground_coords(cam: _Camera, H: int, W: int):
    """World (X, Z) of the ground point seen by each pixel (undefined above the horizon)."""
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32) + 0.5
    yn = (cam.cy - ys) / cam.f
    xn = (xs - cam.cx) / cam.f
    t = cam.height / np.maximum(-yn, 1e-4)
    xc, zc = xn * t, t
    return cam.c * xc + cam.s * zc, -cam.s * xc + cam.c * zc


def _plane_warp(cam: _Camera, tex: np.ndarray, world: np.ndarray, uv: np.ndarray, mask: np.ndarray):
    """Map ``tex`` onto a world plane given 4 world points and their texture coordinates.

    Only the bounding box of ``mask`` is computed (zeros elsewhere).
    """
    H, W = mask.shape
    out = np.zeros((H, W), np.float32)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return out
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    img_pts = cam.project(world).astype(np.float32) - np.array([x0, y0], np.float32)
    M = cv2.getPerspectiveTransform(img_pts, uv.astype(np.float32))
    out[y0:y1, x0:x1] = cv2.warpPerspective(
        tex,
        M,
        (int(x1 - x0), int(y1 - y0)),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REFLECT_101,
    )
    return out


def render_target(layout: Layout, rng: np.random.Generator) -> np.ndarray:
    """The "real" look: photo textures, natural palette, lighting, shadow, blur and noise."""
    H, W = layout.label.shape
    label, inst, part, cam = layout.label, layout.instance, layout.part, layout.cam
    n = len(layout.inst_cls)
    res = W / 256.0  # texture scales are given at width 256

    # per-object tints
    cols = np.empty((n, 3), np.float32)
    for c in np.unique(layout.inst_cls):
        idx = np.flatnonzero(layout.inst_cls == c)
        var = np.asarray(TARGET_PALETTE[c], dtype=np.float32)
        pick = rng.integers(0, len(var), len(idx))
        cols[idx] = var[pick] * (1.0 + rng.normal(0, 0.08, (len(idx), 1))) + rng.normal(
            0, 6, (len(idx), 3)
        )
    skin_var = np.array(
        [[224, 172, 140], [190, 140, 110], [140, 100, 75], [100, 70, 55]], np.float32
    )
    skin = skin_var[rng.integers(0, 4, n)]
    accent_var = np.array(
        [[222, 222, 212], [180, 44, 40], [40, 40, 42], [230, 200, 60]], np.float32
    )
    accent = accent_var[rng.integers(0, 4, n)]
    img = cols[inst]

    counts = np.bincount(label.ravel(), minlength=256)
    present = [c for c in range(NUM_CLASSES) if counts[c]]
    lum = np.ones((H, W), np.float32)  # multiplicative luminance texture

    gx = gz = None
    for c in present:
        m = label == c
        if c in _GROUND_TEX:
            pool, amp, ppm = _GROUND_TEX[c]
            name = pool[int(rng.integers(0, len(pool)))]
            s = _u(rng, *ppm) * res
            o = rng.uniform(0, 512, 2)
            world = np.array([[-4, 0, 6], [4, 0, 6], [4, 0, 30], [-4, 0, 30]], np.float64)
            uv = np.stack([world[:, 0] * s + o[0], -world[:, 2] * s + o[1]], -1)
            g = _plane_warp(cam, _texture_gray(name), world, uv, m)
            lum[m] = 1.0 + amp * g[m]
            if c == TERRAIN:  # patchy grass/soil colour
                g2 = _plane_warp(cam, _texture_gray("gravel"), world, uv * 0.25, m)
                img[m] *= (1.0 + 0.12 * g2[m])[:, None] * np.array([1.0, 1.04, 0.92], np.float32)
        elif c in _FACADE_TEX:
            pool, amp = _FACADE_TEX[c]
            # two textures per class and image; each object (building, wall, ...) uses one
            choice = rng.integers(0, 2, n)
            g = np.zeros((H, W), np.float32)
            for k in range(2):
                name, ppm = pool[int(rng.integers(0, len(pool)))]
                tex = _texture_gray(name)
                s = _u(rng, *ppm) * res
                gk = _crop(tex, rng, H, W, s / 40.0 / res, m)  # camera-facing faces
                for sgn, p in ((-1, SIDE_A), (1, SIDE_B)):
                    mm = m & (part == p)
                    if not mm.any():
                        continue
                    xf = sgn * max(abs(layout.facade_x[0 if sgn < 0 else 1]), 1.0)
                    world = np.array(
                        [[xf, 0, 10], [xf, 0, 40], [xf, 8, 40], [xf, 8, 10]], np.float64
                    )
                    o = rng.uniform(0, 512, 2)
                    uv = np.stack([world[:, 2] * s + o[0], -world[:, 1] * s + o[1]], -1)
                    gk = np.where(mm, _plane_warp(cam, tex, world, uv, mm), gk)
                sel = m & (choice[inst] == k)
                g[sel] = gk[sel]
            lum[m] = 1.0 + amp * g[m]
        elif c == SKY:
            t = np.clip((np.arange(H, dtype=np.float32) + 0.5) / max(cam.cy, 1.0), 0, 1)[:, None]
            zen = np.asarray(TARGET_PALETTE[SKY][int(rng.integers(0, 3))], np.float32) * _u(
                rng, 0.7, 0.95
            )
            hor = np.array([225, 228, 230], np.float32) * _u(rng, 0.9, 1.05)
            sky = zen[None, None] * (1 - t[..., None]) + hor[None, None] * t[..., None]
            sky = np.broadcast_to(sky, (H, W, 3))
            clouds = _crop(_texture_gray("gravel"), rng, H, W, _u(rng, 0.02, 0.06) / res)
            clouds = cv2.GaussianBlur(clouds, (0, 0), max(1.0, 2.0 * res * 2))
            cover = _u(rng, 0.0, 0.8)
            cm = np.clip((clouds + 1.2 - 2.4 * (1 - cover)) * 0.6, 0, 1)[..., None]
            sky = sky * (1 - cm) + np.array([236, 236, 236], np.float32) * _u(rng, 0.8, 1.0) * cm
            img[m] = sky[m]
        elif c in _TEX:
            pool, amp, scl, mix = _TEX[c]
            name = pool[int(rng.integers(0, len(pool)))]
            scale = _u(rng, *scl) / res
            if mix > 0:
                photo = _crop(load_texture(name), rng, H, W, scale, m)
                g = photo[m] @ np.array([0.299, 0.587, 0.114], np.float32)
                g = (g - 0.45) / 0.25
                img[m] = (1 - mix) * img[m] + mix * 255.0 * photo[m]
            else:
                g = _crop(_texture_gray(name), rng, H, W, scale, m)[m]
            lum[m] = 1.0 + amp * np.clip(g, -2.5, 2.5)

    shade = _SHADE[part]
    img = img * (lum * shade)[..., None]
    pc = _special_parts(part)
    if pc[SKIN]:
        m = part == SKIN
        img[m] = skin[inst[m]] * lum[m][:, None]
    if pc[ACCENT]:
        m = part == ACCENT
        img[m] = accent[inst[m]] * lum[m][:, None]
    lamp_cols = {LAMP_R: (240, 60, 40), LAMP_A: (250, 170, 40), LAMP_G: (80, 230, 150)}
    for p, col in lamp_cols.items():
        if pc[p]:
            img[part == p] = np.asarray(col, np.float32)
    if pc[MARK]:
        m = part == MARK
        wear = _u(rng, 0.45, 0.75)
        img[m] = (1 - wear) * img[m] + wear * np.array([205, 205, 196], np.float32) * lum[m][
            :, None
        ]
    if pc[GLASS]:
        m = part == GLASS
        img[m] = 0.35 * img[m] + 0.65 * np.array([52, 60, 70], np.float32) * lum[m][:, None] * 1.4

    # a cast shadow across the ground, from the buildings on one side
    if rng.random() < 0.7:
        gx, gz = _ground_coords(cam, H, W)
        sgn = -1.0 if rng.random() < 0.5 else 1.0
        edge = _u(rng, -6.0, 6.0) + _u(rng, -0.15, 0.15) * gz
        ground = np.isin(label, (ROAD, SIDEWALK, TERRAIN)) & (np.arange(H)[:, None] > cam.cy)
        m = ground & (sgn * (gx - edge) > 0)
        sh = np.where(m, _u(rng, 0.5, 0.7), 1.0).astype(np.float32)
        sh = cv2.GaussianBlur(sh, (0, 0), max(0.6, 1.5 * res))
        img *= sh[..., None]

    # camera: exposure, contrast, white balance, vignetting, defocus, noise
    img *= _u(rng, 0.72, 1.15)
    mean = img.mean()
    img = (img - mean) * _u(rng, 0.8, 1.1) + mean
    temp = _u(rng, -0.1, 0.12)
    img *= np.array([1 + temp, 1.0, 1 - temp], np.float32)
    ys, xs = np.ogrid[0:H, 0:W]
    rad2 = ((xs - W / 2) / (W / 2)) ** 2 + ((ys - H / 2) / (H / 2)) ** 2
    img *= (1.0 - _u(rng, 0.12, 0.35) * rad2 / 2)[..., None].astype(np.float32)
    img = cv2.GaussianBlur(img, (0, 0), _u(rng, 0.35, 0.8) * math.sqrt(W / 128))
    sigma = _u(rng, 2.0, 7.0)
    noise = rng.normal(0, sigma, (H, W, 1)) + rng.normal(0, sigma * 0.5, (H, W, 3))
    img = img + noise.astype(np.float32)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def make_sample(
    split: str, index: int, seed: int = 0, height: int = 64, width: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """(image RGB uint8, label uint8) of one benchmark image, regenerated on its own."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {sorted(SPLITS)}")
    domain = SPLITS[split][0]
    layout = sample_layout(np.random.default_rng([seed, domain, index, 0]), height, width)
    app = np.random.default_rng([seed, domain, index, 1])
    image = render_source(layout, app) if domain == 0 else render_target(layout, app)
    return image, layout.label


# --------------------------------------------------------------------------- writing


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


def _stem(index: int) -> str:
    return f"{index:06d}"


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _job(args) -> tuple[str, int, list[tuple[str, str]], np.ndarray]:
    """Generate and write one image (runs in worker processes); returns hashes and stats."""
    root, split, index, seed, height, width = args
    root = Path(root)
    image, label = make_sample(split, index, seed, height, width)
    img_b, lbl_b = _png_bytes(image), _png_bytes(label)
    stem = _stem(index)
    files = []
    if split == "source/train":
        dirs = [("source/train", True)]
    elif split == "target/train":
        dirs = [("target/train", False), ("target/train_oracle", True)]
    else:
        dirs = [("target/val", True)]
    for d, with_label in dirs:
        rel = f"{d}/images/{stem}.png"
        files.append((rel, _write(root / rel, img_b)))
        if with_label:
            rel = f"{d}/labels/{stem}.png"
            files.append((rel, _write(root / rel, lbl_b)))
    counts = np.bincount(label.ravel(), minlength=256)[:NUM_CLASSES].astype(np.int64)
    return split, index, files, counts


def _worker_init() -> None:
    cv2.setNumThreads(1)


def _expected_files(cfg: BenchmarkConfig) -> dict[str, int]:
    n_s, n_t, n_v = cfg.n_source, cfg.n_target_train, cfg.n_target_val
    return {
        "source/train/images": n_s,
        "source/train/labels": n_s,
        "target/train/images": n_t,
        "target/train_oracle/images": n_t,
        "target/train_oracle/labels": n_t,
        "target/val/images": n_v,
        "target/val/labels": n_v,
    }


def _hash_listing(entries: list[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    for rel, digest in sorted(entries):
        h.update(f"{rel}\t{digest}\n".encode())
    return h.hexdigest()


def content_hash(root: str | Path) -> str:
    """Recompute the content hash of a generated root (every file but ``benchmark.json``)."""
    root = Path(root)
    entries = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "benchmark.json":
            entries.append(
                (p.relative_to(root).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest())
            )
    return _hash_listing(entries)


def _read_meta(root: Path) -> dict | None:
    try:
        return json.loads((root / "benchmark.json").read_text())
    except (OSError, ValueError):
        return None


def _is_complete(root: Path, cfg: BenchmarkConfig) -> dict | None:
    meta = _read_meta(root)
    if not meta or meta.get("version") != GENERATOR_VERSION or meta.get("config") != cfg.to_dict():
        return None
    for rel, n in _expected_files(cfg).items():
        d = root / rel
        if not d.is_dir() or sum(1 for p in d.iterdir() if p.suffix == ".png") != n:
            return None
    if (root / "target/train/labels").exists():
        return None
    for dom in ("source", "target"):
        if not (root / dom / "classes.yaml").is_file():
            return None
    return meta


def _safe_to_replace(root: Path) -> bool:
    if not root.is_dir():
        return not root.exists()
    entries = {p.name for p in root.iterdir()}
    return not entries or "benchmark.json" in entries or entries <= {"source", "target"}


@contextlib.contextmanager
def _lock(root: Path):
    import fcntl

    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _class_stats(counts: np.ndarray, present: np.ndarray, n_images: int) -> dict:
    total = max(int(counts.sum()), 1)
    return {
        name: {
            "image_fraction": round(float(present[c]) / max(n_images, 1), 4),
            "pixel_share": round(float(counts[c]) / total, 5),
        }
        for c, name in enumerate(CITYSCAPES_CLASSES)
    }


def generate_benchmark(
    out_root: str | Path,
    seed: int = 0,
    height: int = 64,
    width: int = 128,
    n_source: int = 400,
    n_target_train: int = 400,
    n_target_val: int = 100,
    progress: bool = True,
    *,
    config: BenchmarkConfig | None = None,
    workers: int | None = None,
) -> dict:
    """Generate the benchmark at ``out_root`` (see the module docstring) and return a summary.

    ``config`` overrides the individual size arguments. A complete root with the same config
    and generator version is left untouched (``summary["generated"]`` is False). Anything
    else is regenerated into a temporary sibling and renamed into place; a non-empty
    directory that is not a benchmark is never replaced (``FileExistsError``). ``workers``
    (default: up to 2 processes; 1 for small jobs) does not change the output; worker
    processes are *spawned*, so a calling script needs the usual ``if __name__ ==
    "__main__":`` guard (console entry points and pytest have one).
    """
    cfg = config or BenchmarkConfig(seed, height, width, n_source, n_target_train, n_target_val)
    root = Path(out_root).absolute()
    t0 = time.perf_counter()
    with _lock(root):
        meta = _is_complete(root, cfg)
        if meta is not None:
            return {**meta, "root": str(root), "generated": False, "seconds": 0.0}
        if not _safe_to_replace(root):
            raise FileExistsError(
                f"{root}: exists and is not a generated benchmark (no benchmark.json); "
                "refusing to replace it -- pick another directory or remove it"
            )
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the root should not be
        try:
            meta = _generate_into(tmp, cfg, progress, workers)
            meta["seconds"] = round(time.perf_counter() - t0, 2)
            from diffdass.utils.io import write_json

            write_json(tmp / "benchmark.json", meta)
            old = None
            if root.exists():
                old = root.parent / f".{root.name}.old-{os.getpid()}-{time.time_ns()}"
                os.rename(root, old)
            os.rename(tmp, root)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return {**meta, "root": str(root), "generated": True}


def _generate_into(tmp: Path, cfg: BenchmarkConfig, progress: bool, workers: int | None) -> dict:
    from tqdm.auto import tqdm

    from diffdass.data.folder import ClassInfo

    info = ClassInfo.create(CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, IGNORE_INDEX)
    files: list[tuple[str, str]] = []
    for dom in ("source", "target"):
        info.save(tmp / dom)
        rel = f"{dom}/classes.yaml"
        files.append((rel, hashlib.sha256((tmp / rel).read_bytes()).hexdigest()))
    for rel in _expected_files(cfg):
        (tmp / rel).mkdir(parents=True, exist_ok=True)
    jobs = [
        (str(tmp), split, i, cfg.seed, cfg.height, cfg.width)
        for split in SPLITS
        for i in range(cfg.count(split))
    ]
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if len(jobs) >= 64 else 1
    counts = {s: np.zeros(NUM_CLASSES, np.int64) for s in SPLITS}
    present = {s: np.zeros(NUM_CLASSES, np.int64) for s in SPLITS}
    bar = tqdm(total=len(jobs), desc="benchmark", unit="img", disable=not progress)

    def collect(res):
        split, _, fl, cnt = res
        files.extend(fl)
        counts[split] += cnt
        present[split] += cnt > 0
        bar.update(1)

    try:
        if workers <= 1:
            for job in jobs:
                collect(_job(job))
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: a forked child can deadlock in OpenCV's (or torch's) thread
            # pool inherited from the parent
            with ProcessPoolExecutor(
                workers, mp.get_context("spawn"), initializer=_worker_init
            ) as ex:
                for res in ex.map(
                    _job, jobs, chunksize=max(1, min(16, len(jobs) // (4 * workers)))
                ):
                    collect(res)
    finally:
        bar.close()
    stats = {s: _class_stats(counts[s], present[s], cfg.count(s)) for s in SPLITS}
    return {
        "generator": "diffdass.data.benchmark",
        "version": GENERATOR_VERSION,
        "config": cfg.to_dict(),
        "content_hash": _hash_listing(files),
        "n_files": len(files),
        "splits": {
            "source/train": cfg.n_source,
            "target/train": cfg.n_target_train,
            "target/train_oracle": cfg.n_target_train,
            "target/val": cfg.n_target_val,
        },
        "note": (
            "target/train_oracle holds the target/train images WITH labels, only for the "
            "target-oracle upper bound; adaptation methods must never read it"
        ),
        "class_stats": stats,
    }


# --------------------------------------------------------------------------- preview


def preview_figure(root: str | Path, out_png: str | Path, n: int = 4) -> Path:
    """A PNG grid of both domains: rows source image, source label, target image, target label.

    Target rows use ``target/val`` (the labeled target split). Small images are enlarged
    (nearest neighbour) so that each tile is at least 256 pixels wide; a legend of the 19
    classes is appended.
    """
    from PIL import ImageDraw, ImageFont

    from diffdass.utils.io import save_image

    root = Path(root)
    pal = CITYSCAPES_PALETTE

    def load(split, kind, i):
        p = root / split / kind / f"{_stem(i)}.png"
        with Image.open(p) as im:
            return np.asarray(im.convert("RGB") if kind == "images" else im)

    src_n = len(list((root / "source/train/images").glob("*.png")))
    tgt_n = len(list((root / "target/val/images").glob("*.png")))
    n = max(1, min(n, src_n, tgt_n))
    rows = [
        ("source image", [load("source/train", "images", i) for i in range(n)]),
        ("source label", [colorize(load("source/train", "labels", i), pal) for i in range(n)]),
        ("target image", [load("target/val", "images", i) for i in range(n)]),
        ("target label", [colorize(load("target/val", "labels", i), pal) for i in range(n)]),
    ]
    h, w = rows[0][1][0].shape[:2]
    k = max(1, int(math.ceil(256 / w)))
    th, tw = h * k, w * k
    pad, left = 4, 110
    font = ImageFont.load_default()
    legend_rows = int(math.ceil(NUM_CLASSES / 5))
    legend_h = legend_rows * 18 + 8
    W = left + n * (tw + pad) + pad
    H = len(rows) * (th + pad) + pad + legend_h
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (title, tiles) in enumerate(rows):
        y = pad + r * (th + pad)
        draw.text((6, y + th // 2 - 6), title, fill=(0, 0, 0), font=font)
        for c, tile in enumerate(tiles):
            big = np.repeat(np.repeat(tile, k, axis=0), k, axis=1)
            canvas.paste(Image.fromarray(big), (left + pad + c * (tw + pad), y))
    y0 = len(rows) * (th + pad) + pad + 4
    col_w = (W - 12) // 5
    for c, name in enumerate(CITYSCAPES_CLASSES):
        x = 6 + (c % 5) * col_w
        y = y0 + (c // 5) * 18
        draw.rectangle([x, y, x + 14, y + 12], fill=tuple(pal[c]))
        draw.text((x + 20, y), f"{c} {name}", fill=(0, 0, 0), font=font)
    return save_image(out_png, np.asarray(canvas))


def _main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Generate the built-in diffdass benchmark.")
    ap.add_argument("root")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--n-source", type=int, default=400)
    ap.add_argument("--n-target-train", type=int, default=400)
    ap.add_argument("--n-target-val", type=int, default=100)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--preview", default=None, help="also write a preview PNG here")
    a = ap.parse_args(argv)
    cfg = BenchmarkConfig(a.seed, a.height, a.width, a.n_source, a.n_target_train, a.n_target_val)
    summary = generate_benchmark(a.root, config=cfg, workers=a.workers)
    print(json.dumps({k: summary[k] for k in ("root", "generated", "seconds", "content_hash")}))
    if a.preview:
        preview_figure(a.root, a.preview)


if __name__ == "__main__":
    _main()
