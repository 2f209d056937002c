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

import math

import numpy as np

from .camera import Canvas
from .common import (
    BASE,
    BICYCLE,
    BRIGHT,
    BUILDING,
    BUS,
    CAR,
    DARK,
    FENCE,
    GLASS,
    MARK,
    MOTORCYCLE,
    ROAD,
    SIDE_A,
    SIDE_B,
    SIDEWALK,
    TERRAIN,
    TRAIN,
    TRUCK,
    VEGETATION,
    WALL,
    uniform,
)
from .scene_agents import AgentsMixin
from .scene_furniture import FurnitureMixin


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


class Scene(FurnitureMixin, AgentsMixin):
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
