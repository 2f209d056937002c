"""DDPM noise schedule (Ho et al. 2020; paper Sec. 3, Eqs. 2-5) with guided-diffusion-style respacing.

Time-index convention
---------------------
Indices are **0-based, as in diffusers**: ``t = 0 .. T-1``. Index ``t`` holds the paper's
(1-based) step ``t + 1``: ``betas[0]`` is the paper's ``beta_1 = 1e-4``, ``betas[T-1]`` its
``beta_T = 0.02``, and ``alphas_cumprod[t]`` is the paper's ``abar_{t+1}``. So

- ``q_sample(x0, t, eps)`` returns the paper's ``x_{t+1}`` (Eq. 2);
- ``p_mean(x_t, t, eps)`` with index ``t`` is the mean of ``p(x_{t} | x_{t+1})`` in paper terms,
  i.e. one reverse step *from* the sample noised with ``t + 1`` steps;
- the paper's ``n``-step noising (``x_n``) is ``q_sample`` at index ``n - 1`` and its ``n``
  reverse steps use indices ``n-1, n-2, ..., 0``; the last one (index 0) adds no noise.

These are exactly the values of ``diffusers.DDPMScheduler(num_train_timesteps=1000,
beta_schedule="linear", beta_start=1e-4, beta_end=0.02)`` at the same integer timestep, and the
integer handed to the UNet is that same index (for a respaced schedule, the original index that
the respaced step maps back to, see :meth:`DDPMSchedule.model_timestep`).

All coefficients are computed in float64; the public tensor attributes are float32 copies (the
float64 originals are available through :meth:`DDPMSchedule.values`), and every method
computes its coefficients in float64 before casting them to the dtype of the data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DDPMSchedule", "space_timesteps"]

_FIELDS = (
    "betas",
    "alphas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "posterior_variance",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "mean_coef_xt",
    "mean_coef_eps",
)


def space_timesteps(num_timesteps: int, steps: int, start: int = 0) -> list[int]:
    """``steps`` evenly spaced indices in ``[start, num_timesteps - 1]``, both ends included.

    Like guided-diffusion's ``space_timesteps`` with a single section: the stride is
    ``(num_timesteps - 1 - start) / (steps - 1)`` and indices are rounded.
    """
    last = num_timesteps - 1
    if not 1 <= steps <= num_timesteps - start:
        raise ValueError(f"cannot keep {steps} steps out of [{start}, {last}]")
    if steps == 1:
        return [last]
    stride = (last - start) / (steps - 1)
    kept = sorted({start + round(i * stride) for i in range(steps)})
    if len(kept) != steps:  # cannot happen for steps <= range size, but be explicit
        raise AssertionError("spacing produced duplicate indices")
    return kept


class DDPMSchedule:
    """Fixed DDPM schedule with Sigma = beta_t I ("fixed large" variance).

    Args:
        num_train_timesteps: T (1000 in the paper).
        beta_start, beta_end: linear beta range (paper: 1e-4 .. 0.02).
        betas: explicit betas (overrides the linear range); used by :meth:`respace`.
        timestep_map: for a respaced schedule, the original (model) timestep of every index.
        num_timesteps: keyword alias of ``num_train_timesteps``.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        betas: Tensor | Sequence[float] | None = None,
        timestep_map: Sequence[int] | Tensor | None = None,
        *,
        num_timesteps: int | None = None,
    ) -> None:
        if num_timesteps is not None:  # alias of num_train_timesteps
            num_train_timesteps = int(num_timesteps)
        if betas is None:
            b = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        else:
            b = torch.as_tensor(betas, dtype=torch.float64).clone()
        if b.ndim != 1 or len(b) == 0:
            raise ValueError("betas must be a non-empty 1-D sequence")
        if not bool(((b > 0) & (b <= 1)).all()):
            raise ValueError("betas must lie in (0, 1]")
        T = len(b)
        alphas = 1.0 - b
        abar = torch.cumprod(alphas, dim=0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        f64 = {
            "betas": b,
            "alphas": alphas,
            "alphas_cumprod": abar,
            "alphas_cumprod_prev": abar_prev,
            "sqrt_alphas": alphas.sqrt(),
            "sqrt_alphas_cumprod": abar.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - abar).sqrt(),
            # q(x_{t-1} | x_t, x_0): variance and mean coefficients (DDPM Eq. 7)
            "posterior_variance": b * (1.0 - abar_prev) / (1.0 - abar),
            "posterior_mean_coef1": b * abar_prev.sqrt() / (1.0 - abar),
            "posterior_mean_coef2": (1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar),
            # Eq. 4 written as coef_xt * x_t - coef_eps * eps
            "mean_coef_xt": 1.0 / alphas.sqrt(),
            "mean_coef_eps": b / ((1.0 - abar).sqrt() * alphas.sqrt()),
        }
        self._f64 = f64
        for name in _FIELDS:
            setattr(self, name, f64[name].to(torch.float32))
        if timestep_map is None:
            tm = torch.arange(T, dtype=torch.long)
        else:
            tm = torch.as_tensor(timestep_map, dtype=torch.long).clone()
            if tm.shape != (T,):
                raise ValueError("timestep_map must have one entry per step")
        self.timestep_map = tm

    # ------------------------------------------------------------------ basic access
    @property
    def num_timesteps(self) -> int:
        return len(self._f64["betas"])

    def __len__(self) -> int:
        return self.num_timesteps

    def __repr__(self) -> str:
        respaced = not torch.equal(self.timestep_map, torch.arange(self.num_timesteps))
        return f"DDPMSchedule(T={self.num_timesteps}, respaced={respaced})"

    def values(
        self,
        name: str,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """A schedule array (one of the public field names) in the requested dtype/device."""
        if name not in self._f64:
            raise KeyError(f"unknown schedule field {name!r}; have {sorted(self._f64)}")
        return self._f64[name].to(dtype=dtype, device=device)

    def model_timestep(self, t: int | Tensor) -> int | Tensor:
        """Original timestep to give the noise model for schedule index ``t`` (identity unless respaced)."""
        if isinstance(t, Tensor):
            return self.timestep_map.to(t.device)[t.long()]
        return int(self.timestep_map[int(t)])

    def _check_index(self, t: int) -> int:
        t = int(t)
        if not 0 <= t < self.num_timesteps:
            raise IndexError(f"timestep index {t} outside [0, {self.num_timesteps - 1}]")
        return t

    def _coef(self, name: str, t: int | Tensor, x: Tensor) -> float | Tensor:
        """Coefficient ``name`` at ``t``: a Python float (float64 exact) for an int ``t``,
        or a (B, 1, ..., 1) tensor in ``x``'s dtype for a per-sample tensor ``t``."""
        arr = self._f64[name]
        if isinstance(t, Tensor) and t.ndim > 0:
            c = arr[t.detach().long().cpu()].to(device=x.device, dtype=x.dtype)
            return c.reshape(-1, *([1] * (x.ndim - 1)))
        return float(arr[self._check_index(int(t))])

    # ------------------------------------------------------------------ forward process
    def q_sample(self, x0: Tensor, t: int | Tensor, noise: Tensor) -> Tensor:
        """Eq. 2: ``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` (0-based ``t``)."""
        return (
            self._coef("sqrt_alphas_cumprod", t, x0) * x0
            + self._coef("sqrt_one_minus_alphas_cumprod", t, x0) * noise
        )

    # ------------------------------------------------------------------ reverse process
    def p_mean(self, x_t: Tensor, t: int | Tensor, eps: Tensor) -> Tensor:
        """Eq. 4: ``(x_t - beta_t / sqrt(1 - abar_t) * eps) / sqrt(alpha_t)``."""
        return self._coef("mean_coef_xt", t, x_t) * x_t - self._coef("mean_coef_eps", t, x_t) * eps

    def predict_x0(self, x_t: Tensor, t: int | Tensor, eps: Tensor) -> Tensor:
        """``(x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``."""
        return (x_t - self._coef("sqrt_one_minus_alphas_cumprod", t, x_t) * eps) / self._coef(
            "sqrt_alphas_cumprod", t, x_t
        )

    def posterior_mean(self, x0: Tensor, x_t: Tensor, t: int | Tensor) -> Tensor:
        """Mean of q(x_{t-1} | x_t, x_0) = coef1 x0 + coef2 x_t (equals Eq. 4 when x0 = predict_x0)."""
        return (
            self._coef("posterior_mean_coef1", t, x_t) * x0
            + self._coef("posterior_mean_coef2", t, x_t) * x_t
        )

    def variance(self, t: int) -> float:
        """Sigma_theta at index ``t``: ``beta_t`` ("fixed large", paper Sec. 5.1)."""
        return float(self._f64["betas"][self._check_index(t)])

    def step_variance(self, t: int, kind: str = "fixed_large", gamma: float | None = None) -> float:
        """Variance of the reverse step from index ``t`` (Sigma of Eq. 3), by name.

        - ``"fixed_large"``: ``beta_t`` (the paper's; DDPM's upper bound; right for long chains of
          wide data, leaves noise when a respaced chain takes big steps);
        - ``"fixed_small"``: ``beta~_t``, the posterior variance of q(x_{t-1} | x_t, x_0) (the lower
          bound: right only if x_0 were known; a few big steps then lose variance);
        - ``"analytic"``: ``beta~_t + coef1_t^2 (1 - abar_t) / abar_t (1 - gamma)`` with
          ``gamma = E||eps||^2 / d`` at this step's model timestep (Analytic-DPM, see
          :mod:`diffdass.diffusion.moments`); ``1 - gamma`` is clipped to [0, 1].
        """
        t = self._check_index(t)
        if kind == "fixed_large":
            return float(self._f64["betas"][t])
        tilde = float(self._f64["posterior_variance"][t])
        if kind == "fixed_small":
            return tilde
        if kind != "analytic":
            raise ValueError(f"unknown variance {kind!r}: fixed_large | fixed_small | analytic")
        if gamma is None:
            raise ValueError("the analytic variance needs gamma (eps moments of the model)")
        abar = float(self._f64["alphas_cumprod"][t])
        c1 = float(self._f64["posterior_mean_coef1"][t])
        return tilde + c1 * c1 * (1.0 - abar) / abar * min(max(1.0 - float(gamma), 0.0), 1.0)

    # ------------------------------------------------------------------ training
    def training_loss(
        self,
        eps_fn: Callable[[Tensor, Tensor], Tensor],
        x0: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Eq. 5 ("L_simple"): ``mean ||eps_fn(x_t, t) - eps||^2`` with ``t ~ U{0..T-1}``.

        Draw order (for reproducibility): first the ``B`` timesteps, then the noise, both from
        ``generator`` (on the generator's device, then moved to ``x0``'s device). ``eps_fn``
        receives the model timesteps (original indices, ``timestep_map[t]``) as a long tensor (B,).
        """
        gdev = generator.device if generator is not None else torch.device("cpu")
        B = x0.shape[0]
        t = torch.randint(0, self.num_timesteps, (B,), generator=generator, device=gdev)
        noise = torch.randn(x0.shape, generator=generator, device=gdev, dtype=x0.dtype)
        t, noise = t.to(x0.device), noise.to(x0.device)
        x_t = self.q_sample(x0, t, noise)
        pred = eps_fn(x_t, self.model_timestep(t))
        if hasattr(pred, "sample"):
            pred = pred.sample
        return F.mse_loss(pred.float(), noise.float())

    # ------------------------------------------------------------------ respacing
    def respace(self, steps: int | Sequence[int]) -> DDPMSchedule:
        """Respaced schedule (improved-DDPM / guided-diffusion ``SpacedDiffusion``).

        ``steps`` is either a number of evenly spaced indices over ``[0, T-1]`` (both ends kept)
        or an explicit iterable of indices of *this* schedule to keep. With kept indices
        ``k_0 < k_1 < ...`` the new betas are ``1 - abar[k_i] / abar[k_{i-1}]`` (``abar[k_{-1}]
        = 1``), so the new ``alphas_cumprod`` are exactly the old ones at the kept indices.
        Index ``i`` of the result maps back to the original model timestep
        ``self.timestep_map[k_i]`` (see :meth:`model_timestep`).
        """
        if isinstance(steps, int):
            keep = space_timesteps(self.num_timesteps, steps)
        else:
            keep = sorted({int(s) for s in steps})
            if not keep or keep[0] < 0 or keep[-1] >= self.num_timesteps:
                raise ValueError(f"kept indices must lie in [0, {self.num_timesteps - 1}]")
        idx = torch.tensor(keep, dtype=torch.long)
        if keep == list(range(len(keep))):
            # a prefix 0..k-1: nothing is skipped, keep the betas bit-exact
            new_betas = self._f64["betas"][idx]
        else:
            abar = self._f64["alphas_cumprod"][idx]
            prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
            new_betas = 1.0 - abar / prev
        return DDPMSchedule(betas=new_betas, timestep_map=self.timestep_map[idx])
