"""SDEdit-style diffusion translation (paper Sec. 4.1, the map phi^n) with guidance hooks.

``translate(x0, n)`` noises a source image with ``n`` forward steps (Eq. 2, one draw) and then
runs ``n`` ancestral DDPM reverse steps with the target-domain noise model (Eqs. 3-4). Indices
follow :mod:`diffdass.diffusion.schedule`: 0-based as in diffusers, so ``x_n`` is
``q_sample`` at index ``n - 1`` and the reverse steps use indices ``n-1, ..., 0``.

One reverse step at index ``t`` (paper step number ``k = t + 1`` counting down ``n .. 1``)::

    mu      = p_mean(x_t, t, eps(x_t, t))                       # Eq. 4
    mu_hat  = mu + guidance(x_t, t_model, k, beta_t)            # Eq. 7 (a mean shift)
    x_{t-1} = mu_hat + sqrt(beta_t) * z,  z ~ N(0, I)           # Eq. 3/8; no z at t = 0

Noise and determinism
    All randomness comes from the ``generator`` passed in (drawn on the generator's device, then
    moved to the data's device; with no generator, torch's global RNG on the data's device).
    ``diffuse`` draws one noise tensor of the image's shape; ``reverse`` then draws one tensor of
    the image's shape per step with index > 0, in step order, *before* and independently of the
    guidance. The draws are therefore identical whether guidance is on or off, and a guidance
    whose shift is exactly zero (``None``, or scale 0) gives a bit-identical result.

LCG as a mean shift
    Eqs. 8-9 sample one guided image per class region and combine them,
    ``x_{t-1} = sum_c m_c * (mu + s_c + sigma z_c)``. We use **one** noise draw ``z`` for all
    classes (the class regions are disjoint, so this is still an exact N(mu_hat, beta I) sample at
    every pixel), which makes the combination equal to ``mu + sum_c m_c s_c + sigma z`` on pixels
    covered by a class and ``mu + sigma z`` (unguided) on ignore pixels. LCG is therefore a
    per-pixel mean shift ``sum_c m_c s_c`` and plugs into the same hook as GSG.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from diffdass.diffusion.schedule import DDPMSchedule, space_timesteps

__all__ = [
    "EpsFn",
    "TranslationPipeline",
    "as_eps_fn",
    "diffuse",
    "draw_noise",
    "reverse",
    "reverse_step",
    "translate",
    "translation_schedule",
]

EpsFn = Callable[[Tensor, Tensor], Tensor]


def as_eps_fn(model: nn.Module | Callable[..., Any]) -> EpsFn:
    """Adapt a noise model to ``eps_fn(x, t) -> eps``.

    Accepts a diffusers ``UNet2DModel`` (or anything returning an object with ``.sample``), a
    module/callable returning a tuple (first element used) or a plain tensor. If the output has
    twice the input channels (a learned-variance model, guided-diffusion style), only the first
    half (eps) is used; Sigma stays fixed at beta_t as in the paper.
    """
    if getattr(model, "_diffdass_eps_fn", False):
        return model  # already adapted

    def eps_fn(x: Tensor, t: Tensor) -> Tensor:
        out = model(x, t)
        if hasattr(out, "sample"):
            out = out.sample
        elif isinstance(out, (tuple, list)):
            out = out[0]
        if out.shape[1] == 2 * x.shape[1]:
            out = out[:, : x.shape[1]]
        return out

    eps_fn._diffdass_eps_fn = True  # type: ignore[attr-defined]
    return eps_fn


def draw_noise(
    shape: Sequence[int] | torch.Size,
    generator: torch.Generator | None,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal noise from ``generator`` (on its device), moved to ``device``."""
    if generator is None:
        return torch.randn(tuple(shape), device=device, dtype=dtype)
    z = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=dtype)
    return z.to(device)


def diffuse(
    x0: Tensor, n: int, schedule: DDPMSchedule, generator: torch.Generator | None = None
) -> Tensor:
    """``x_n`` (paper) = Eq. 2 at 0-based index ``n - 1`` with one noise draw. ``n = 0`` returns x0."""
    if n == 0:
        return x0
    if not 1 <= n <= schedule.num_timesteps:
        raise ValueError(f"n={n} outside [0, {schedule.num_timesteps}]")
    noise = draw_noise(x0.shape, generator, x0.device, x0.dtype)
    return schedule.q_sample(x0, n - 1, noise)


