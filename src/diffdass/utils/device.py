"""Device selection and the per-device compute settings (backend flags, memory format,
data-loader options, mixed precision): every one of them is a no-op on the CPU unless asked
for (``amp: bf16``), so CPU results do not depend on them by default."""

from __future__ import annotations

import contextlib
from typing import Literal, TypeVar

import torch

from diffdass.utils.config import ConfigError

VALID_DEVICES = "auto, cpu, cuda, cuda:N, mps"

M = TypeVar("M", bound=torch.nn.Module)

#: the type of every stage's ``amp`` setting: ``true`` (bf16 autocast on CUDA, float32
#: elsewhere: the default), ``false`` (float32 everywhere) or ``bf16`` (bf16 autocast on CUDA
#: and on the CPU too)
Amp = bool | Literal["bf16"]


def amp_dtype(device: torch.device, amp: Amp) -> torch.dtype | None:
    """The autocast dtype a stage with setting ``amp`` computes in on ``device`` (None:
    float32). ``True`` means bf16 on CUDA only, because a CPU's float32 results are the
    reproducible reference; ``"bf16"`` extends it to the CPU, where bf16 matrix units make
    training and translation about 1.4-1.7x faster (docs/performance.md)."""
    if amp is True and device.type == "cuda":
        return torch.bfloat16
    if amp == "bf16" and device.type in ("cuda", "cpu"):
        return torch.bfloat16
    return None


def autocast(device: torch.device, amp: Amp = True):
    """The mixed-precision context of a forward on ``device`` under setting ``amp``
    (:func:`amp_dtype`): ``torch.autocast`` in bf16, or a no-op context."""
    dtype = amp_dtype(device, amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


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


def configure_backends(device: torch.device) -> None:
    """Tune the torch backends for computing on ``device``; a no-op unless it is CUDA.

    On CUDA: ``torch.backends.cudnn.benchmark = True`` (cuDNN times its convolution
    algorithms for every new input shape and keeps the fastest; fixed-size crops and
    translation batches pay this once) and TF32 for float32 matrix products and convolutions
    (``torch.backends.cuda.matmul.allow_tf32``, ``torch.backends.cudnn.allow_tf32``; bf16
    autocast regions are unaffected). Both trade bit-reproducibility between GPU runs for
    speed. Sets nothing but these three process-wide flags, and only for a CUDA ``device``:
    a CPU run leaves them at torch's defaults.
    """
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def memory_format(device: torch.device) -> torch.memory_format:
    """The memory format convolutional models and their 4-D inputs use on ``device``:
    ``torch.channels_last`` on CUDA (the layout cuDNN's tensor-core convolutions run in),
    ``torch.preserve_format`` elsewhere (``x.to(device, memory_format=...)`` then neither
    copies nor re-lays-out a CPU tensor)."""
    return torch.channels_last if device.type == "cuda" else torch.preserve_format


def channels_last(module: M, device: torch.device) -> M:
    """``module`` (in place) with its 4-D weights in channels-last layout when ``device`` is
    CUDA; returned unchanged elsewhere. The layout changes strides only, never values or the
    parameter objects (optimisers built before stay valid)."""
    if device.type == "cuda":
        module.to(memory_format=torch.channels_last)
    return module


def loader_options(device: torch.device, num_workers: int) -> dict:
    """Keyword arguments of a ``DataLoader`` that feeds ``device`` with ``num_workers``
    worker processes: on CUDA, pinned host memory (``pin_memory``: asynchronous copies to
    the GPU) and, with workers, ``persistent_workers`` (the workers outlive a pass over the
    loader instead of being started again for the next one); neither elsewhere. The batches
    themselves do not depend on these options."""
    cuda = device.type == "cuda"
    return {
        "num_workers": num_workers,
        "pin_memory": cuda,
        "persistent_workers": cuda and num_workers > 0,
    }
