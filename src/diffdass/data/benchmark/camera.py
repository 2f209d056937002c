"""Camera and rasteriser of the benchmark generator.

:class:`Camera` is a pinhole dashcam: at height ``height`` above the ground plane Y = 0,
looking along +Z (with a small yaw), X to the right, Y up, all lengths in metres; focal
length and principal point are in pixels. :func:`clip_poly` is a Sutherland-Hodgman clip
against one axis-aligned plane (the near plane, or the guard band around the image).

:class:`Canvas` rasterises projected 3-D primitives -- planar polygons, oriented boxes
(the visible faces only, tagged with a part code per face orientation), spheres, rods and
wheels -- into one int32 map of ``instance * 16 + part``. Primitives are drawn in the order
they are issued (the scene draws far to near), with 3 bits of sub-pixel precision.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .common import BASE, BOTTOM, FRONT, SIDE_A, SIDE_B, SKY, TOP


class Camera:
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


def clip_poly(poly: np.ndarray, axis: int, bound: float, keep_greater: bool) -> np.ndarray:
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


def ground_coords(cam: Camera, H: int, W: int):
    """World (X, Z) of the ground point seen by each pixel (undefined above the horizon)."""
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32) + 0.5
    yn = (cam.cy - ys) / cam.f
    xn = (xs - cam.cx) / cam.f
    t = cam.height / np.maximum(-yn, 1e-4)
    xc, zc = xn * t, t
    return cam.c * xc + cam.s * zc, -cam.s * xc + cam.c * zc


def plane_x_coords(cam: Camera, H: int, W: int, x_plane: float):
    """World (Y, Z) of the point of the vertical plane X = ``x_plane`` seen by each pixel.

    (A street-parallel facade.) Pixels whose ray does not meet the plane in front of the
    camera get Z = inf.
    """
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32) + 0.5
    yn = (cam.cy - ys) / cam.f
    xn = (xs - cam.cx) / cam.f
    dx = cam.c * xn + cam.s  # world X component of the ray (camera z = 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(dx * x_plane > 1e-6, x_plane / dx, np.inf).astype(np.float32)
        y = cam.height + t * yn
        z = t * (cam.c - cam.s * xn)
    return y, z


# Box corners: index = 4 * (along heading > 0) + 2 * (along right > 0) + (up > 0).
_BOX_SIGNS = np.array(
    [[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], dtype=np.float64
)
_FACE_NAMES = ("front", "rear", "side", "side", "top", "bottom")
_FACE_QUADS = np.array(
    [[4, 6, 7, 5], [0, 2, 3, 1], [2, 6, 7, 3], [0, 4, 5, 1], [1, 3, 7, 5], [0, 2, 6, 4]]
)
_FACE_QUADS_T = tuple(tuple(int(i) for i in q) for q in _FACE_QUADS)


class Canvas:
    """Rasterises projected primitives into one int32 map of ``instance * 16 + part``."""

    GUARD = 4.0  # polygons are clipped to the image enlarged by this factor

    def __init__(self, cam: Camera):
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
            xy = clip_poly(xy, 0, -g * W, True)
        if len(xy) and hi[0] > (g + 1) * W:
            xy = clip_poly(xy, 0, (g + 1) * W, False)
        if len(xy) and lo[1] < -g * H:
            xy = clip_poly(xy, 1, -g * H, True)
        if len(xy) and hi[1] > (g + 1) * H:
            xy = clip_poly(xy, 1, (g + 1) * H, False)
        if len(xy) >= 3:
            cv2.fillPoly(self.ids, [self._to_int(xy)], inst * 16 + part, cv2.LINE_8, 3)

    def _visible(self, xy: np.ndarray) -> bool:
        lo, hi = xy.min(0), xy.max(0)
        return hi[0] >= -1 and lo[0] <= self.cam.W + 1 and hi[1] >= -1 and lo[1] <= self.cam.H + 1

    # 3-D -------------------------------------------------------------
    def poly(self, pts, inst: int, part: int) -> None:
        """Fill a planar 3-D polygon (world coordinates)."""
        pc = self.cam.to_cam(np.asarray(pts, dtype=np.float64))
        if pc[:, 2].min() < Camera.ZNEAR:
            pc = clip_poly(pc, 2, Camera.ZNEAR, True)
            if len(pc) < 3:
                return
        self.fill2d(self.cam.project_cam(pc), inst, part)

    def polys(self, quads: np.ndarray, inst: int, part: int) -> None:
        """Fill many small 3-D quads (n, 4, 3) at once; quads crossing the near plane are dropped."""
        if len(quads) == 0:
            return
        pc = self.cam.to_cam(quads)
        pc = pc[pc[:, :, 2].min(axis=1) > Camera.ZNEAR]
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
        if min(p[2] for p in corners) > Camera.ZNEAR:
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
        if pc[2] < Camera.ZNEAR + radius:
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
        if pc[:, 2].min() < Camera.ZNEAR:
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
        if pc[:, 2].min() < Camera.ZNEAR:
            return
        xy = self.cam.project_cam(pc)
        if not self._visible(xy):
            return
        if filled:
            self.fill2d(xy, inst, part)
            return
        t = max(1, int(round(self.cam.f * thickness / pc[:, 2].mean())))
        cv2.polylines(self.ids, [self._to_int(xy)], True, inst * 16 + part, t, cv2.LINE_8, 3)
