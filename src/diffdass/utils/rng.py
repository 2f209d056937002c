"""Seed derivation: every random stream of a run is keyed by integers (seed, stage, step).

Deriving seeds instead of carrying generator state makes resumed runs replay exactly the
draws an uninterrupted run would make.
"""

from __future__ import annotations

import numpy as np
import torch


def derive_seed(*keys: int, high: int = 2**63 - 1) -> int:
    """A seed in ``[0, high)`` that depends only on ``keys``."""
    return int(np.random.default_rng([int(k) for k in keys]).integers(0, high))


def seeded_generator(seed: int, device: torch.device | str | None = None) -> torch.Generator:
    """A ``torch.Generator`` seeded with ``seed``, on ``device`` when that is a CUDA device and
    on the CPU otherwise (``None``: the CPU).

    Noise drawn from a CUDA generator is made where it is used, without a host copy (and the
    stream synchronisation of that copy); a CPU generator draws exactly the numbers it always
    did. The two devices draw different numbers for the same seed, so a result depends on
    the device type, and on either device only on the seed.
    """
    dev = torch.device("cpu") if device is None else torch.device(device)
    if dev.type == "cuda":
        return torch.Generator(device=dev).manual_seed(int(seed))
    return torch.Generator().manual_seed(int(seed))
