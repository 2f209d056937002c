"""Evaluation: confusion-matrix metrics (mIoU over the 19/16/13-class sets, accuracy)."""

from diffdass.evaluation.metrics import (
    CONVENTION,
    ConfusionMatrix,
    class_set_key,
    resolve_class_set,
)

__all__ = ["CONVENTION", "ConfusionMatrix", "class_set_key", "resolve_class_set"]
