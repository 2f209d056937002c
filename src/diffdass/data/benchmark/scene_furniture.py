"""Street furniture of the benchmark's scene grammar: poles carrying traffic signs, traffic
lights and street lamps; street trees and bushes. Methods of :class:`~.scene.Scene` (a mixin:
they draw with the scene's canvas and random generator, in the scene's fixed order)."""

from __future__ import annotations

import functools

from .common import (
    ACCENT,
    BASE,
    BRIGHT,
    DARK,
    LAMP_A,
    LAMP_G,
    LAMP_R,
    LIGHT,
    POLE,
    SIDE_A,
    SIDE_B,
    SIGN,
    VEGETATION,
    uniform,
)


class FurnitureMixin:
    """Poles (signs, traffic lights, lamps), trees and bushes of a :class:`~.scene.Scene`."""

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
