"""Exponential moving average (EMA) of a module's weights.

DDPMs are sampled from an EMA of their weights (Ho et al. 2020 use decay 0.9999), and
DAFormer-style self-training uses an EMA teacher. At update number ``step`` (0 for the first
update), each floating-point parameter's shadow becomes::

    shadow <- d * shadow + (1 - d) * param,   d = decay                               (warmup=False)
                                              d = min(decay, (1 + step) / (10 + step))  (warmup=True)

Buffers (e.g. BatchNorm running statistics) and non-floating-point parameters are copied,
not averaged. Pure torch; no global state.

Shadows on a CUDA device are updated with ``torch._foreach_*`` ops (a few fused kernels for
the whole model instead of two per parameter), the same formula (``mul_`` then ``add_``).
Shadows on the CPU keep the per-parameter loop: there the foreach ops give the same bits
for float32/float64 but not for every dtype (a bfloat16 ``_foreach_mul_`` rounds the decay
first), and they would not be faster.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


class EMA:
    """EMA copy of ``model``'s parameters (plus a plain copy of its buffers).

    Args:
        model: the module to track; its current weights initialise the shadow.
        decay: EMA decay (default 0.9999).
        warmup: use ``min(decay, (1 + step) / (10 + step))`` so early updates are not
            dominated by the random initialisation.

    Attributes:
        shadow: ``{parameter name: averaged tensor}``.
        buffers: ``{buffer name: copied tensor}``.
        step: number of :meth:`update` calls so far.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = False) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.step = 0
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().clone() for name, p in model.named_parameters()
        }
        self.buffers: dict[str, torch.Tensor] = {
            name: b.detach().clone() for name, b in model.named_buffers()
        }
        # key order of model.state_dict() (persistent buffers only) for shadow_state_dict()
        self._state_keys = [k for k in model.state_dict() if k in self.shadow or k in self.buffers]

    def current_decay(self) -> float:
        """Decay the next :meth:`update` will use."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.step) / (10.0 + self.step))

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Fold ``model``'s current weights into the average; returns the decay used."""
        d = self.current_decay()
        params = dict(model.named_parameters())
        _check_keys("parameters", self.shadow, params)
        buffers = dict(model.named_buffers())
        _check_keys("buffers", self.buffers, buffers)
        fused_s, fused_p = [], []
        for name, p in params.items():
            s = self.shadow[name]
            if not s.is_floating_point():
                s.copy_(p.detach())
            elif _fused(s):
                fused_s.append(s)
                fused_p.append(p.detach().to(device=s.device, dtype=s.dtype))
            else:
                s.mul_(d).add_(p.detach().to(device=s.device, dtype=s.dtype), alpha=1.0 - d)
        if fused_s:
            ema_foreach_(fused_s, fused_p, d)
        _copy_all([(self.buffers[name], b.detach()) for name, b in buffers.items()])
        self.step += 1
        return d

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s parameters and buffers with the EMA values."""
        params = dict(model.named_parameters())
        _check_keys("parameters", self.shadow, params)
        buffers = dict(model.named_buffers())
        _check_keys("buffers", self.buffers, buffers)
        _copy_all(
            [(p, self.shadow[name]) for name, p in params.items()]
            + [(b, self.buffers[name]) for name, b in buffers.items()]
        )

    def module_copy(self, model: M) -> M:
        """A deep copy of ``model`` carrying the EMA weights (``model`` is left untouched)."""
        clone = copy.deepcopy(model)
        self.copy_to(clone)
        return clone

    def shadow_state_dict(self) -> dict[str, torch.Tensor]:
        """The EMA weights in the layout of ``model.state_dict()`` (loadable with strict=True)."""
        return {
            k: (self.shadow[k] if k in self.shadow else self.buffers[k]) for k in self._state_keys
        }

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> EMA:
        """Move the shadow tensors (floating-point ones are cast to ``dtype`` if given)."""
        for store in (self.shadow, self.buffers):
            for name, t in store.items():
                store[name] = t.to(device=device, dtype=dtype if t.is_floating_point() else None)
        return self

    def state_dict(self) -> dict[str, Any]:
        """``{"decay", "warmup", "step", "shadow": {param: tensor}, "buffers": {buffer: tensor}}``."""
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "step": self.step,
            "shadow": {k: v.clone() for k, v in self.shadow.items()},
            "buffers": {k: v.clone() for k, v in self.buffers.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`.

        Also accepts ``{"shadow": <a module state_dict (parameters and buffers)>, "step": n}``
        (e.g. :meth:`shadow_state_dict` read back from a checkpoint). Every parameter must be
        present; buffers that are absent keep their current values; ``decay``/``warmup`` are
        kept unless given.
        """
        shadow = dict(state["shadow"])
        shadow.update(state.get("buffers", {}))
        missing = sorted(set(self.shadow) - set(shadow))
        unknown = sorted(set(shadow) - set(self.shadow) - set(self.buffers))
        if missing or unknown:
            raise KeyError(
                f"EMA state does not match the model: missing {missing[:5]}, unexpected {unknown[:5]}"
            )
        for name, t in shadow.items():
            store = self.shadow if name in self.shadow else self.buffers
            store[name] = t.detach().clone().to(device=store[name].device, dtype=store[name].dtype)
        self.decay = float(state.get("decay", self.decay))
        self.warmup = bool(state.get("warmup", self.warmup))
        self.step = int(state.get("step", state.get("num_updates", self.step)))


def _check_keys(what: str, ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> None:
    if ours.keys() != theirs.keys():
        missing = sorted(set(ours) - set(theirs))[:5]
        extra = sorted(set(theirs) - set(ours))[:5]
        raise KeyError(f"EMA {what} do not match the model: missing {missing}, unexpected {extra}")


def _fused(t: torch.Tensor) -> bool:
    """Whether ``t`` is updated by the foreach ops (CUDA tensors; see the module)."""
    return t.is_cuda


def ema_foreach_(shadows: list[torch.Tensor], params: list[torch.Tensor], d: float) -> None:
    """``s <- d * s + (1 - d) * p`` for every pair, as ``s.mul_(d).add_(p, alpha=1 - d)`` in
    two foreach ops (``params`` already on the shadows' devices and dtypes)."""
    torch._foreach_mul_(shadows, d)
    torch._foreach_add_(shadows, params, alpha=1.0 - d)


def _copy_all(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """``dst.copy_(src)`` for every pair: one ``torch._foreach_copy_`` for the CUDA pairs
    whose two tensors share device and dtype, ``copy_`` for the others (exact either way)."""
    fused = [_fused(d) and d.device == s.device and d.dtype == s.dtype for d, s in pairs]
    if any(fused):
        torch._foreach_copy_(
            [d for (d, _), f in zip(pairs, fused, strict=True) if f],
            [s for (_, s), f in zip(pairs, fused, strict=True) if f],
        )
    for (d, s), f in zip(pairs, fused, strict=True):
        if not f:
            d.copy_(s)
