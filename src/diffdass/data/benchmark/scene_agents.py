"""Road users of the benchmark's scene grammar: pedestrians (walking or standing, groups,
crossing), riders on bicycles and motorcycles, parked two-wheelers, and parked and moving
cars, trucks, buses and trams. Methods of :class:`~.scene.Scene` (a mixin: they draw with
the scene's canvas and random generator, in the scene's fixed order)."""

from __future__ import annotations

import functools
import math

import numpy as np

from .common import (
    ACCENT,
    BASE,
    BICYCLE,
    BRIGHT,
    BUS,
    CAR,
    DARK,
    GLASS,
    LAMP_R,
    MOTORCYCLE,
    PERSON,
    RIDER,
    SIDE_A,
    SKIN,
    TIRE,
    TOP,
    TRAIN,
    TRUCK,
    uniform,
)


class AgentsMixin:
    """Pedestrians, riders, two-wheelers and vehicles of a :class:`~.scene.Scene`."""

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

        def big_wheels(positions) -> None:  # a truck's or a bus's pairs of 1 m wheels
            for a in positions:
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
            big_wheels((length / 2 - 1.0, -length / 2 + 1.2, -length / 2 + 2.5))
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
                big_wheels((length / 2 - 2.5, -length / 2 + 3.0))
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
