"""TensorBoard event files without TensorBoard: a small writer and reader of the format.

An event file is a sequence of records (TFRecord framing: length, masked CRC-32C of the
length, data, masked CRC-32C of the data), each an ``Event`` protocol buffer: wall time,
step, and a ``Summary`` of tagged values (a scalar ``simple_value`` or a PNG image). Only
the handful of fields the training curves need are encoded, by hand, so logging needs no
protobuf or tensorboard package; ``tensorboard --logdir RUN`` reads the files as it reads
its own.

A writer always starts a new file (``events.out.tfevents.<seconds>.<nanoseconds>.<host>.<pid>``) in its
folder; TensorBoard merges the files of a folder in name order. ``purge_step`` (a resumed
training) writes a restart marker first: TensorBoard then drops the points at that step and
later that an interrupted earlier process logged past its last checkpoint, and
:func:`read_scalars` does the same.
"""

from __future__ import annotations

import io
import os
import socket
import struct
import time
from pathlib import Path

import numpy as np

FILE_PATTERN = "events.out.tfevents.*"


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``, as TFRecord framing uses it."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ------------------------------------------------------------------ protobuf encoding
def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 values take ten bytes, as in protobuf
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field_varint(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _field_bytes(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _event(step: int, wall_time: float | None = None, **fields: bytes) -> bytes:
    """An ``Event``: wall_time (1, double), step (2, int64), then one of file_version (3),
    summary (5), session_log (6)."""
    numbers = {"file_version": 3, "summary": 5, "session_log": 6}
    data = _varint(1 << 3 | 1) + struct.pack("<d", time.time() if wall_time is None else wall_time)
    data += _field_varint(2, int(step))
    for name, value in fields.items():
        data += _field_bytes(numbers[name], value)
    return data


def _scalar_value(tag: str, value: float) -> bytes:
    """A ``Summary.Value``: tag (1), simple_value (2, float)."""
    return _field_bytes(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", float(value))


def _image_value(tag: str, image: np.ndarray) -> bytes:
    """A ``Summary.Value``: tag (1), image (4: height, width, colorspace, PNG bytes)."""
    from PIL import Image

    img = np.ascontiguousarray(image)
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise ValueError(f"image {tag!r}: expected a uint8 (H, W) or (H, W, C) array")
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    channels = 1 if img.ndim == 2 else img.shape[2]
    proto = _field_varint(1, img.shape[0]) + _field_varint(2, img.shape[1])
    proto += _field_varint(3, channels) + _field_bytes(4, buf.getvalue())
    return _field_bytes(1, tag.encode()) + _field_bytes(4, proto)


class EventWriter:
    """Append scalars and images to a new event file in ``logdir`` (see the module).

    ``purge_step``: the first step this writer logs when it continues an earlier run; points
    of earlier files at that step or later are dropped by the readers.
    """

    def __init__(self, logdir: str | Path, purge_step: int | None = None) -> None:
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        sec, ns = divmod(time.time_ns(), 1_000_000_000)  # the name orders the files
        name = f"events.out.tfevents.{sec:010d}.{ns:09d}.{socket.gethostname()}.{os.getpid()}"
        self.path = self.logdir / name
        self._fh = open(self.path, "ab")  # closed by close()
        self._write(_event(purge_step or 0, file_version=b"brain.Event:2"))
        if purge_step is not None:
            self._write(_event(purge_step, session_log=_field_varint(1, 1)))  # status START
        self.flush()

    def _write(self, data: bytes) -> None:
        header = struct.pack("<Q", len(data))
        self._fh.write(header + struct.pack("<I", _masked_crc(header)))
        self._fh.write(data + struct.pack("<I", _masked_crc(data)))

    def add_scalars(self, values: dict[str, float], step: int) -> None:
        """One event holding every ``{tag: value}`` at ``step``."""
        if values:
            summary = b"".join(_field_bytes(1, _scalar_value(t, v)) for t, v in values.items())
            self._write(_event(step, summary=summary))
            self.flush()

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.add_scalars({tag: value}, step)

    def add_image(self, tag: str, image: np.ndarray, step: int) -> None:
        """A uint8 ``(H, W)`` or ``(H, W, 3)`` image, stored as PNG."""
        self._write(_event(step, summary=_field_bytes(1, _image_value(tag, image))))
        self.flush()

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- reading
def _fields(data: bytes):
    """``(field number, wire type, value)`` of a protocol buffer message."""
    i = 0
    while i < len(data):
        key, i = _read_varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(data, i)
        elif wire == 1:
            value, i = data[i : i + 8], i + 8
        elif wire == 2:
            n, i = _read_varint(data, i)
            value, i = data[i : i + n], i + n
        elif wire == 5:
            value, i = data[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def read_records(path: str | Path) -> list[bytes]:
    """The records of one event file, their checksums verified (a torn last record, as a
    killed writer leaves, ends the list)."""
    data = Path(path).read_bytes()
    out, i = [], 0
    while i + 12 <= len(data):
        header = data[i : i + 8]
        (n,) = struct.unpack("<Q", header)
        if struct.unpack("<I", data[i + 8 : i + 12])[0] != _masked_crc(header):
            raise ValueError(f"{path}: damaged event record header at byte {i}")
        if i + 16 + n > len(data):
            break
        body = data[i + 12 : i + 12 + n]
        if struct.unpack("<I", data[i + 12 + n : i + 16 + n])[0] != _masked_crc(body):
            raise ValueError(f"{path}: damaged event record at byte {i}")
        out.append(body)
        i += 16 + n
    return out


def read_events(path: str | Path) -> list[dict]:
    """The events of one file: ``{"step", "wall_time"}`` plus ``"file_version"``,
    ``"restart"`` (a purge marker) or ``"values"``: ``[{"tag", "scalar"}]`` or ``[{"tag",
    "image": (height, width, channels, png bytes)}]``."""
    events = []
    for rec in read_records(path):
        ev: dict = {"step": 0}
        for number, _, value in _fields(rec):
            if number == 1:
                ev["wall_time"] = struct.unpack("<d", value)[0]
            elif number == 2:
                ev["step"] = value - (1 << 64) if value >= 1 << 63 else value
            elif number == 3:
                ev["file_version"] = value.decode()
            elif number == 5:
                ev["values"] = [_read_value(v) for n, _, v in _fields(value) if n == 1]
            elif number == 6:
                ev["restart"] = dict((n, v) for n, _, v in _fields(value)).get(1) == 1
        events.append(ev)
    return events


def _read_value(data: bytes) -> dict:
    out: dict = {}
    for number, _, value in _fields(data):
        if number == 1:
            out["tag"] = value.decode()
        elif number == 2:
            out["scalar"] = struct.unpack("<f", value)[0]
        elif number == 4:
            img = {n: v for n, _, v in _fields(value)}
            out["image"] = (img.get(1, 0), img.get(2, 0), img.get(3, 0), img.get(4, b""))
    return out


def event_files(logdir: str | Path) -> list[Path]:
    """The event files of ``logdir`` in the order TensorBoard reads them (by name)."""
    return sorted(Path(logdir).glob(FILE_PATTERN))


def read_scalars(logdir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of every event file of ``logdir``, read in order; a
    restart marker drops the earlier points at its step or later, as TensorBoard does."""
    series: dict[str, list[tuple[int, float]]] = {}
    for path in event_files(logdir):
        for ev in read_events(path):
            if ev.get("restart"):
                for tag, points in series.items():
                    series[tag] = [p for p in points if p[0] < ev["step"]]
            for v in ev.get("values", ()):
                if "scalar" in v:
                    series.setdefault(v["tag"], []).append((ev["step"], v["scalar"]))
    return series


def read_images(logdir: str | Path) -> dict[str, list[tuple[int, tuple[int, int, int]]]]:
    """``{tag: [(step, (height, width, channels)), ...]}`` of the images of ``logdir``."""
    out: dict[str, list] = {}
    for path in event_files(logdir):
        for ev in read_events(path):
            for v in ev.get("values", ()):
                if "image" in v:
                    out.setdefault(v["tag"], []).append((ev["step"], v["image"][:3]))
    return out
