"""DDPM schedule, SDEdit-style translation sampler and semantic gradient guidance.

Layout follows diffusers (schedule / model / pipeline kept apart) and guided-diffusion (guidance
as a ``cond_fn``-like hook returning a mean shift):

- :mod:`.schedule`  ``DDPMSchedule`` (0-based timestep indices, as diffusers), respacing
- :mod:`.sampler`   ``diffuse`` / ``reverse`` / ``translate`` (paper Sec. 4.1), ``TranslationPipeline``
- :mod:`.guidance`  ``GSG``, ``LCG``, ``SGG``, ``build_guidance`` (paper Sec. 4.2)

The segmenter and the noise model are passed in as modules/callables; this package does not
import ``diffdass.models``, ``diffdass.adaptation`` or ``diffdass.cli``.
"""

from diffdass.diffusion.guidance import (
    GSG,
    LCG,
    SGG,
    GuidanceFn,
    build_guidance,
    eval_mode,
    per_image_ce,
    segmenter_logits,
)
from diffdass.diffusion.sampler import (
    PAPER,
    EpsFn,
    SamplerOptions,
    TranslationPipeline,
    as_eps_fn,
    diffuse,
    draw_noise,
    reverse,
    reverse_step,
    toolkit_options,
    translate,
    translation_schedule,
)
from diffdass.diffusion.schedule import DDPMSchedule, space_timesteps

__all__ = [
    "PAPER",
    "GSG",
    "LCG",
    "SGG",
    "DDPMSchedule",
    "EpsFn",
    "SamplerOptions",
    "GuidanceFn",
    "TranslationPipeline",
    "as_eps_fn",
    "build_guidance",
    "diffuse",
    "draw_noise",
    "eval_mode",
    "per_image_ce",
    "reverse",
    "reverse_step",
    "segmenter_logits",
    "space_timesteps",
    "toolkit_options",
    "translate",
    "translation_schedule",
]
