"""Seed derivation: every random stream of a run is keyed by integers (seed, stage, step).

Deriving seeds instead of carrying generator state makes resumed runs replay exactly the
draws an uninterrupted run would make.
"""

from __future__ import annotations

import numpy as np


def derive_seed(*keys: int, high: int = 2**63 - 1) -> int:
    """A seed in ``[0, high)`` that depends only on ``keys``."""
    return int(np.random.default_rng([int(k) for k in keys]).integers(0, high))
