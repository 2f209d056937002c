"""Noise-prediction moments for the analytic reverse variance (Analytic-DPM, Bao et al. 2022).

The optimal isotropic variance of a reverse step from schedule index ``t`` (to the previous
kept index ``s`` of a possibly respaced schedule) is, for a model with exact noise prediction,

    sigma*^2_t = beta~_t + coef1_t^2 * E[ Var(x_0 | x_t) ]                        (Bao et al., Thm. 1)
    E[ Var(x_0 | x_t) ] = (1 - abar_t) / abar_t * (1 - Gamma_t),
    Gamma_t = E_{x_0 ~ data, eps} || eps_theta(x_t, t) ||^2 / d,
    1 - Gamma_t = E || eps - eps_theta(x_t, t) ||^2 / d          (for eps_theta = E[eps | x_t]),

where ``beta~_t`` is the posterior variance of q(x_s | x_t, x_0) and ``coef1_t`` the weight of
x_0 in its mean (``DDPMSchedule.posterior_variance`` / ``posterior_mean_coef1`` of the respaced
schedule). ``1 - Gamma_t`` is a per-timestep scalar, estimated once per trained DDPM by Monte Carlo
on target images: that is what :class:`EpsMoments` holds. We estimate it by the second form, the
model's noise-prediction error (its training loss at ``t``; the "imperfect mean" estimator of
Bao et al.'s Extended Analytic-DPM). The first form subtracts two numbers near 1: with a few
thousand pixels its Monte-Carlo error (~1e-2) swamps ``1 - Gamma_t`` for narrow data (2.5e-3 for a
std of 0.05 at abar = 0.5), and a 10-step chain then loses a third of the target's spread.
``1 - Gamma_t`` is clipped to [0, 1] (Bao et al. clip the variance to ``[beta~_t, beta~_t +
coef1^2 (1-abar_t)/abar_t]``).

With ``Gamma_t`` known, every reverse step is the moment-matched Gaussian of the true reverse
transition, whatever its length: a 10-step respaced translation then ends on the distribution of
the full-length one (``tests/test_diffusion.py`` checks this with the closed-form noise
prediction of Gaussian targets). ``fixed_large`` (beta_t, the paper's Sigma) and ``fixed_small``
(beta~_t) are the two ends of that interval: right only for full-length sampling of wide resp.
narrow data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diffdass.diffusion.schedule import DDPMSchedule

__all__ = ["EpsMoments", "estimate_eps_moments"]


@dataclass(frozen=True)
class EpsMoments:
    """``eps_mse_t = E||eps - eps_theta(x_t, t)||^2 / d`` (= ``1 - Gamma_t``) on a grid of model
    timesteps.

    ``timesteps`` are increasing original (model) indices ``0 .. T-1``; :meth:`gamma_at`
    interpolates linearly between them (and holds the end values outside).
    """

    timesteps: tuple[int, ...]
    eps_mse: tuple[float, ...]
    images: int = 0  # images the estimate used (for the record)

    def __post_init__(self) -> None:
        if len(self.timesteps) != len(self.eps_mse) or not self.timesteps:
            raise ValueError("EpsMoments: timesteps and eps_mse must be non-empty and equally long")
        if list(self.timesteps) != sorted(set(self.timesteps)):
            raise ValueError("EpsMoments: timesteps must be strictly increasing")

    def gamma_at(self, t: int) -> float:
        """``Gamma = 1 - eps_mse`` at model timestep ``t`` (linear interpolation)."""
        return 1.0 - self.eps_mse_at(t)

    def eps_mse_at(self, t: int) -> float:
        ts, gs = self.timesteps, self.eps_mse
        if t <= ts[0]:
            return float(gs[0])
        if t >= ts[-1]:
            return float(gs[-1])
        hi = next(i for i, v in enumerate(ts) if v >= t)
        lo = hi - 1
        w = (t - ts[lo]) / (ts[hi] - ts[lo])
        return float((1 - w) * gs[lo] + w * gs[hi])

    def to_dict(self) -> dict:
        return {
            "timesteps": list(self.timesteps),
            "eps_mse": list(self.eps_mse),
            "images": self.images,
        }

    @classmethod
    def from_dict(cls, d: dict) -> EpsMoments:
        try:
            return cls(
                tuple(int(t) for t in d["timesteps"]),
                tuple(float(g) for g in d["eps_mse"]),
                int(d.get("images", 0)),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed eps moments {d!r}: {exc}") from exc


@torch.no_grad()
def estimate_eps_moments(
    eps_fn: Callable[[Tensor, Tensor], Tensor],
    schedule: DDPMSchedule,
    images: Iterable[Tensor] | Tensor,
    timesteps: Sequence[int] | int = 50,
    generator: torch.Generator | None = None,
    max_images: int | None = None,
) -> EpsMoments:
    """Monte-Carlo noise-prediction error ``E||eps - eps_fn(x_t, t)||^2 / d`` on ``images``
    (target data, in [-1, 1]), i.e. ``1 - Gamma_t``.

    ``timesteps``: a count (evenly spaced over ``[0, T-1]``, both ends) or explicit indices of
    ``schedule`` (not respaced). Every image is noised once per timestep with fresh noise from
    ``generator``. ``images`` is a tensor (N, C, H, W) or an iterable of batches.
    """
    T = schedule.num_timesteps
    if isinstance(timesteps, int):
        n = max(2, min(int(timesteps), T))
        ts = sorted({round(i * (T - 1) / (n - 1)) for i in range(n)})
    else:
        ts = sorted({int(t) for t in timesteps})
    if not ts or ts[0] < 0 or ts[-1] >= T:
        raise ValueError(f"timesteps must lie in [0, {T - 1}]")
    batches = [images] if isinstance(images, Tensor) else images
    sums = torch.zeros(len(ts), dtype=torch.float64)
    count = 0
    for batch in batches:
        x0 = batch["image"] if isinstance(batch, dict) else batch
        if max_images is not None:
            x0 = x0[: max_images - count]
        if x0.shape[0] == 0:
            break
        x0 = x0.float()
        gdev = generator.device if generator is not None else x0.device
        for j, t in enumerate(ts):
            noise = torch.randn(x0.shape, generator=generator, device=gdev).to(x0.device)
            x_t = schedule.q_sample(x0, t, noise)
            tt = torch.full((x0.shape[0],), schedule.model_timestep(t), dtype=torch.long)
            eps = eps_fn(x_t, tt.to(x0.device)).float()
            err = (eps - noise).pow(2).flatten(1).mean(1)
            sums[j] += err.double().sum().cpu()
        count += x0.shape[0]
        if max_images is not None and count >= max_images:
            break
    if count == 0:
        raise ValueError("estimate_eps_moments: no image was given")
    mse = (sums / count).tolist()
    return EpsMoments(tuple(schedule.model_timestep(t) for t in ts), tuple(mse), count)
