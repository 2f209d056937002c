"""The one training loop (:class:`~diffdass.training.loop.TrainLoop`): resume, checkpoint,
history, progress, hooks, several processes and mixed precision, for every training stage."""

from diffdass.training.loop import Hook, LoopResult, TrainLoop, first_last
from diffdass.training.tracking import LoggingConfig, Tracker
from diffdass.utils.device import autocast

__all__ = [
    "Hook",
    "LoggingConfig",
    "LoopResult",
    "TrainLoop",
    "Tracker",
    "autocast",
    "first_last",
]
