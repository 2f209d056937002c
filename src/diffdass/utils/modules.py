"""Small helpers for any ``nn.Module`` that the diffusion, evaluation and adaptation stages share."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

__all__ = ["eval_mode", "output_logits"]


def output_logits(out: Any) -> Tensor:
    """Logits from a segmenter's output: a tensor, a tuple/list (first item), a dict (``"out"``
    or its first value) or an object with ``.logits``."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, dict):
        return out["out"] if "out" in out else next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        return out[0]
    if hasattr(out, "logits"):
        return out.logits
    raise TypeError(f"cannot get logits from a model output of type {type(out).__name__}")


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode, restoring each one's own ``training`` flag after."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, was in flags:
            m.training = was
