"""The whole method as one resumable job, and the jobs built on it.

- :mod:`.config`    ``PipelineConfig`` (the sections of a ``diffdass run`` config) and
  :func:`fill_config`, which shares the data roots, seed and device with every stage
- :mod:`.stages`    :func:`run_pipeline`: the stages in order, each skipped when its outputs
  exist, then evaluation, the summary and the report
- :mod:`.summary`   the printed summary: what a finished run demonstrates, in lines
- :mod:`.ablate`    the paper's ablation rows over seeds (``diffdass ablate``)
- :mod:`.estimate`  the projected time of a config on this machine (``diffdass estimate``)

Dependencies point one way: ``cli`` -> ``pipeline`` -> ``adaptation`` -> (``diffusion``,
``evaluation``) -> (``data``, ``models``) -> ``utils``.
"""

from diffdass.pipeline.config import (
    DEFAULT_CONFIG,
    BenchmarkSpec,
    EvalSpec,
    PipelineConfig,
    check_config,
    fill_config,
)
from diffdass.pipeline.stages import run_pipeline

__all__ = [
    "DEFAULT_CONFIG",
    "BenchmarkSpec",
    "EvalSpec",
    "PipelineConfig",
    "check_config",
    "fill_config",
    "run_pipeline",
]
