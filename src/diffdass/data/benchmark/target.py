"""The target ("real") renderer and its photo textures.

Every class is textured with real photographs bundled inside scikit-image
(:data:`TEXTURE_SOURCES`; only files shipped in the wheel, never the pooch downloads):
ground classes get gravel/brick/grass mapped onto the ground plane with the camera
homography (so the texture recedes in perspective), facades get brick/gravel/moon
textures mapped onto the two facade planes, other classes get a random crop (position and
scale) whose luminance modulates a tint from :data:`TARGET_PALETTE` -- a desaturated,
shifted, more natural palette (grey road, brick-brown buildings, pale sky) with
per-object variation (cars, clothes, buses come in several colours) -- and objects get
part of the photo's own colour blended in. Then per image: a cloudy sky gradient, a cast
shadow across the ground, brightness/contrast/colour-temperature variation, vignetting,
Gaussian defocus blur and sensor noise.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

from .camera import Camera, ground_coords
from .common import (
    ACCENT,
    BICYCLE,
    BUILDING,
    BUS,
    CAR,
    FENCE,
    GLASS,
    LAMP_A,
    LAMP_G,
    LAMP_R,
    LIGHT,
    MARK,
    MOTORCYCLE,
    NUM_CLASSES,
    PART_SHADE,
    PERSON,
    POLE,
    RIDER,
    ROAD,
    SIDE_A,
    SIDE_B,
    SIDEWALK,
    SIGN,
    SKIN,
    SKY,
    TERRAIN,
    TRAIN,
    TRUCK,
    VEGETATION,
    WALL,
    part_counts,
    uniform,
)
from .layout import Layout

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


def _plane_warp(cam: Camera, tex: np.ndarray, world: np.ndarray, uv: np.ndarray, mask: np.ndarray):
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
            s = uniform(rng, *ppm) * res
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
                s = uniform(rng, *ppm) * res
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
            zen = np.asarray(TARGET_PALETTE[SKY][int(rng.integers(0, 3))], np.float32) * uniform(
                rng, 0.7, 0.95
            )
            hor = np.array([225, 228, 230], np.float32) * uniform(rng, 0.9, 1.05)
            sky = zen[None, None] * (1 - t[..., None]) + hor[None, None] * t[..., None]
            sky = np.broadcast_to(sky, (H, W, 3))
            clouds = _crop(_texture_gray("gravel"), rng, H, W, uniform(rng, 0.02, 0.06) / res)
            clouds = cv2.GaussianBlur(clouds, (0, 0), max(1.0, 2.0 * res * 2))
            cover = uniform(rng, 0.0, 0.8)
            cm = np.clip((clouds + 1.2 - 2.4 * (1 - cover)) * 0.6, 0, 1)[..., None]
            sky = (
                sky * (1 - cm) + np.array([236, 236, 236], np.float32) * uniform(rng, 0.8, 1.0) * cm
            )
            img[m] = sky[m]
        elif c in _TEX:
            pool, amp, scl, mix = _TEX[c]
            name = pool[int(rng.integers(0, len(pool)))]
            scale = uniform(rng, *scl) / res
            if mix > 0:
                photo = _crop(load_texture(name), rng, H, W, scale, m)
                g = photo[m] @ np.array([0.299, 0.587, 0.114], np.float32)
                g = (g - 0.45) / 0.25
                img[m] = (1 - mix) * img[m] + mix * 255.0 * photo[m]
            else:
                g = _crop(_texture_gray(name), rng, H, W, scale, m)[m]
            lum[m] = 1.0 + amp * np.clip(g, -2.5, 2.5)

    shade = PART_SHADE[part]
    img = img * (lum * shade)[..., None]
    pc = part_counts(part)
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
        wear = uniform(rng, 0.45, 0.75)
        img[m] = (1 - wear) * img[m] + wear * np.array([205, 205, 196], np.float32) * lum[m][
            :, None
        ]
    if pc[GLASS]:
        m = part == GLASS
        img[m] = 0.35 * img[m] + 0.65 * np.array([52, 60, 70], np.float32) * lum[m][:, None] * 1.4

    # a cast shadow across the ground, from the buildings on one side
    if rng.random() < 0.7:
        gx, gz = ground_coords(cam, H, W)
        sgn = -1.0 if rng.random() < 0.5 else 1.0
        edge = uniform(rng, -6.0, 6.0) + uniform(rng, -0.15, 0.15) * gz
        ground = np.isin(label, (ROAD, SIDEWALK, TERRAIN)) & (np.arange(H)[:, None] > cam.cy)
        m = ground & (sgn * (gx - edge) > 0)
        sh = np.where(m, uniform(rng, 0.5, 0.7), 1.0).astype(np.float32)
        sh = cv2.GaussianBlur(sh, (0, 0), max(0.6, 1.5 * res))
        img *= sh[..., None]

    # camera: exposure, contrast, white balance, vignetting, defocus, noise
    img *= uniform(rng, 0.72, 1.15)
    mean = img.mean()
    img = (img - mean) * uniform(rng, 0.8, 1.1) + mean
    temp = uniform(rng, -0.1, 0.12)
    img *= np.array([1 + temp, 1.0, 1 - temp], np.float32)
    ys, xs = np.ogrid[0:H, 0:W]
    rad2 = ((xs - W / 2) / (W / 2)) ** 2 + ((ys - H / 2) / (H / 2)) ** 2
    img *= (1.0 - uniform(rng, 0.12, 0.35) * rad2 / 2)[..., None].astype(np.float32)
    img = cv2.GaussianBlur(img, (0, 0), uniform(rng, 0.35, 0.8) * math.sqrt(W / 128))
    sigma = uniform(rng, 2.0, 7.0)
    noise = rng.normal(0, sigma, (H, W, 1)) + rng.normal(0, sigma * 0.5, (H, W, 3))
    img = img + noise.astype(np.float32)
    return np.clip(img, 0, 255).round().astype(np.uint8)