def reverse_step(
    x_t: Tensor,
    index: int,
    eps_fn: EpsFn | nn.Module,
    schedule: DDPMSchedule,
    noise: Tensor | None = None,
    guidance: Callable[[Tensor, int, int, float], Tensor] | None = None,
    step: int | None = None,
) -> Tensor:
    """One ancestral step from schedule index ``index`` (Eqs. 3, 4, 7).

    ``noise`` is the ``z`` to add (scaled by sqrt(beta)); pass ``None`` for the final step.
    ``guidance(x_t, t_model, step, beta)`` returns a mean shift (same shape as ``x_t``).
    ``step`` is the paper's step number k (defaults to ``index + 1``).
    """
    eps_fn = as_eps_fn(eps_fn)
    B = x_t.shape[0]
    t_model = schedule.model_timestep(index)
    var = schedule.variance(index)
    with torch.no_grad():
        t_vec = torch.full((B,), t_model, device=x_t.device, dtype=torch.long)
        eps = eps_fn(x_t, t_vec).to(x_t.dtype)
        mean = schedule.p_mean(x_t, index, eps)
    if guidance is not None:
        shift = guidance(x_t.detach(), t_model, index + 1 if step is None else step, var)
        if shift is not None:
            mean = mean + shift.to(mean.dtype)
    if noise is None:
        return mean
    return mean + (var**0.5) * noise


def _begin(guidance: Any, n: int) -> None:
    begin = getattr(guidance, "begin", None)
    if callable(begin):
        begin(n)


def reverse(
    x_n: Tensor,
    n: int,
    eps_fn: EpsFn | nn.Module,
    schedule: DDPMSchedule,
    guidance: Callable[[Tensor, int, int, float], Tensor] | None = None,
    generator: torch.Generator | None = None,
    step_indices: Sequence[int] | None = None,
    progress: bool = False,
) -> Tensor:
    """Run ``n`` reverse steps from ``x_n`` down to ``x_0``.

    ``step_indices`` are the schedule indices to visit, in order (default ``n-1, ..., 0``;
    for a respaced schedule these are respaced indices, the model sees ``timestep_map``).
    The guidance, if it has a ``begin(n)`` method, is told the number of steps first; it is
    called with step numbers ``k = n, n-1, ..., 1``. A noise draw happens for every step whose
    index is > 0, whatever the guidance.
    """
    indices = list(range(n - 1, -1, -1)) if step_indices is None else [int(i) for i in step_indices]
    if len(indices) != n:
        raise ValueError(f"{len(indices)} step indices for n={n} steps")
    eps_fn = as_eps_fn(eps_fn)
    if guidance is not None:
        _begin(guidance, n)
    it: Any = enumerate(indices)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=n, desc="reverse", leave=False)
    x = x_n
    for pos, idx in it:
        noise = draw_noise(x.shape, generator, x.device, x.dtype) if idx > 0 else None
        x = reverse_step(x, idx, eps_fn, schedule, noise=noise, guidance=guidance, step=n - pos)
    return x


def translation_schedule(
    schedule: DDPMSchedule, n: int, respace_steps: int | None = None
) -> tuple[DDPMSchedule, int]:
    """Schedule and number of reverse steps for an ``n``-step translation.

    With ``respace_steps = k < n``, keeps ``k`` evenly spaced indices of ``[0, n-1]`` (both ends
    included, so the noise level of ``x_n`` is unchanged) and respaces onto them; otherwise
    returns ``(schedule, n)``.
    """
    if respace_steps is None or respace_steps >= n:
        return schedule, n
    if respace_steps < 1:
        raise ValueError("respace_steps must be >= 1")
    keep = space_timesteps(n, respace_steps)
    return schedule.respace(keep), respace_steps


def translate(
    x0: Tensor,
    n: int,
    eps_fn: EpsFn | nn.Module,
    schedule: DDPMSchedule,
    guidance: Callable[[Tensor, int, int, float], Tensor] | None = None,
    generator: torch.Generator | None = None,
    respace_steps: int | None = None,
    progress: bool = False,
) -> Tensor:
    """phi^n: diffuse ``x0`` with ``n`` steps then reverse (optionally in ``respace_steps`` steps)."""
    if n == 0:
        return x0
    sched, k = translation_schedule(schedule, n, respace_steps)
    x_n = diffuse(x0, k, sched, generator)
    return reverse(x_n, k, eps_fn, sched, guidance=guidance, generator=generator, progress=progress)


class TranslationPipeline:
    """diffusers-style pipeline: a noise model plus a schedule; call it to translate a batch."""

    def __init__(self, eps_model: nn.Module | EpsFn, schedule: DDPMSchedule | None = None) -> None:
        self.eps_model = eps_model
        self.eps_fn = as_eps_fn(eps_model)
        self.schedule = schedule if schedule is not None else DDPMSchedule()

    def __call__(
        self,
        x0: Tensor,
        n: int,
        guidance: Callable[[Tensor, int, int, float], Tensor] | None = None,
        generator: torch.Generator | None = None,
        respace_steps: int | None = None,
        progress: bool = False,
    ) -> Tensor:
        return translate(
            x0,
            n,
            self.eps_fn,
            self.schedule,
            guidance=guidance,
            generator=generator,
            respace_steps=respace_steps,
            progress=progress,
        )
