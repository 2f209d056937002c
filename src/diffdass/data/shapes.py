"""A second built-in domain pair whose classes are defined by **shape** alone.

The street-scene benchmark (:mod:`diffdass.data.benchmark`) can be learnt from colour and
texture; a user's own pair may not be. This generator draws 64x64 scenes of small objects
whose class is their silhouette (10 shapes + background) and whose colour is drawn
independently of the class, so a segmenter must learn shape, at small scale, from random
initialisation. It tests the own-domain template (``configs/custom_small.yaml``) as a user's
data would (``studies/shape_test``).

Domains (the same shapes and layout statistics, a different look):

- **source**: flat-coloured objects with sharp edges on a flat background;
- **target**: textured objects (stripes or speckle), soft edges, a background with a
  gradient and noise, a different brightness curve.

Writes the folder format (``classes.yaml``, ``<split>/images``, ``<split>/labels``): source
``train``; target ``train`` (images; labels too, for an oracle) and ``val``. Deterministic in
``seed``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["SHAPES", "generate_shapes", "render_scene", "shape_mask"]

#: the object classes (class 0 is the background)
SHAPES = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "hexagon",
    "arrow",
    "crescent",
    "ell",
)


def _polygon(points: list[tuple[float, float]], cx: float, cy: float, r: float, angle: float):
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in points]


def _regular(n: int, phase: float = 0.0) -> list[tuple[float, float]]:
    return [
        (math.cos(phase + 2 * math.pi * k / n), math.sin(phase + 2 * math.pi * k / n))
        for k in range(n)
    ]


_POLYS = {
    "square": [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)],
    "triangle": _regular(3, -math.pi / 2),
    "hexagon": _regular(6),
    "star": [
        (
            math.cos(-math.pi / 2 + math.pi * k / 5) * (1.0 if k % 2 == 0 else 0.42),
            math.sin(-math.pi / 2 + math.pi * k / 5) * (1.0 if k % 2 == 0 else 0.42),
        )
        for k in range(10)
    ],  # fmt: skip
    "cross": [
        (-0.3, -1),
        (0.3, -1),
        (0.3, -0.3),
        (1, -0.3),
        (1, 0.3),
        (0.3, 0.3),
        (0.3, 1),
        (-0.3, 1),
        (-0.3, 0.3),
        (-1, 0.3),
        (-1, -0.3),
        (-0.3, -0.3),
    ],  # fmt: skip
    "arrow": [(-1, -0.3), (0.1, -0.3), (0.1, -0.8), (1, 0), (0.1, 0.8), (0.1, 0.3), (-1, 0.3)],
    "ell": [(-0.8, -1), (-0.2, -1), (-0.2, 0.4), (0.8, 0.4), (0.8, 1), (-0.8, 1)],
}


def shape_mask(name: str, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Boolean (size, size) mask of shape ``name`` centred at (cx, cy), radius ``r`` pixels,
    rotated by ``angle`` radians."""
    im = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(im)
    box = (cx - r, cy - r, cx + r, cy + r)
    if name == "circle":
        d.ellipse(box, fill=255)
    elif name == "ring":
        d.ellipse(box, fill=255)
        q = 0.5 * r
        d.ellipse((cx - q, cy - q, cx + q, cy + q), fill=0)
    elif name == "crescent":
        d.ellipse(box, fill=255)
        dx, dy = 0.55 * r * math.cos(angle), 0.55 * r * math.sin(angle)
        q = 0.85 * r
        d.ellipse((cx + dx - q, cy + dy - q, cx + dx + q, cy + dy + q), fill=0)
    elif name in _POLYS:
        d.polygon(_polygon(_POLYS[name], cx, cy, r, angle), fill=255)
    else:
        raise ValueError(f"unknown shape {name!r}; one of {SHAPES}")
    return np.asarray(im) > 127


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A (size, size) multiplicative texture in [0.55, 1.25]: stripes or speckle."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if rng.random() < 0.5:
        a = rng.uniform(0, math.pi)
        period = rng.uniform(3.0, 7.0)
        t = 0.9 + 0.3 * np.sin(2 * math.pi * (xx * math.cos(a) + yy * math.sin(a)) / period)
    else:
        t = 0.9 + 0.25 * rng.standard_normal((size, size)).astype(np.float32)
    return np.clip(t, 0.55, 1.25)


def render_scene(
    rng: np.random.Generator, size: int = 64, domain: str = "source"
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: an RGB uint8 image and a uint8 label map (0 background, 1..10 shapes)."""
    if domain not in ("source", "target"):
        raise ValueError(f"domain must be 'source' or 'target', got {domain!r}")
    label = np.zeros((size, size), np.uint8)
    bg = rng.uniform(0.15, 0.85, 3).astype(np.float32)
    img = np.broadcast_to(bg, (size, size, 3)).copy()
    if domain == "target":  # a lit background: gradient + noise
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        a = rng.uniform(0, 2 * math.pi)
        grad = 0.25 * ((xx - 0.5) * math.cos(a) + (yy - 0.5) * math.sin(a))
        img = img + grad[..., None] + 0.04 * rng.standard_normal((size, size, 3))
    for _ in range(int(rng.integers(2, 6))):
        c = int(rng.integers(len(SHAPES)))
        r = rng.uniform(0.11, 0.2) * size
        cx, cy = rng.uniform(r, size - r, 2)
        m = shape_mask(SHAPES[c], size, cx, cy, r, rng.uniform(-0.35, 0.35))
        colour = rng.uniform(0.0, 1.0, 3).astype(np.float32)
        # keep the object visible against the background
        if np.abs(colour - bg).sum() < 0.6:
            colour = 1.0 - colour
        fill = np.broadcast_to(colour, (size, size, 3))
        if domain == "target":
            fill = fill * _texture(rng, size)[..., None]
        img[m] = fill[m]
        label[m] = c + 1
    if domain == "target":
        pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
        img = np.asarray(pil.filter(ImageFilter.GaussianBlur(0.8))).astype(np.float32) / 255
        img = np.clip(img, 0, 1) ** 0.7  # a brighter, flatter tone curve
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), label


def generate_shapes(
    root: str | Path,
    n_source: int = 400,
    n_target_train: int = 400,
    n_target_val: int = 100,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Write the shape domain pair under ``root``: ``root/source`` (train) and ``root/target``
    (train, val). Existing complete splits are left as they are. Returns ``root``."""
    from diffdass.data.folder import ClassInfo
    from diffdass.utils.io import save_image

    root = Path(root)
    names = ["background", *SHAPES]
    plan = (
        ("source", "train", n_source, 0),
        ("target", "train", n_target_train, 1),
        ("target", "val", n_target_val, 2),
    )
    for domain, split, n, stream in plan:
        ClassInfo.create(names).save(root / domain)
        out = root / domain / split
        if (out / "labels").is_dir() and len(list((out / "labels").glob("*.png"))) == n:
            continue
        rng = np.random.default_rng([seed, stream])
        for i in range(n):
            img, lbl = render_scene(rng, size, domain)
            save_image(out / "images" / f"{i:05d}.png", img)
            save_image(out / "labels" / f"{i:05d}.png", lbl)
    return root
