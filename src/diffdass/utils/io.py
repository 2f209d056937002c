"""Atomic file writes: a crash or a bad input never leaves a half-written output behind.

Every writer writes to a temporary file in the destination directory, flushes it, then
``os.replace``-s it over the destination (atomic on POSIX).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _atomic(path: str | Path, write: Callable[[str], None], suffix: str = "") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    except OSError as exc:  # e.g. a read-only folder: name the output, not the temporary file
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    os.close(fd)
    try:
        try:
            write(tmp)
        except OSError as exc:  # e.g. a full disk: name the output, not the temporary file
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
        except Exception as exc:
            # writers that wrap OS errors in their own type (safetensors' SafetensorError)
            msg = str(exc)
            for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
                if os.strerror(code) in msg:
                    raise OSError(code, os.strerror(code), str(path)) from None
            raise
        # mkstemp creates 0600, and a writer may replace the file (safetensors writes its own
        # temporary file and renames it), so set the mode a plain open() would give now
        os.chmod(tmp, 0o666 & ~_UMASK)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return _atomic(path, lambda t: Path(t).write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj) -> Path:
    return atomic_write_text(
        path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    )


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_image(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8 (H, W) or (H, W, 3) array as PNG/JPEG, atomically."""
    from PIL import Image

    path = Path(path)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    img = Image.fromarray(np.ascontiguousarray(array))
    return _atomic(path, lambda t: img.save(t, format=fmt), suffix=path.suffix)


def save_tensors(
    path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: dict | None = None
) -> Path:
    """Save a flat dict of tensors as safetensors, atomically (metadata values become str)."""
    from safetensors.torch import save_file

    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    meta[CHECKSUM_KEY] = tensors_checksum(flat)
    return _atomic(path, lambda t: save_file(flat, t, metadata=meta), suffix=".safetensors")


#: the metadata key of the tensors' checksum in every file :func:`save_tensors` writes
CHECKSUM_KEY = "diffdass_sha256"


def tensors_checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``tensors`` (sorted by name)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, no copy
    return h.hexdigest()


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc
    expected = load_tensors_metadata(path).get(CHECKSUM_KEY)
    if expected is not None and tensors_checksum(tensors) != expected:
        raise ValueError(
            f"{path}: damaged (its tensors do not match the checksum written with them); "
            "use an earlier checkpoint or retrain"
        )
    if str(device) != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors


def load_tensors_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as exc:  # SafetensorError (garbage, empty or truncated file), OSError
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc
