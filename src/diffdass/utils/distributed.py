"""One process or many: a thin layer over accelerate's process state.

Every long stage (``train-seg``, ``train-ddpm``, ``ptl``, ``evaluate``, ``translate``) runs
unchanged on one process or on several started by ``accelerate launch`` (``torchrun``
underneath: one process per GPU, or ``--cpu`` processes with the gloo backend). This module
is everything those stages need to know about it:

- :func:`world_size`, :func:`rank`, :func:`is_main`, :func:`barrier`;
- :func:`all_reduce_sum`, :func:`gather_objects`, :func:`broadcast_module`,
  :func:`all_reduce_gradients`, :func:`differentiable_all_reduce_sum`;
- sharding: :func:`shard` (strided, for work items such as evaluation images and
  translation batches), :func:`local_batch_size` / :func:`batch_offset` and
  :class:`ShardedBatchSampler` (a contiguous slice of each global batch);
- :func:`main_open` (the run directory is opened, logged to and written by the main process
  only) and :func:`sync_batchnorm` (BatchNorm statistics over the global batch).

Single process: nothing to set up, no environment variables. Unless a launcher started the
process (``WORLD_SIZE`` > 1 in the environment) or a process group already exists,
accelerate is not even imported, and every function answers the one-process value (rank 0,
world size 1, reductions and gathers return their input), so the one-process code paths
are exactly those of a run without this module. Under a launcher the state is accelerate's
``PartialState`` (a shared singleton owned by accelerate; this module keeps no state of its
own), which initialises the process group (NCCL on GPUs, gloo on CPUs).

Why gradients are all-reduced explicitly instead of wrapping the model in DDP (see
docs/performance.md): the loss of a sharded step is normalised by the *global* count of
labelled pixels, so the summed gradients equal the one-process gradient (DDP would average
per-rank means, which weighs ranks equally whatever their labelled pixels); the model stays
a plain module (checkpoints, ``param_groups``, the frozen guidance copy of PTL, BatchNorm
freezing work unchanged); and no buffer is broadcast from rank 0 behind the training loop's
back. The price is no overlap of communication with the backward pass.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch

# --------------------------------------------------------------------------- the state


def launched() -> bool:
    """Whether this process is one of several (a launcher's env, or a live process group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size() > 1
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def state():
    """accelerate's ``PartialState`` (initialises the process group on first use).

    CPU processes (no CUDA, or ``accelerate launch --cpu``, which sets ``ACCELERATE_USE_CPU``)
    get the gloo backend; accelerate would otherwise treat a CPU process as a lone one."""
    from accelerate import PartialState

    flag = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return PartialState(cpu=flag or not torch.cuda.is_available())


def world_size() -> int:
    return state().num_processes if launched() else 1


def rank() -> int:
    return state().process_index if launched() else 0


def local_rank() -> int:
    return state().local_process_index if launched() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    """Wait for every process (no-op on one)."""
    if launched():
        state().wait_for_everyone()


def device(resolved: torch.device) -> torch.device:
    """The device this process computes on: ``resolved`` (from the config), except that a
    CUDA request under a launcher means this process's own GPU (``cuda:LOCAL_RANK``)."""
    if launched() and resolved.type == "cuda":
        return state().device
    return resolved


# ------------------------------------------------------------------------ collectives


def collective_device() -> torch.device:
    """Where this process's collectives run: its GPU under NCCL, the CPU under gloo."""
    return state().device


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over all processes (a new tensor; the input itself on one).

    The tensor may live anywhere: it is reduced on :func:`collective_device` (NCCL takes
    only tensors on the process's GPU) and the sum comes back on ``tensor``'s device."""
    if not launched():
        return tensor
    from accelerate.utils import reduce

    return reduce(tensor.to(collective_device()), reduction="sum").to(tensor.device)


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose backward sums the incoming gradients over processes."""

    @staticmethod
    def forward(ctx, tensor):
        out = tensor.clone(memory_format=torch.contiguous_format)
        torch.distributed.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        return _AllReduceSum.apply(grad)


def differentiable_all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """:func:`all_reduce_sum` through which gradients flow (synchronised BatchNorm)."""
    return _AllReduceSum.apply(tensor) if launched() else tensor


def gather_objects(items: list) -> list:
    """Concatenation, in rank order, of every process's list (picklable items; tensors are
    best moved to the CPU first). One process: ``items`` itself."""
    if not launched():
        return items
    from accelerate.utils import gather_object

    return gather_object(list(items))


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy the parameters and buffers of process ``src`` into every process's ``module``."""
    if not launched():
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            torch.distributed.broadcast(t.data, src=src)


def all_reduce_gradients(params: Sequence[torch.nn.Parameter] | Iterator) -> None:
    """Sum the gradients of ``params`` over processes, in one flat buffer per dtype.

    The training loops normalise each process's loss by the global batch (labelled pixels,
    or the number of processes for a plain mean), so the sum is the one-process gradient.
    Parameters without a gradient are left out (every process has the same ones)."""
    if not launched():
        return
    grads = [p.grad for p in params if p.grad is not None]
    by_dtype: dict[tuple, list[torch.Tensor]] = {}
    for g in grads:
        by_dtype.setdefault((g.dtype, g.device), []).append(g)
    for group in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in group])
        torch.distributed.all_reduce(flat)
        offset = 0
        for g in group:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n


# --------------------------------------------------------------------------- sharding


def shard(items: Sequence, rank_: int | None = None, world: int | None = None) -> list:
    """This process's share of ``items``: every ``world``-th one from position ``rank``
    (balanced to within one item; the union over ranks is ``items``)."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return list(items)[r::w]


def local_batch_size(global_batch: int, what: str = "batch_size") -> int:
    """``global_batch / world_size``; an error when it does not divide (the global batch,
    hence the results, must not depend on the number of processes)."""
    w = world_size()
    if global_batch % w:
        from diffdass.utils.config import ConfigError

        raise ConfigError(
            f"{what}={global_batch} is not divisible by the {w} processes: each process "
            f"trains on {what} / processes samples, so choose a multiple of {w} (or launch "
            "a number of processes that divides it)"
        )
    return global_batch // w


def batch_offset(local_batch: int) -> int:
    """Position of this process's slice in the global batch (slices in rank order)."""
    return rank() * local_batch


class ShardedBatchSampler(torch.utils.data.Sampler):
    """This process's contiguous slice of every batch of ``batch_sampler``.

    With slices in rank order the processes together see exactly the global batches of a
    one-process run, in the same order (same samples, same augmentation epochs)."""

    def __init__(self, batch_sampler, rank_: int | None = None, world: int | None = None):
        self.inner = batch_sampler
        self.rank = rank() if rank_ is None else rank_
        self.world = world_size() if world is None else world

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        for batch in self.inner:
            b = len(batch) // self.world
            yield batch[self.rank * b : (self.rank + 1) * b]


def loader_batch_sampler(batch_sampler):
    """``batch_sampler`` itself on one process, its :class:`ShardedBatchSampler` on many."""
    return ShardedBatchSampler(batch_sampler) if launched() else batch_sampler


# ------------------------------------------------------------------------- run dirs


def main_open(run, *args, **kwargs):
    """``run.open(...)`` on the main process; on the others only ``run.check(...)`` (reads
    only) and a context that writes nothing: config, log and metrics are written once."""
    if is_main():
        return run.open(*args, **kwargs)
    run.check(*args, **kwargs)
    return contextlib.nullcontext(run)


# ------------------------------------------------------------------------- BatchNorm


class _AllReduceBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch (all processes),
    for devices torch's ``SyncBatchNorm`` refuses (CPU with gloo). Two passes (mean, then
    the centred second moment) through a differentiable all-reduce; same parameters,
    buffers and state-dict keys as the module it replaces."""

    def _check_input_dim(self, input) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use_batch = self.training or not self.track_running_stats
        if not (use_batch and launched()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        count = torch.tensor([xf.numel() / xf.shape[1]], dtype=xf.dtype, device=xf.device)
        s = differentiable_all_reduce_sum(torch.cat([xf.sum(dims), count]))
        n = s[-1]
        mean = s[:-1] / n
        centred = xf - mean.view(shape)
        var = differentiable_all_reduce_sum((centred * centred).sum(dims)) / n
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                unbiased = var * (n / (n - 1).clamp(min=1))
                self.running_mean.mul_(1 - m).add_(m * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - m).add_(m * unbiased.to(self.running_var.dtype))
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def sync_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every BatchNorm computing its training statistics over all processes
    (the one-process batch): torch's ``SyncBatchNorm`` on GPUs, :class:`_AllReduceBatchNorm`
    elsewhere. Parameters are kept (the same objects), so optimisers built before stay valid.
    One process: ``model`` unchanged."""
    if not launched():
        return model
    on_cuda = any(p.is_cuda for p in model.parameters())
    if on_cuda:
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_cpu(model)


def _convert_cpu(module: torch.nn.Module) -> torch.nn.Module:
    out = module
    bn = torch.nn.modules.batchnorm._BatchNorm
    if isinstance(module, bn) and not isinstance(
        module, _AllReduceBatchNorm | torch.nn.SyncBatchNorm
    ):
        out = _AllReduceBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats,
        )  # fmt: skip
        with torch.no_grad():
            if module.affine:
                out.weight = module.weight
                out.bias = module.bias
            if module.track_running_stats:
                out.running_mean = module.running_mean
                out.running_var = module.running_var
                out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child))
    return out


def describe() -> dict[str, Any]:
    """World size, rank and backend, for logs and metrics."""
    if not launched():
        return {"processes": 1}
    st = state()
    return {"processes": st.num_processes, "backend": str(getattr(st, "backend", ""))}
