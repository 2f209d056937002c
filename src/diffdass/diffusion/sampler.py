"""SDEdit-style diffusion translation (paper Sec. 4.1, the map phi^n) with guidance hooks.

``translate(x0, n)`` noises a source image with ``n`` forward steps (Eq. 2, one draw) and then
runs ``n`` ancestral DDPM reverse steps with the target-domain noise model (Eqs. 3-4). Indices
follow :mod:`diffdass.diffusion.schedule`: 0-based as in diffusers, so ``x_n`` is
``q_sample`` at index ``n - 1`` and the reverse steps use indices ``n-1, ..., 0``.

One reverse step at index ``t`` (paper step number ``k = t + 1`` counting down ``n .. 1``)::

    mu      = p_mean(x_t, t, eps(x_t, t))                       # Eq. 4
    mu_hat  = mu + guidance(x_t, t_model, k, beta_t)            # Eq. 7 (a mean shift)
    x_{t-1} = mu_hat + sqrt(Sigma_t) * z,  z ~ N(0, I)          # Eq. 3/8; no z at t = 0

Sigma_t is a named choice (:class:`SamplerOptions`): ``fixed_large`` = beta_t is the paper's and
right for full-length chains; with a respaced chain (few big steps) it leaves noise in every image
and ``fixed_small`` (the posterior variance) removes too much. ``analytic`` (Analytic-DPM, the
toolkit's translation default, :mod:`diffdass.diffusion.moments`) is right at any step count.
With ``clip_x0`` the mean is the posterior mean of the clipped predicted x_0 (identical to Eq. 4
when nothing is clipped). ``solver="ddim"`` replaces the step by deterministic DDIM.

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
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from diffdass.diffusion.moments import EpsMoments
from diffdass.diffusion.schedule import DDPMSchedule, space_timesteps

__all__ = [
    "PAPER",
    "EpsFn",
    "SamplerOptions",
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


@dataclass(frozen=True)
class SamplerOptions:
    """How each reverse step is taken (everything a sampler needs besides model and guidance).

    The defaults are the paper's literal sampler (:data:`PAPER`: ancestral, Sigma = beta_t, no
    clipping); translation in the toolkit uses :func:`toolkit_options` (analytic variance,
    clipped x_0), which stays clean at a few respaced steps.

    - ``solver``: ``"ancestral"`` (DDPM, Eq. 3) or ``"ddim"`` (deterministic DDIM, eta = 0; the
      guidance then shifts the noise prediction, ``eps - sqrt(1 - abar_t) * scale * grad log p``,
      as guided-diffusion's ``condition_score``).
    - ``variance``: the ancestral step's Sigma, ``"fixed_large"`` | ``"fixed_small"`` |
      ``"analytic"`` (needs ``moments``), see :meth:`DDPMSchedule.step_variance`.
    - ``clip_x0``: clip the predicted x_0 to [-1, 1] and take the posterior mean from it (the DDPM
      and guided-diffusion reference samplers do); off = Eq. 4 exactly.
    - ``guidance_input``: where the segmenter reads the image: ``"x_t"`` (the paper), ``"x0"``
      (the predicted x_0, gradient mapped back with d x_0 / d x_t = 1 / sqrt(abar_t), no gradient
      through the UNet) or ``"x0_unet"`` (the predicted x_0, exact gradient through the UNet).
    - ``guidance_max_t``: guide only the steps whose model timestep is <= this (None: all).
    """

    solver: str = "ancestral"
    variance: str = "fixed_large"
    clip_x0: bool = False
    moments: EpsMoments | None = None
    guidance_input: str = "x_t"
    guidance_max_t: int | None = None

    def __post_init__(self) -> None:
        if self.solver not in ("ancestral", "ddim"):
            raise ValueError(f"unknown solver {self.solver!r}: ancestral | ddim")
        if self.variance not in ("fixed_large", "fixed_small", "analytic"):
            raise ValueError(
                f"unknown variance {self.variance!r}: fixed_large | fixed_small | analytic"
            )
        if self.solver == "ancestral" and self.variance == "analytic" and self.moments is None:
            raise ValueError(
                "the analytic variance needs the DDPM's eps moments (estimate_eps_moments)"
            )
        if self.guidance_input not in ("x_t", "x0", "x0_unet"):
            raise ValueError(f"unknown guidance_input {self.guidance_input!r}: x_t | x0 | x0_unet")


#: the paper's literal sampler (ancestral, Sigma = beta_t, Eq. 4 without clipping)
PAPER = SamplerOptions()


def toolkit_options(moments: EpsMoments, **changes: Any) -> SamplerOptions:
    """The toolkit's translation sampler: ancestral steps with the analytic variance (from the
    DDPM's eps ``moments``, :func:`diffdass.diffusion.moments.estimate_eps_moments`, stored
    in every DDPM checkpoint the toolkit writes) and x_0 clipped to [-1, 1]. ``changes``
    override single fields (e.g. ``guidance_input="x0"``)."""
    return SamplerOptions(
        **{"variance": "analytic", "clip_x0": True, "moments": moments, **changes}
    )


def _check_respaced(n: int, respace_steps: int | None, options: SamplerOptions | None) -> None:
    if options is None and respace_steps is not None and respace_steps < n:
        raise ValueError(
            f"a translation in {respace_steps} respaced steps needs sampler options: pass "
            "options=toolkit_options(moments) (analytic variance, clean at few steps; moments "
            "from the DDPM checkpoint) or options=PAPER to sample with the paper's fixed-large "
            "variance, which leaves visible noise at few steps"
        )


def _guidance_shift(
    guidance: Callable[[Tensor, int, int, float], Tensor],
    opts: SamplerOptions,
    x_t: Tensor,
    x_in: Tensor,
    x0_graph: Tensor | None,
    x0: Tensor | None,
    t_model: int,
    step: int,
    var: float,
    abar: float,
) -> Tensor | None:
    """The guidance's shift w.r.t. ``x_t`` for the configured input (None: no shift)."""
    if opts.guidance_input == "x_t":
        return guidance(x_t.detach(), t_model, step, var)
    assert x0 is not None
    shift_x0 = guidance(x0.detach(), t_model, step, var)
    if shift_x0 is None:
        return None
    if opts.guidance_input == "x0":
        return shift_x0 / abar**0.5
    assert x0_graph is not None  # "x0_unet": vector-Jacobian product through the UNet
    (shift,) = torch.autograd.grad(x0_graph, x_in, grad_outputs=shift_x0.to(x0_graph.dtype))
    return shift


