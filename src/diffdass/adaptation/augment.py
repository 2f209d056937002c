"""The noisy-and-masked augmentation of Peng et al. (ICCV 2023), appendix C.

Semantic Gradient Guidance asks the segmenter to classify *noisy* images x_t (GSG) and
noisy images *masked by one class region* x_t * m_c (LCG). To make it robust to such
inputs, a fraction (paper: 10%) of the training samples is noised with Eq. 2
(x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps) at a random timestep and then masked by
the region of one class present in its label; the label keeps that region and ignores
the rest, exactly the (input, target) pairs LCG produces.
"""

from __future__ import annotations

import torch

from diffdass.diffusion.schedule import DDPMSchedule


class NoisyMaskedAugment:
    """Apply the augmentation to a batch in place of a random subset of its samples.

    ``max_timestep``: noise levels are drawn uniformly from ``[0, max_timestep)`` (0-based
    DDPM timesteps); use the largest translation depth N of the run (paper: 600).
    """

    def __init__(
        self,
        schedule: DDPMSchedule,
        prob: float = 0.1,
        max_timestep: int = 600,
        ignore_index: int = 255,
    ) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must lie in [0, 1], got {prob}")
        if not 1 <= max_timestep <= schedule.num_timesteps:
            raise ValueError(
                f"max_timestep must lie in [1, {schedule.num_timesteps}], got {max_timestep}"
            )
        self.schedule = schedule
        self.prob = prob
        self.max_timestep = max_timestep
        self.ignore_index = ignore_index

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Returns (images, labels, number of augmented samples). Inputs are not modified.

        Every number is drawn on ``generator``'s device (a CUDA generator: the noise is made
        on the GPU, no host copy); the per-sample choices are then read on the host."""
        b = images.shape[0]
        gdev = generator.device
        # draw every random number for every sample, whether used or not, so that the
        # stream of draws does not depend on the data
        pick = torch.rand(b, generator=generator, device=gdev) < self.prob
        t = torch.randint(0, self.max_timestep, (b,), generator=generator, device=gdev)
        noise = torch.randn(images.shape, generator=generator, dtype=torch.float32, device=gdev)
        u = torch.rand(b, generator=generator, device=gdev)
        pick, u = pick.cpu(), u.cpu()  # no-ops for a CPU generator
        if not bool(pick.any()):
            return images, labels, 0
        images, labels = images.clone(), labels.clone()
        for i in torch.nonzero(pick).flatten().tolist():
            present = torch.unique(labels[i])
            present = present[present != self.ignore_index]
            if present.numel() == 0:
                continue
            c = present[min(int(u[i] * present.numel()), present.numel() - 1)]
            x_t = self.schedule.q_sample(
                images[i : i + 1],
                t[i : i + 1].to(images.device),
                noise[i : i + 1].to(images.device),
            )
            m = labels[i] == c
            images[i] = x_t[0] * m.to(images.dtype)
            labels[i] = torch.where(m, labels[i], torch.full_like(labels[i], self.ignore_index))
        return images, labels, int(pick.sum())
