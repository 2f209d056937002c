"""Procedural texture primitives of the source ("game engine") renderer.

No photographs: every pattern is computed. :func:`noise_tile` returns a fixed, tileable
256x256 noise image (filtered white noise made periodic by construction in the Fourier
domain, drawn from a constant seed, so it is identical in every process);
:func:`sample` reads a tile at arbitrary (u, v) coordinates in tile pixels with
wrap-around, so a texture can be laid out in world metres (ground, facades) or in an
object's own pixel frame. The per-image randomness is in the coordinates (offset, scale)
and the amplitudes that :mod:`.source` draws, never in the tiles.

Kinds of tile: ``"fbm"`` (1/f^2 "cloudy" noise: stains, patches, grass/soil mix),
``"grain"`` (flatter spectrum: asphalt grain, fabric, paint flakes), ``"leaf"`` (band-pass
blobs of a few pixels: foliage) and ``"cell"`` (independent uniform values per tile pixel,
read with nearest-neighbour lookup: one random value per paving tile, brick or panel).
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

TILE = 256

# kind -> (amplitude exponent alpha of a 1/f^alpha spectrum, lowest and highest frequency in
# cycles per tile; None: no upper cut-off)
_SPECTRA = {"fbm": (1.2, 1.0, None), "grain": (0.4, 1.0, None), "leaf": (0.5, 6.0, 40.0)}


@functools.cache
def noise_tile(kind: str) -> np.ndarray:
    """A tileable (256, 256) float32 noise image, zero mean and unit std (``"cell"``: U(0, 1))."""
    rng = np.random.default_rng([7919, sorted([*_SPECTRA, "cell"]).index(kind)])
    if kind == "cell":
        out = rng.random((TILE, TILE)).astype(np.float32)
        out.setflags(write=False)
        return out
    alpha, f_lo, f_hi = _SPECTRA[kind]
    f = np.fft.fftfreq(TILE) * TILE  # cycles per tile
    fr = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    amp = np.where(fr >= f_lo, np.maximum(fr, 1.0) ** -alpha, 0.0)
    if f_hi is not None:
        amp = amp * np.exp(-((fr / f_hi) ** 2))
    spec = np.fft.fft2(rng.normal(size=(TILE, TILE))) * amp
    out = np.real(np.fft.ifft2(spec))
    out = ((out - out.mean()) / (out.std() + 1e-12)).astype(np.float32)
    out.setflags(write=False)
    return out


def sample(tile: np.ndarray, u: np.ndarray, v: np.ndarray, nearest: bool = False) -> np.ndarray:
    """``tile`` read at (u, v) (column, row; tile pixels; any shape), wrapping around."""
    shape = np.shape(u)
    mu = np.asarray(u, np.float32).reshape(1, -1) % TILE
    mv = np.asarray(v, np.float32).reshape(1, -1) % TILE
    if mu.size == 0:
        return np.zeros(shape, np.float32)
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    out = np.empty(mu.shape, np.float32)
    step = 32000  # cv2.remap maps are limited to 32767 columns
    for a in range(0, mu.shape[1], step):
        out[:, a : a + step] = cv2.remap(
            tile, mu[:, a : a + step], mv[:, a : a + step], interp, borderMode=cv2.BORDER_WRAP
        )
    return out.reshape(shape)


def fade(feature: np.ndarray | float, footprint: np.ndarray | float) -> np.ndarray:
    """Amplitude of a pattern of size ``feature`` seen at ``footprint`` (same unit) per pixel.

    1 when the pattern spans at least two pixels, 0 below half a pixel: a cheap stand-in
    for mip-mapping, so that distant detail averages out instead of aliasing into noise.
    """
    r = np.asarray(feature, np.float32) / np.maximum(np.asarray(footprint, np.float32), 1e-6)
    return np.clip((r - 0.5) / 1.5, 0.0, 1.0)


def smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((np.asarray(x, np.float32) - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def stripes(x: np.ndarray, period: float, width: float) -> np.ndarray:
    """1 on lines of relative ``width`` (0..1) repeating every ``period``, else 0 (hard edges)."""
    return ((np.asarray(x, np.float32) / period) % 1.0 < width).astype(np.float32)