def reverse_step(
    x_t: Tensor,
    index: int,
    eps_fn: EpsFn | nn.Module,
    schedule: DDPMSchedule,
    noise: Tensor | None = None,
    guidance: Callable[[Tensor, int, int, float], Tensor] | None = None,
    step: int | None = None,
    options: SamplerOptions | None = None,
) -> Tensor:
    """One reverse step from schedule index ``index`` (Eqs. 3, 4, 7).

    ``noise`` is the ``z`` to add (scaled by the step's standard deviation); pass ``None`` for
    the final step (and for DDIM, which adds none). ``guidance(x_t, t_model, step, Sigma)``
    returns a mean shift (same shape as ``x_t``); Sigma handed to it is ``beta_t`` of the
    (respaced) schedule whatever the noise variance, i.e. the paper's Eq. 7. ``step`` is the
    paper's step number k (defaults to ``index + 1``). ``options``: :class:`SamplerOptions`
    (default: the paper's literal sampler).
    """
    opts = options or PAPER
    eps_fn = as_eps_fn(eps_fn)
    B = x_t.shape[0]
    t_model = schedule.model_timestep(index)
    k = index + 1 if step is None else step
    guided = guidance is not None and (
        opts.guidance_max_t is None or t_model <= opts.guidance_max_t
    )
    through_unet = guided and opts.guidance_input == "x0_unet"
    abar = float(schedule.values("alphas_cumprod")[index])
    t_vec = torch.full((B,), t_model, device=x_t.device, dtype=torch.long)
    x_in = x_t.detach().requires_grad_(True) if through_unet else x_t
    with torch.set_grad_enabled(through_unet):
        eps = eps_fn(x_in, t_vec).to(x_t.dtype)
        need_x0 = opts.clip_x0 or opts.solver == "ddim" or (guided and opts.guidance_input != "x_t")
        x0_graph = schedule.predict_x0(x_in, index, eps) if need_x0 else None
    eps = eps.detach()
    x0 = x0_graph.detach() if x0_graph is not None else None
    if x0 is not None and opts.clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
    gvar = schedule.variance(index)
    if opts.solver == "ddim":
        if guided:
            g = _guidance_shift(
                guidance, opts, x_t, x_in, x0_graph, x0, t_model, k, 1.0, abar
            )  # = scale * grad log p(y | x_t)
            if g is not None:
                eps = eps - (1.0 - abar) ** 0.5 * g.to(eps.dtype)
                x0 = schedule.predict_x0(x_t, index, eps)
                if opts.clip_x0:
                    x0 = x0.clamp(-1.0, 1.0)
        assert x0 is not None
        if opts.clip_x0:  # the noise consistent with the clipped x_0
            eps = (x_t - abar**0.5 * x0) / (1.0 - abar) ** 0.5
        abar_prev = float(schedule.values("alphas_cumprod_prev")[index])
        return abar_prev**0.5 * x0 + (1.0 - abar_prev) ** 0.5 * eps
    if opts.clip_x0:
        mean = schedule.posterior_mean(x0, x_t, index)
    else:
        with torch.no_grad():
            mean = schedule.p_mean(x_t, index, eps)
    if guided:
        shift = _guidance_shift(guidance, opts, x_t, x_in, x0_graph, x0, t_model, k, gvar, abar)
        if shift is not None:
            mean = mean + shift.to(mean.dtype)
    if noise is None:
        return mean
    gamma = opts.moments.gamma_at(t_model) if opts.variance == "analytic" else None
    var = schedule.step_variance(index, opts.variance, gamma)
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
    options: SamplerOptions | None = None,
) -> Tensor:
    """Run ``n`` reverse steps from ``x_n`` down to ``x_0``.

    ``step_indices`` are the schedule indices to visit, in order (default ``n-1, ..., 0``;
    for a respaced schedule these are respaced indices, the model sees ``timestep_map``).
    The guidance, if it has a ``begin(n)`` method, is told the number of steps first; it is
    called with step numbers ``k = n, n-1, ..., 1``. With the ancestral solver a noise draw
    happens for every step whose index is > 0, whatever the guidance (DDIM draws none).
    """
    opts = options or PAPER
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
        noise = None
        if idx > 0 and opts.solver == "ancestral":
            noise = draw_noise(x.shape, generator, x.device, x.dtype)
        x = reverse_step(
            x, idx, eps_fn, schedule, noise=noise, guidance=guidance, step=n - pos, options=opts
        )
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
    options: SamplerOptions | None = None,
) -> Tensor:
    """phi^n: diffuse ``x0`` with ``n`` steps then reverse (optionally in ``respace_steps`` steps).

    ``options`` (:class:`SamplerOptions`) defaults to the paper's literal sampler (right for the
    full chain). With ``respace_steps < n`` they must be given: :func:`toolkit_options` (the
    toolkit's sampler) or :data:`PAPER` explicitly, whose fixed-large variance leaves noise in
    every image when the steps are few (``docs/translation.md``); without them this raises
    ``ValueError``.
    """
    _check_respaced(n, respace_steps, options)
    if n == 0:
        return x0
    sched, k = translation_schedule(schedule, n, respace_steps)
    x_n = diffuse(x0, k, sched, generator)
    return reverse(
        x_n,
        k,
        eps_fn,
        sched,
        guidance=guidance,
        generator=generator,
        progress=progress,
        options=options,
    )


class TranslationPipeline:
    """diffusers-style pipeline: a noise model plus a schedule; call it to translate a batch.

    ``options``: the sampler (:func:`toolkit_options` for the toolkit's; None = the paper's
    literal sampler for full chains, and a respaced call then raises, see :func:`translate`).
    """

    def __init__(
        self,
        eps_model: nn.Module | EpsFn,
        schedule: DDPMSchedule | None = None,
        options: SamplerOptions | None = None,
    ) -> None:
        self.eps_model = eps_model
        self.eps_fn = as_eps_fn(eps_model)
        self.schedule = schedule if schedule is not None else DDPMSchedule()
        self.options = options

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
            options=self.options,
        )
