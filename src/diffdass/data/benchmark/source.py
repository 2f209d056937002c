"""The source ("synthetic") renderer: a game-engine look.

Everything is computed, nothing is photographed (the target's photo textures never appear
here), and the image is as clean as a game frame: hard polygon edges, no blur, no sensor
noise, no vignetting. What a game engine does and this renderer imitates:

* **Materials.** Every instance draws its base colour from several saturated-but-plausible
  variants of its class (:data:`SOURCE_PALETTE`) and jitters it in brightness, saturation
  and hue. "Stuff" (road, sidewalk, building, ..., sky) keeps its class's hue family
  (asphalt greys, warm facades, vivid greens) with a small jitter; "things" (people and
  vehicles) come in many colours, so colour alone does not give the class away, and the
  palettes of neighbouring classes overlap. A procedural texture (:mod:`.procedural`)
  modulates the colour: asphalt with grain, stains and crisp repair patches, paving tiles
  with grout lines and per-tile tone, a grass/soil mix, facades of brick courses, plaster,
  concrete panels or stone blocks with floor cornices and a darker plinth, reflective
  windows, foliage noise with dark gaps and trunks, fence slats, wall blocks, fabric, car
  paint with a clear-coat highlight, vehicle body panels. Ground and facade textures are
  laid out in world metres through the camera (they recede in perspective); other objects
  use their own frame, scaled by their apparent size. Detail smaller than a pixel fades to
  its mean instead of aliasing.
* **Lighting.** Per image a weather (clear, hazy, overcast), a sun with random azimuth and
  elevation and a bluish ambient term light each surface by its orientation (the face codes
  of the layout's boxes; the ground faces up; trees, people and riders get a sphere-like
  normal over their extent). Ambient occlusion darkens the ground next to objects and
  objects towards their ground contact; in clear weather objects cast crisp drop shadows
  on the ground and a facade row casts a hard-edged shadow across the street. Lamps, head
  lights and traffic lights glow. A global tone-mapping factor (0.9-1.0) ends the frame.
* **Sky.** A zenith-to-horizon gradient (saturated blue, milky haze or overcast grey) with
  stylised clouds.

The layout (label map, parts, camera) is the one the target renderer gets: only
appearance differs between the domains. Changing anything here changes the source images:
bump ``GENERATOR_VERSION`` in :mod:`.writer`. ``docs/benchmark.md`` has the calibration
that fixed the constants (how far a segmenter trained on this look transfers to the
target).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from scipy import ndimage

from .camera import ground_coords, plane_x_coords
from .common import (
    ACCENT,
    BASE,
    BICYCLE,
    BOTTOM,
    BRIGHT,
    BUILDING,
    BUS,
    CAR,
    DARK,
    FENCE,
    FRONT,
    GLASS,
    LAMP_A,
    LAMP_G,
    LAMP_R,
    LIGHT,
    MARK,
    MOTORCYCLE,
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
    TIRE,
    TOP,
    TRAIN,
    TRUCK,
    VEGETATION,
    WALL,
    part_counts,
    uniform,
)
from .layout import Layout
from .procedural import fade, noise_tile, sample, smoothstep, stripes

#: Base colours per class (train id order), several variants each; one is drawn per instance,
#: then jittered: a saturated game look, distinct from the label palette and the target's tints.
SOURCE_PALETTE: tuple[tuple[tuple[int, int, int], ...], ...] = (
    (  # road
        (92, 92, 112),
        (80, 82, 100),
        (102, 96, 120),
        (96, 94, 92),
        (84, 84, 88),
        (110, 104, 98),
    ),
    # sidewalk
    ((214, 172, 204), (206, 184, 172), (200, 164, 188), (222, 198, 178), (190, 178, 196)),
    (  # building
        (214, 140, 92),
        (226, 176, 116),
        (196, 112, 82),
        (234, 206, 156),
        (212, 152, 122),
        (200, 136, 150),
        (220, 190, 120),
    ),
    ((236, 224, 158), (226, 208, 142), (240, 222, 182), (214, 206, 150)),  # wall
    ((172, 114, 58), (192, 132, 72), (150, 100, 52), (176, 128, 84)),  # fence
    ((178, 178, 198), (160, 162, 190), (196, 196, 214), (150, 156, 180)),  # pole
    ((255, 206, 30), (240, 188, 20), (250, 220, 60)),  # traffic light
    ((58, 96, 246), (40, 80, 230), (74, 112, 250), (222, 40, 40)),  # traffic sign
    ((44, 196, 64), (62, 210, 72), (84, 200, 50), (40, 176, 84), (100, 206, 60)),  # vegetation
    ((178, 216, 84), (160, 210, 92), (192, 222, 100), (170, 200, 76)),  # terrain
    ((70, 150, 240), (100, 182, 252), (150, 192, 232), (90, 130, 220)),  # sky (zenith)
    (  # person (clothes)
        (222, 50, 62),
        (40, 62, 162),
        (52, 52, 58),
        (232, 232, 226),
        (242, 182, 40),
        (60, 152, 82),
        (152, 92, 164),
        (122, 82, 52),
        (60, 170, 200),
    ),
    # rider (clothes)
    ((240, 120, 20), (40, 62, 162), (52, 52, 58), (222, 50, 62), (232, 232, 226), (60, 152, 82)),
    (  # car
        (202, 30, 42),
        (30, 72, 202),
        (240, 240, 240),
        (30, 30, 36),
        (172, 176, 188),
        (250, 202, 20),
        (40, 142, 72),
        (240, 122, 20),
        (92, 62, 142),
        (40, 160, 190),
    ),
    ((240, 240, 234), (202, 62, 42), (40, 92, 172), (232, 182, 40), (92, 102, 112)),  # truck
    ((242, 202, 20), (202, 40, 40), (40, 122, 202), (240, 240, 240), (60, 162, 92)),  # bus
    ((232, 232, 226), (202, 40, 40), (60, 132, 202), (242, 202, 40)),  # train
    ((30, 30, 36), (202, 30, 30), (30, 62, 182), (240, 152, 20), (172, 176, 188)),  # motorbike
    ((40, 40, 46), (202, 202, 208), (202, 30, 42), (40, 142, 202), (60, 160, 60)),  # bicycle
)

# Surface normals (world X right, Y up, Z away from the camera) of the face part codes.
_FACE_NORMAL = {
    SIDE_A: (1.0, 0.0, 0.0),
    SIDE_B: (-1.0, 0.0, 0.0),
    TOP: (0.0, 1.0, 0.0),
    BOTTOM: (0.0, -1.0, 0.0),
    BASE: (0.0, 0.0, -1.0),
    FRONT: (0.0, 0.0, 1.0),
}
_GROUND = (ROAD, SIDEWALK, TERRAIN)
_ROUND = (VEGETATION, PERSON, RIDER)  # shaded like spheres over their extent
_VEHICLES = (CAR, TRUCK, BUS, TRAIN, MOTORCYCLE)
_CASTERS = (POLE, PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE, WALL, FENCE)
# typical height in metres of an instance of each class (sets its texture scale)
_HEIGHT_M = {
    BUILDING: 14.0,
    WALL: 1.6,
    FENCE: 1.5,
    POLE: 6.0,
    LIGHT: 1.0,
    SIGN: 0.7,
    VEGETATION: 5.0,
    PERSON: 1.75,
    RIDER: 1.8,
    CAR: 1.5,
    TRUCK: 3.5,
    BUS: 3.1,
    TRAIN: 3.6,
    MOTORCYCLE: 1.1,
    BICYCLE: 1.0,
}

_WHITE = np.array([255, 255, 255], np.float32)


def _instance_colours(inst_cls: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) base colour per instance: a palette variant, jittered in HSV-like ways."""
    n = len(inst_cls)
    cols = np.zeros((n, 3), np.float32)
    for c in np.unique(inst_cls):
        idx = np.flatnonzero(inst_cls == c)
        var = np.asarray(SOURCE_PALETTE[c], np.float32)
        cols[idx] = var[rng.integers(0, len(var), len(idx))]
    grey = cols.mean(1, keepdims=True)
    # "stuff" (road .. sky) keeps its class's hue family; "things" (people, vehicles) vary more
    thing = (inst_cls >= PERSON)[:, None]
    sat = rng.uniform(0.0, 1.0, (n, 1)).astype(np.float32)
    sat = np.where(thing, 0.75 + 0.45 * sat, 0.95 + 0.2 * sat)
    val = rng.uniform(0.0, 1.0, (n, 1)).astype(np.float32)
    val = np.where(thing, 0.82 + 0.33 * val, 0.9 + 0.2 * val)
    jit = rng.normal(0, 1.0, (n, 3)).astype(np.float32) * np.where(thing, 7.0, 4.0)
    return np.clip((grey + sat * (cols - grey)) * val + jit, 8, 250)


