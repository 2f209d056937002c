"""Device selection."""

from __future__ import annotations

import torch

from diffdass.utils.config import ConfigError

VALID_DEVICES = "auto, cpu, cuda, cuda:N, mps"


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA if available else CPU; an unavailable CUDA request is an error.

    Raises:
        ConfigError: ``name`` is none of auto, cpu, cuda, cuda:N, mps.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device: {name!r} is not a device; valid: {VALID_DEVICES}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device {name!r} requested but MPS is not available")
    return dev
