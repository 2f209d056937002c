"""The street-scene grammar of the benchmark generator (shared by both domains).

:class:`Scene` draws one dashcam view onto a :class:`~.camera.Canvas`: sky on top; a
straight road receding to the vanishing point with lane markings, sometimes a cross street
with a zebra crossing; sidewalks on both sides, terrain strips and a far ground plane;
facades of buildings with windows on both sides (random heights, setbacks and gaps) and a
far skyline; walls, fences and hedges at the building bases and in the gaps; street trees;
poles carrying traffic signs (circles, triangles, plates), traffic lights (on the pole or
on an arm over the road) and street lamps; pedestrians (walking or standing, groups,
crossing); riders on bicycles and motorcycles; parked and moving cars (both directions, on
the cross street too), trucks, buses and, occasionally, a tram (train).

All 19 Cityscapes classes (train ids 0..18) occur; objects are 3-D boxes, spheres and rods
projected through the camera, so they shrink towards the horizon, and they are drawn far to
near (painter's algorithm) so that occlusion is right. Counts are random (Poisson), and
the small classes (pole, traffic light/sign, person, rider, bicycle, motorcycle) occur in
most images. Every random number comes from the generator passed in, in a fixed order:
changing anything here changes every layout (bump ``GENERATOR_VERSION`` in
:mod:`.writer`).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .camera import Canvas
from .common import (
    ACCENT,
    BASE,
    BICYCLE,
    BRIGHT,
    BUILDING,
    BUS,
    CAR,
    DARK,
    FENCE,
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
    TERRAIN,
    TIRE,
    TOP,
    TRAIN,
    TRUCK,
    VEGETATION,
    WALL,
    uniform,
)


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


class Scene:
    """The street-scene grammar; ``build`` draws it onto a canvas, far to near."""

    ZFAR = 3000.0

    def __init__(self, cv: Canvas, rng: np.random.Generator):
        self.cv, self.rng, self.cam = cv, rng, cv.cam
        r = rng
        self.road = (
            uniform(r, 2.0, 8.0),
            uniform(r, 2.0, 8.0),
        )  # distance of the left / right road edge
        self.sw = tuple(uniform(r, 1.8, 5.0) if r.random() < 0.93 else 0.0 for _ in range(2))
        self.terr = tuple(uniform(r, 1.0, 6.0) if r.random() < 0.55 else 0.0 for _ in range(2))
        self.setback = tuple(uniform(r, 0.0, 2.0) for _ in range(2))
        self.xb = tuple(
            self.road[i] + self.sw[i] + self.terr[i] + self.setback[i] for i in range(2)
        )
        self.cross = None
        if r.random() < 0.35:
            zc = uniform(r, 14.0, 45.0)
            self.cross = (zc, zc + uniform(r, 8.0, 14.0))
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
        lane_w = uniform(r, 3.0, 3.6)
        bounds = []  # (lateral position, solid centre line?)
        x = lane_w / 2
        while x < rr - 1.0:
            bounds.append((x, False))
            x += lane_w
        x = -lane_w / 2
        while x > -rl + 1.0:
            bounds.append((x, self.two_way and x == -lane_w / 2))
            x -= lane_w
        dash, gap = uniform(r, 2.0, 4.0), uniform(r, 5.0, 9.0)
        z_off = uniform(r, 0, dash + gap)
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
        x = -150.0 + uniform(r, -10, 0)
        while x < 150:
            w = uniform(r, 10, 40)
            z = uniform(r, 150, 320)
            h = float(np.clip(np.exp(r.normal(math.log(22), 0.5)), 8, 90))
            if r.random() < 0.25:
                inst = cv.new(VEGETATION)
                for _ in range(4):
                    cv.sphere(
                        inst, BASE, [x + uniform(r, 0, w), uniform(r, 2, 8), z], uniform(r, 4, 9)
                    )
            else:
                inst = cv.new(BUILDING)
                cv.poly([[x, 0, z], [x + w, 0, z], [x + w, h, z], [x, h, z]], inst, BASE)
            x += w

    def _buildings(self) -> None:
        """Side facades (and what shows in their gaps), sorted far to near among themselves."""
        r = self.rng
        blocks = []
        for s, side in ((-1, 0), (1, 1)):
            z = uniform(r, -4.0, 10.0)
            while z < 160:
                if self.cross and z < self.cross[1] + 1 and z + 4 > self.cross[0] - 1:
                    z = self.cross[1] + uniform(r, 1.0, 4.0)
                    continue
                if r.random() < 0.25:  # a gap
                    g = uniform(r, 4.0, 20.0)
                    blocks.append(("gap", s, side, z, z + g))
                    z += g
                    continue
                length = uniform(r, 8.0, 35.0)
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
                dx = uniform(r, 0, 1.5) if r.random() < 0.4 else 0.0
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
        h = uniform(r, 0.8, 2.0)
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
        floor = uniform(r, 2.9, 3.6)
        ww, sp = uniform(r, 0.9, 1.6), uniform(r, 2.2, 3.4)
        wh = floor * uniform(r, 0.4, 0.6)
        ys = np.arange(floor * 0.3 + (floor if r.random() < 0.5 else 0), h - floor * 0.6, floor)
        zs = np.arange(max(z0, 0.5) + uniform(r, 0.4, 1.2), z1 - ww - 0.3, sp)
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
            zz = uniform(r, z0, max(z0 + 0.1, z1 - 4))
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
            step = uniform(r, 1.5, 3.0)
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
            x = s * (xb + uniform(r, 10, 30))
            h = uniform(r, 8, 30)
            cv.poly(
                [[x, 0, z0 - 5], [x, 0, z1 + 5], [x, h, z1 + 5], [x, h, z0 - 5]],
                inst,
                SIDE_A if s < 0 else SIDE_B,
            )
        if r.random() < 0.7:
            inst = cv.new(VEGETATION)
            for _ in range(int(r.integers(2, 6))):
                zz = uniform(r, z0, z1)
                rad = uniform(r, 2.0, 5.0)
                cv.sphere(
                    inst,
                    int(r.choice([BASE, SIDE_A, DARK])),
                    [s * (xb + uniform(r, 2, 10)), uniform(r, 3, 9), zz],
                    rad,
                )
        roll = r.random()
        if roll < 0.4:
            self._barrier(WALL, s * (xb - 0.2), max(z0, 0.5), z1, uniform(r, 1.0, 2.6))
        elif roll < 0.8:
            self._barrier(FENCE, s * (xb - 0.2), max(z0, 0.5), z1, uniform(r, 1.0, 2.2))

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
                    specs.append((side, self.cross[0] - uniform(r, 0.5, 2.0), "light"))
        for side, z, force in specs:
            if self.sw[side] <= 0 and force is None and r.random() < 0.5:
                continue
            x = self._kerb_x(side, uniform(r, 0.3, 0.6))
            if self.fp.try_add(x, z, 0, 0.4, 0.4, margin=0.2) is None:
                continue
            h = uniform(r, 3.5, 8.5)
            kind = force or r.choice(
                ["sign", "light", "lamp", "sign+light", "plain"], p=[0.4, 0.2, 0.2, 0.1, 0.1]
            )
            self._add(z, functools.partial(self._pole, x, z, h, str(kind)))

    def _pole(self, x: float, z: float, h: float, kind: str) -> None:
        cv, r = self.cv, self.rng
        pole = cv.new(POLE)
        w = uniform(r, 0.12, 0.24)
        cv.box(pole, x, z, 0.0, w, w, 0.0, h)
        s_in = 1.0 if x < 0 else -1.0  # towards the road centre
        if "sign" in kind:
            sign = cv.new(SIGN)
            sz = uniform(r, 0.5, 0.9)
            y = uniform(r, 2.0, min(3.2, h - 0.4))
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
                ww = sz * uniform(r, 0.8, 1.8)
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
                arm = uniform(r, 2.0, 5.5)
                ya = h - 0.3
                cv.box(pole, x + s_in * arm / 2, z, 0.0, 0.12, arm, ya - 0.06, ya + 0.06)
                lx, ly = x + s_in * (arm - 0.3), ya - 0.1
            else:
                lx, ly = x, min(h, 3.6)
            self._traffic_light(light, lx, ly, z - w / 2 - 0.2)
        if kind == "lamp":
            arm = uniform(r, 1.0, 2.5)
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
            x = self._kerb_x(
                side, self.sw[side] - uniform(r, 0.5, 0.9) if self.sw[side] > 1.2 else 0.6
            )
            z = uniform(r, 2.0, 12.0)
            step = uniform(r, 7.0, 14.0)
            while z < 90:
                if not self._in_cross(z, z, 3) and self.fp.try_add(x, z, 0, 0.5, 0.5, 0.2):
                    self._add(z, functools.partial(self._tree, x, z))
                z += step * uniform(r, 0.8, 1.2)
        for side in (0, 1):  # bushes / lone trees on terrain strips
            if self.terr[side] <= 0:
                continue
            for _ in range(int(r.poisson(1.5))):
                x = self._kerb_x(side, self.sw[side] + uniform(r, 0.3, self.terr[side]))
                z = self._depth_z(4.0, 60.0)
                if self.fp.try_add(x, z, 0, 1.0, 1.0, 0.1):
                    self._add(z, functools.partial(self._bush, x, z))

    def _tree(self, x: float, z: float) -> None:
        cv, r = self.cv, self.rng
        inst = cv.new(VEGETATION)
        th = uniform(r, 2.0, 3.5)
        tw = uniform(r, 0.22, 0.4)
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
        rad = uniform(r, 1.4, 3.2)
        cy = th + rad * 0.8
        for _ in range(int(r.integers(3, 7))):
            off = r.normal(0, rad * 0.35, 3)
            cv.sphere(
                inst,
                int(r.choice([BASE, SIDE_A, SIDE_B, DARK, BRIGHT])),
                [x + off[0], cy + off[1], z + off[2]],
                rad * uniform(r, 0.55, 0.85),
            )

    def _bush(self, x: float, z: float) -> None:
        cv, r = self.cv, self.rng
        inst = cv.new(VEGETATION)
        rad = uniform(r, 0.5, 1.2)
        for _ in range(int(r.integers(2, 4))):
            off = r.normal(0, rad * 0.4, 2)
            cv.sphere(
                inst,
                int(r.choice([BASE, SIDE_A, DARK])),
                [x + off[0], rad * 0.8, z + off[1]],
                rad * uniform(r, 0.6, 0.9),
            )

    def _pedestrian(self) -> None:
        r = self.rng
        crossing = r.random() < 0.2
        if crossing:
            z = (
                self.cross[0] - uniform(r, 1.0, 4.0)
                if self.cross and r.random() < 0.6
                else self._depth_z(4.0, 40.0)
            )
            x = uniform(r, -self.road[0], self.road[1])
            heading = math.pi / 2 if r.random() < 0.5 else -math.pi / 2
        else:
            side = int(r.integers(0, 2))
            if self.sw[side] <= 0:
                return
            x = self._kerb_x(side, uniform(r, 0.4, max(0.5, self.sw[side] - 0.3)))
            z = self._depth_z(3.5, 60.0)
            heading = 0.0 if r.random() < 0.5 else math.pi
            heading += r.normal(0, 0.3)
        n = 1 if r.random() < 0.7 else int(r.integers(2, 4))
        for k in range(n):
            xx = x + (k and r.normal(0, 0.5))
            zz = z + (k and r.normal(0, 0.8))
            if self.fp.try_add(xx, zz, heading, 0.35, 0.6, margin=0.05) is None:
                continue
            h = uniform(r, 1.55, 1.95) if r.random() < 0.9 else uniform(r, 1.05, 1.4)
            walk = uniform(r, -1, 1) if r.random() < 0.75 else 0.0
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
            z = uniform(r, self.cross[0] + 1.5, self.cross[1] - 1.5)
            x = uniform(r, -self.xb[0] + 2, self.xb[1] - 2)
            heading = math.pi / 2 if r.random() < 0.5 else -math.pi / 2
        else:
            side = int(r.integers(0, 2))
            x = self._kerb_x(side, -uniform(r, 0.6, 1.6))
            z = self._depth_z(4.0, 50.0)
            heading = 0.0 if (side == 1 or not self.two_way or r.random() < 0.3) else math.pi
            heading += r.normal(0, 0.08)
        length = 1.9 if motor else 1.7
        if self.fp.try_add(x, z, heading, length, 0.7, margin=0.1) is None:
            return
        h = uniform(r, 1.6, 1.9)
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
        x = self._kerb_x(side, uniform(r, 0.5, max(0.6, self.sw[side] - 0.5)))
        z = self._depth_z(4.0, 40.0)
        heading = uniform(r, -math.pi, math.pi)
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
            CAR: (uniform(r, 3.8, 4.9), uniform(r, 1.7, 1.9)),
            TRUCK: (uniform(r, 7.0, 10.0), 2.5),
            BUS: (uniform(r, 10.5, 12.5), 2.55),
            TRAIN: (uniform(r, 20.0, 32.0), 2.6),
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
            x = self._kerb_x(side, -uniform(r, 0.95, 1.15))
            z = uniform(r, 2.0, 14.0)
            for _ in range(int(r.integers(2, 9))):
                length = uniform(r, 3.8, 4.9)
                if r.random() > 0.2 and not self._in_cross(z, z + length, 1.0):
                    zc = z + length / 2
                    heading = r.normal(0, 0.03) + (math.pi if r.random() < 0.3 else 0.0)
                    cls = CAR if r.random() < 0.93 else TRUCK
                    if cls == TRUCK:
                        length = uniform(r, 6.0, 8.0)
                        zc = z + length / 2
                    width = uniform(r, 1.7, 1.9) if cls == CAR else 2.4
                    if self.fp.try_add(x, zc, heading, length, width, margin=0.2):
                        self._add(
                            z,
                            functools.partial(
                                self._draw_vehicle, cls, x, zc, heading, length, width
                            ),
                        )
                z += length + uniform(r, 0.6, 2.5)

    def _cross_vehicle(self) -> None:
        r = self.rng
        z0, z1 = self.cross
        half = (z1 - z0) / 2
        heading = math.pi / 2 if r.random() < 0.5 else -math.pi / 2
        z = z0 + half + (half / 2 if heading > 0 else -half / 2) + r.normal(0, 0.3)
        x = uniform(r, -self.xb[0] - 2, self.xb[1] + 2)
        cls = CAR if r.random() < 0.8 else (BUS if r.random() < 0.5 else TRUCK)
        length, width = (uniform(r, 3.8, 4.9), 1.8) if cls == CAR else (uniform(r, 8.0, 12.0), 2.5)
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
            h = uniform(r, 1.35, 1.6)
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
            yb = uniform(r, 0.82, 0.95)
            cv.box(inst, x, z, heading, length, width, 0.25 if wheels else 0.0, yb)
            cl = length * uniform(r, 0.45, 0.58)
            off = -length * uniform(r, 0.0, 0.1)
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
            hc = uniform(r, 3.2, 3.9)
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