def _bboxes(inst: np.ndarray, n: int):
    """Per instance: top, bottom, left, right pixel (inclusive ends + 1) of its visible part."""
    top = np.zeros(n, np.float32)
    bot = np.ones(n, np.float32)
    left = np.zeros(n, np.float32)
    right = np.ones(n, np.float32)
    for i, sl in enumerate(ndimage.find_objects(inst + 1, max_label=n)):
        if sl is not None:
            top[i], bot[i] = sl[0].start, sl[0].stop
            left[i], right[i] = sl[1].start, sl[1].stop
    return top, bot, left, right


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(mask)
    H, W = mask.shape
    ys, yd = (slice(0, H - dy), slice(dy, H)) if dy >= 0 else (slice(-dy, H), slice(0, H + dy))
    xs, xd = (slice(0, W - dx), slice(dx, W)) if dx >= 0 else (slice(-dx, W), slice(0, W + dx))
    out[yd, xd] = mask[ys, xs]
    return out


def render_source(layout: Layout, rng: np.random.Generator) -> np.ndarray:
    """The "synthetic" look: procedural materials, sun and ambient shading, hard shadows."""
    H, W = layout.label.shape
    label, inst, part, cam = layout.label, layout.instance, layout.part, layout.cam
    inst_cls = layout.inst_cls
    n = len(inst_cls)
    res = W / 256.0
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    fbm, grain, leaf, cell = (noise_tile(k) for k in ("fbm", "grain", "leaf", "cell"))

    # ---- weather and lighting of this image: 0 clear, 1 hazy, 2 overcast
    weather = int(rng.choice(3, p=[0.45, 0.3, 0.25]))
    az = uniform(rng, -math.pi, math.pi)
    el = uniform(rng, 0.35, 1.1)
    sun = np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    amb = uniform(rng, *((0.42, 0.58), (0.5, 0.62), (0.68, 0.8))[weather])
    k_sun = uniform(rng, *((0.55, 0.8), (0.3, 0.5), (0.06, 0.16))[weather])
    sun_rgb = np.array([1.0, uniform(rng, 0.94, 1.0), uniform(rng, 0.82, 0.95)], np.float32)
    amb_rgb = np.array([uniform(rng, 0.86, 0.96), uniform(rng, 0.93, 1.0), 1.04], np.float32)
    exposure = uniform(rng, 0.9, 1.0)  # the engine's tone mapping

    # ---- base colours and per-instance frames
    cols = _instance_colours(inst_cls, rng)
    second = _instance_colours(inst_cls, rng)  # trousers, stripes, trims
    img = cols[inst].copy()
    lum = np.ones((H, W), np.float32)
    top, bot, left, right = _bboxes(inst, n)
    box_h = np.maximum(bot - top, 1.0)
    v_rel = (ys + 0.5 - top[inst]) / box_h[inst]  # 0 at the top of the instance, 1 at its base
    u_rel = (xs + 0.5 - left[inst]) / np.maximum(right - left, 1.0)[inst]
    # pixels per metre on each instance (from its apparent height) and a texture offset
    h_m = np.array([_HEIGHT_M.get(int(c), 2.0) for c in inst_cls], np.float32)
    ppm = np.maximum(box_h / h_m, 0.3)[inst]
    off = rng.uniform(0, 256, (n, 2)).astype(np.float32)
    ou, ov = off[inst, 0], off[inst, 1]
    # object-frame coordinates in metres
    um = (xs - left[inst]) / ppm
    vm = (ys - top[inst]) / ppm

    counts = np.bincount(label.ravel(), minlength=256)
    pc = part_counts(part)

    # ---- ground: world-space materials
    ground = np.isin(label, _GROUND) & (ys + 0.5 > cam.cy)
    if ground.any():
        gx, gz = ground_coords(cam, H, W)
        gx, gz = gx[ground], gz[ground]
        fp = gz / cam.f * np.sqrt(np.maximum(gz / cam.height, 1.0))  # metres per pixel
        lab_g = label[ground]
        g_lum = np.ones(len(gx), np.float32)
        o = rng.uniform(0, 256, 4).astype(np.float32)
        # asphalt: large stains, grain, crisp repair patches
        m = lab_g == ROAD
        if m.any():
            s_st, s_gr = uniform(rng, 2.0, 5.0), uniform(rng, 0.08, 0.2)
            st = sample(fbm, gx[m] / s_st * 8 + o[0], gz[m] / s_st * 8 + o[1])
            gr = sample(grain, gx[m] / s_gr + o[2], gz[m] / s_gr + o[3])
            patch = sample(fbm, gx[m] * 1.2 + o[1], gz[m] * 0.8 + o[0]) > uniform(rng, 1.0, 1.6)
            g_lum[m] = (
                1.0
                + uniform(rng, 0.04, 0.1) * st
                + uniform(rng, 0.06, 0.12) * gr * fade(s_gr * 2, fp[m])
                - uniform(rng, 0.08, 0.2) * patch
            )
        # paving tiles with grout lines and per-tile tone
        m = lab_g == SIDEWALK
        if m.any():
            t = uniform(rng, 0.35, 0.8)
            tx, tz = gx[m] / t, gz[m] / t
            tone = sample(cell, np.floor(tx) + o[0], np.floor(tz) + o[1], nearest=True) - 0.5
            grout = np.maximum(stripes(tx, 1.0, 0.1), stripes(tz, 1.0, 0.1))
            g_lum[m] = (
                1.0
                + uniform(rng, 0.08, 0.2) * tone * fade(t, fp[m])
                - uniform(rng, 0.2, 0.35) * grout * fade(t * 0.2, fp[m])
                + 0.05 * sample(fbm, tx * 2 + o[2], tz * 2 + o[3])
                + 0.06 * sample(grain, gx[m] * 8 + o[1], gz[m] * 8 + o[0]) * fade(0.25, fp[m])
            )
        # grass with soil patches and blades
        m = lab_g == TERRAIN
        if m.any():
            s_p = uniform(rng, 0.8, 2.5)
            mix = smoothstep(sample(fbm, gx[m] / s_p * 8 + o[3], gz[m] / s_p * 8 + o[2]), 0.3, 1.2)
            soil = np.array([150, 118, 78], np.float32) * uniform(rng, 0.8, 1.1)
            sel = np.flatnonzero(ground.ravel())[m]
            flat = img.reshape(-1, 3)
            flat[sel] = flat[sel] * (1 - mix[:, None] * 0.8) + soil * mix[:, None] * 0.8
            g_lum[m] = 1.0 + 0.16 * sample(leaf, gx[m] * 12 + o[0], gz[m] * 12 + o[1]) * fade(
                0.08, fp[m]
            )
        lum[ground] = g_lum

    # ---- facades of buildings: world-space on the two street-parallel planes
    if counts[BUILDING]:
        b = label == BUILDING
        kind = rng.integers(0, 4, n)  # 0 brick, 1 plaster, 2 concrete panels, 3 stone blocks
        floor_h = rng.uniform(2.9, 3.6, n).astype(np.float32)
        for sgn, p in ((-1, SIDE_A), (1, SIDE_B)):
            mm = b & (part == p)
            if not mm.any():
                continue
            xf = sgn * max(abs(layout.facade_x[0 if sgn < 0 else 1]), 1.0)
            wy, wz = plane_x_coords(cam, H, W, xf)
            ok = mm & np.isfinite(wz)
            wy = np.maximum(wy[ok], 0.0)
            wz = wz[ok]
            fp = np.abs(xf) / cam.f * np.maximum(wz / np.abs(xf), 1.0) ** 1.5 + 1e-3
            ii = inst[ok]
            k = kind[ii]
            f_l = np.zeros(len(wz), np.float32)
            # brick courses (running bond) / stone blocks
            for kk, (bw, bh) in ((0, (0.25, 0.075)), (3, (0.9, 0.45))):
                sel = k == kk
                if sel.any():
                    row = np.floor(wy[sel] / bh)
                    xb = wz[sel] / bw + 0.5 * (row % 2)
                    tone = sample(cell, np.floor(xb) + ou[ok][sel], row + ov[ok][sel], True) - 0.5
                    joint = np.maximum(stripes(wy[sel], bh, 0.18), stripes(xb, 1.0, 0.08))
                    f_l[sel] = 0.16 * tone * fade(bh, fp[sel]) - 0.22 * joint * fade(
                        bh * 0.25, fp[sel]
                    )
            sel = k == 1  # plaster: stains
            if sel.any():
                f_l[sel] = 0.12 * sample(
                    fbm, wz[sel] * 3 + ou[ok][sel], wy[sel] * 3 + ov[ok][sel]
                ) + 0.05 * sample(grain, wz[sel] * 10, wy[sel] * 10) * fade(0.2, fp[sel])
            sel = k == 2  # concrete panels
            if sel.any():
                pw = 1.5
                joint = np.maximum(stripes(wz[sel], pw * 2, 0.03), stripes(wy[sel], pw, 0.05))
                tone = sample(cell, np.floor(wz[sel] / pw / 2) + ou[ok][sel], 0 * wy[sel], True)
                f_l[sel] = 0.1 * (tone - 0.5) - 0.25 * joint * fade(0.08, fp[sel])
            # cornices every floor and a darker plinth
            fh = floor_h[ii]
            cornice = stripes(wy + 0.15, fh, 0.2 / fh) * (wy > 2.0)
            f_l += 0.18 * cornice * fade(0.2, fp) - 0.2 * (wy < 0.7)
            lum[ok] = 1.0 + f_l
        # camera-facing faces and the skyline: the same patterns in the object frame
        mm = b & ~np.isin(part, (SIDE_A, SIDE_B, GLASS, DARK))
        if mm.any():
            wyb = (bot[inst[mm]] - ys[mm]) / ppm[mm]
            cornice = stripes(wyb + 0.15, 3.2, 0.06) * (wyb > 2.0)
            lum[mm] = (
                1.0
                + 0.1 * sample(fbm, um[mm] * 3 + ou[mm], vm[mm] * 3 + ov[mm])
                + 0.15 * cornice * fade(0.2, 1.0 / ppm[mm])
            )

    # ---- object materials in their own frame
    def obj(c, fn):
        if counts[c]:
            m = label == c
            lum[m] = fn(m)

    obj(
        VEGETATION,
        lambda m: (
            1.0
            + 0.3 * sample(leaf, um[m] * 3 + ou[m], vm[m] * 3 + ov[m]) * fade(0.3, 1 / ppm[m])
            - 0.45 * (sample(leaf, um[m] * 3 + ov[m], vm[m] * 3 + ou[m]) < -1.3)
        ),
    )
    obj(
        WALL,
        lambda m: (
            1.0
            + 0.12 * sample(fbm, um[m] * 4 + ou[m], vm[m] * 4 + ov[m])
            - 0.22
            * np.maximum(stripes(vm[m], 0.4, 0.12), stripes(um[m], 0.8, 0.06))
            * fade(0.08, 1 / ppm[m])
        ),
    )
    obj(
        FENCE,
        lambda m: (
            1.0
            - 0.35 * stripes(um[m] + ou[m], uniform(rng, 0.18, 0.35), 0.35) * fade(0.1, 1 / ppm[m])
            + 0.02 * sample(grain, um[m] * 20, vm[m] * 20 + ov[m])
        ),
    )
    for c in (PERSON, RIDER):  # fabric
        obj(c, lambda m: 1.0 + 0.04 * sample(grain, um[m] * 40 + ou[m], vm[m] * 40 + ov[m]))
    for c in (TRUCK, BUS, TRAIN):  # body panels
        obj(
            c,
            lambda m: (
                1.0
                - 0.18
                * stripes(um[m] + ou[m], uniform(rng, 1.0, 2.5), 0.04)
                * fade(0.06, 1 / ppm[m])
                + 0.04 * sample(fbm, um[m] * 2 + ou[m], vm[m] * 2)
            ),
        )
    obj(POLE, lambda m: 0.78 + 0.45 * np.clip(1 - ((u_rel[m] - 0.35) * 2.2) ** 2, 0, 1))

    # ---- parts with their own materials
    def paint(p, colour, where=None):
        if pc[p]:
            m = part == p
            if where is not None:
                m &= where
            if m.any():
                img[m] = colour(m) if callable(colour) else colour

    veh = np.isin(label, _VEHICLES + (BICYCLE,))
    sky_zen = np.asarray(SOURCE_PALETTE[SKY][int(rng.integers(0, 4))], np.float32)
    if weather == 1:  # haze: a pale, milky blue
        sky_zen = sky_zen * 0.4 + np.array([214, 222, 232], np.float32) * 0.6
    elif weather == 2:  # overcast: grey
        sky_zen = np.full(3, uniform(rng, 170, 215), np.float32) * (1.0, 1.01, 1.04)
    sky_hor = sky_zen * 0.35 + np.array([238, 242, 246], np.float32) * 0.65
    if pc[GLASS]:
        m = part == GLASS
        refl = np.clip(1.1 - v_rel[m] * 1.2 + 0.25 * sample(fbm, xs[m] * 0.3, ys[m] * 0.6), 0, 1)
        tint = np.array([34, 44, 62], np.float32)
        g = tint + refl[:, None] * (sky_hor - tint) * np.where(veh[m], 0.45, 0.7)[:, None]
        img[m] = g
        lum[m] = 1.0
    paint(TIRE, np.array([28, 28, 32], np.float32))
    if pc[DARK]:
        m = part == DARK
        c = label[m]
        d = img[m] * 0.55
        d[np.isin(c, (PERSON, RIDER))] = second[inst[m]][np.isin(c, (PERSON, RIDER))] * 0.6
        # tree trunks: the dark boxes at the bottom centre of a tree (dark leaves elsewhere)
        trunk = (c == VEGETATION) & (v_rel[m] > 0.55) & (np.abs(u_rel[m] - 0.5) < 0.2)
        d[trunk] = np.array([110, 78, 50], np.float32)
        d[c == BUILDING] = np.array([44, 52, 62], np.float32)  # shop windows
        d[c == LIGHT] = np.array([26, 26, 26], np.float32)  # unlit lamps
        img[m] = d
    if pc[BRIGHT]:
        m = part == BRIGHT
        c = label[m]
        d = np.minimum(img[m] * 1.25 + 20, 255)
        d[c == POLE] = np.array([255, 246, 210], np.float32)  # street lamp
        d[np.isin(c, _VEHICLES)] = np.array([250, 248, 226], np.float32)  # head lights
        img[m] = d
    paint(SKIN, lambda m: _skin(rng, n)[inst[m]])
    paint(ACCENT, lambda m: _accent(rng, n)[inst[m]])
    lamps = {LAMP_R: (255, 40, 30), LAMP_A: (255, 186, 0), LAMP_G: (30, 245, 96)}
    if pc[MARK]:
        m = part == MARK
        paint_col = np.array([246, 246, 238], np.float32)
        if rng.random() < 0.25:
            paint_col = np.array([250, 204, 40], np.float32)
        img[m] = paint_col
        lum[m] = 1.0 - 0.1 * (sample(grain, xs[m] * 2, ys[m] * 2) > 1.0)

    # ---- shading
    nx = np.zeros((H, W), np.float32)
    ny = np.zeros((H, W), np.float32)
    nz = np.full((H, W), -1.0, np.float32)  # default: facing the camera
    for p, (a, b_, c) in _FACE_NORMAL.items():
        if pc[p]:
            m = part == p
            nx[m], ny[m], nz[m] = a, b_, c
    rnd = np.isin(label, _ROUND)
    if rnd.any():  # sphere-like over the instance's extent
        sx = np.clip(u_rel[rnd] * 2 - 1, -1, 1)
        sy = np.clip(1 - v_rel[rnd] * 2, -1, 1) * 0.8
        nx[rnd], ny[rnd] = sx, sy
        nz[rnd] = -np.sqrt(np.clip(1 - sx**2 - sy**2, 0.05, 1))
    g_all = np.isin(label, _GROUND)
    nx[g_all], ny[g_all], nz[g_all] = 0.0, 1.0, 0.0
    lambert = np.clip(nx * sun[0] + ny * sun[1] + nz * sun[2], 0, 1)
    lit = np.ones((H, W), np.float32)  # 0 where a shadow blocks the sun

    # facade row shadow across the street (hard edge), on the side away from the sun
    if ground.any() and weather == 0 and rng.random() < 0.75 and abs(sun[0]) > 0.05:
        side = 1 if sun[0] > 0 else 0  # the sun on the right: right facades shade the street
        hb = uniform(rng, 6.0, 20.0)
        xf = abs(layout.facade_x[side])
        reach = hb * abs(sun[0]) / max(sun[1], 0.2)
        edge = (xf - reach) * (1 if side == 1 else -1)
        gxf, _ = ground_coords(cam, H, W)
        sh = ground & ((gxf > edge) if side == 1 else (gxf < edge))
        lit[sh] = 0.0
    # drop shadows of objects on the ground (in the image plane, away from the sun)
    casters = np.isin(label, _CASTERS)
    if casters.any() and ground.any():
        k_len = max(2, int(round(H / 18)))
        dxs = -sun[0] / max(sun[1], 0.3)
        dys = sun[2] / max(sun[1], 0.3) * 0.5 + 0.5
        drop = np.zeros_like(casters)
        for k in range(1, k_len + 1):
            drop |= _shift(casters, int(round(k * dys)), int(round(k * dxs)))
        lit[drop & ground & ~casters] = 0.0
    # ambient occlusion: the ground near objects, objects towards their contact
    occ = cv2.GaussianBlur((~g_all & (label != SKY)).astype(np.float32), (0, 0), max(1.0, H / 40))
    ao = np.where(g_all, 1.0 - 0.35 * occ, 1.0 - 0.22 * np.clip(v_rel, 0, 1) ** 3)
    ao[label == BUILDING] = 1.0 - 0.12 * (v_rel[label == BUILDING] > 0.93)
    shade = (amb * amb_rgb[None, None] + (k_sun * lambert * lit)[..., None] * sun_rgb) * ao[
        ..., None
    ]
    img = img * lum[..., None] * shade / (amb + k_sun * 0.6)

    # specular highlights: car paint clear coat, top faces, poles
    if veh.any():
        m = veh & ~np.isin(part, (GLASS, TIRE, DARK, BRIGHT, LAMP_R))
        band = np.exp(-(((v_rel[m] - uniform(rng, 0.3, 0.45)) / 0.07) ** 2))
        spec = 0.35 * band + 0.3 * (part[m] == TOP)
        img[m] += spec[:, None] * _WHITE * k_sun
    # emissive lamps
    for p, col in lamps.items():
        if pc[p]:
            img[part == p] = np.asarray(col, np.float32)

    # ---- sky: gradient and stylised clouds
    if counts[SKY]:
        m = label == SKY
        t = np.clip((ys[m] + 0.5) / max(cam.cy, 1.0), 0, 1)[:, None]
        sky = sky_zen * (1 - t) + sky_hor * t
        s_c = uniform(rng, 0.02, 0.05) / res
        ox = uniform(rng, 0, 256)
        cl = sample(fbm, xs[m] * s_c * 4 + ox, ys[m] * s_c * 10)
        detail = sample(fbm, xs[m] * s_c * 16 + ox, ys[m] * s_c * 32)
        cl = cl + 0.4 * detail
        cover = uniform(rng, *((-0.2, 1.4), (0.5, 1.5), (-2.5, -1.5))[weather])
        cm = smoothstep(cl, cover, cover + 0.25)[:, None]
        grey = (1.0, 0.97, 0.85)[weather]
        cloud = _WHITE * grey * (0.84 + 0.12 * np.clip(cl - cover, 0, 1) + 0.06 * detail)[:, None]
        if weather == 2:  # overcast: a darker, textured cloud deck
            cloud = sky * (0.86 + 0.1 * cl[:, None] + 0.06 * detail[:, None])
        img[m] = sky * (1 - cm) + cloud * cm
    return np.clip(img * exposure, 0, 255).round().astype(np.uint8)


def _skin(rng: np.random.Generator, n: int) -> np.ndarray:
    var = np.array([[236, 196, 166], [212, 160, 120], [160, 112, 80], [112, 76, 56]], np.float32)
    return var[rng.integers(0, len(var), n)]


def _accent(rng: np.random.Generator, n: int) -> np.ndarray:
    var = np.array([[246, 246, 246], [222, 40, 40], [30, 30, 34], [250, 204, 30]], np.float32)
    return var[rng.integers(0, len(var), n)]
