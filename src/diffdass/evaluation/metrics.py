"""Confusion-matrix segmentation metrics: per-class IoU, mIoU over class sets, accuracy.

:class:`ConfusionMatrix` accumulates a ``C x C`` matrix of pixel counts (rows = ground
truth, columns = prediction) over any number of batches; pixels whose ground truth is
``ignore_index`` are left out entirely. From it, for each class ``c``::

    IoU_c = TP_c / (TP_c + FP_c + FN_c)
    TP_c = M[c, c],  FN_c = sum_j M[c, j] - TP_c,  FP_c = sum_i M[i, c] - TP_c

IoU is NaN for a class absent from both ground truth and prediction (0/0); mIoU is the
mean over the classes of a set whose IoU is not NaN (``nanmean``). This is the definition
of the official Cityscapes evaluation (``cityscapesscripts``), which the tests check to
1e-6, and of mmsegmentation / DAFormer.

Class sets (SYNTHIA -> Cityscapes, the DAFormer convention). A 19-way model is evaluated
on the 19-class Cityscapes ground truth; the confusion matrix stays ``19 x 19`` and the
IoU of every class is computed from the full matrix. ``miou("16")`` / ``miou("13")`` then
average the IoUs of the 16 / 13 classes of :data:`diffdass.data.labels.CLASS_SETS`
only. Consequently a pixel of a scored class predicted as a class outside the set (e.g.
road predicted as terrain) still counts as a false negative of road, and a pixel of an
unscored class predicted as a scored one (terrain predicted as road) still counts as a
false positive of road: nothing is remapped to ignore. Reports must state that this
convention (19-way model scored on the 16/13-class subset) was used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from diffdass.data.labels import CITYSCAPES_CLASSES, CLASS_SETS, IGNORE_INDEX

CONVENTION = (
    "IoU per class from the full CxC confusion matrix (rows gt, cols pred; gt ignore pixels "
    "dropped); mIoU over a class subset = nanmean of those IoUs (DAFormer convention: a "
    "19-way model scored on the 16/13-class SYNTHIA subsets)"
)


def resolve_class_set(class_set: str | Sequence[int] | None, num_classes: int) -> tuple[int, ...]:
    """``None`` (all classes), a name of :data:`CLASS_SETS` ("19", "16", "13") or class ids."""
    if class_set is None:
        return tuple(range(num_classes))
    if isinstance(class_set, str):
        if class_set not in CLASS_SETS:
            raise ValueError(f"unknown class set {class_set!r}; known: {sorted(CLASS_SETS)}")
        ids = CLASS_SETS[class_set]
    else:
        ids = tuple(int(i) for i in class_set)
    if not ids:
        raise ValueError("a class set needs at least one class")
    if len(set(ids)) != len(ids):
        raise ValueError(f"class set {ids} has duplicates")
    if min(ids) < 0 or max(ids) >= num_classes:
        raise ValueError(f"class set {class_set!r} has ids outside 0..{num_classes - 1}")
    return tuple(ids)


def class_set_key(class_set: str | Sequence[int] | None, num_classes: int) -> str:
    """The key of a class set in summaries: its name, or its ids joined by commas."""
    if class_set is None:
        return str(num_classes)
    if isinstance(class_set, str):
        return class_set
    return ",".join(str(i) for i in resolve_class_set(class_set, num_classes))


def _nan_to_none(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _is_torch(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


class ConfusionMatrix:
    """Accumulated ``num_classes x num_classes`` pixel counts; rows gt, columns prediction."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} collides with a class index")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    @classmethod
    def from_matrix(cls, matrix, ignore_index: int = IGNORE_INDEX) -> ConfusionMatrix:
        m = np.asarray(matrix)
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise ValueError(f"a confusion matrix must be square, got shape {m.shape}")
        if m.dtype.kind not in "iu" or (m.size and m.min() < 0):
            raise ValueError("a confusion matrix holds non-negative integer counts")
        cm = cls(m.shape[0], ignore_index)
        cm.matrix = m.astype(np.int64).copy()
        return cm

    def reset(self) -> None:
        self.matrix[:] = 0

    def update(self, pred, target) -> ConfusionMatrix:
        """Add a batch: integer class maps of equal shape (numpy arrays or torch tensors on
        any device). ``target == ignore_index`` pixels are skipped; any other target value,
        or any prediction, outside ``[0, num_classes)`` is a ``ValueError``."""
        c = self.num_classes
        if _is_torch(pred) or _is_torch(target):
            import torch

            pred_t = torch.as_tensor(pred)
            target_t = torch.as_tensor(target, device=pred_t.device)
            if pred_t.shape != target_t.shape:
                raise ValueError(
                    f"pred shape {tuple(pred_t.shape)} != target {tuple(target_t.shape)}"
                )
            for name, t in (("pred", pred_t), ("target", target_t)):
                if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                    raise TypeError(f"{name} must hold integer class ids, got {t.dtype}")
            pred_t, target_t = pred_t.reshape(-1).long(), target_t.reshape(-1).long()
            if pred_t.numel() == 0:
                return self
            if bool(((pred_t < 0) | (pred_t >= c)).any()):
                bad = torch.unique(pred_t[(pred_t < 0) | (pred_t >= c)])[:10].tolist()
                raise ValueError(f"predictions {bad} are outside the class range 0..{c - 1}")
            valid = target_t != self.ignore_index
            tv = target_t[valid]
            if bool(((tv < 0) | (tv >= c)).any()):
                bad = torch.unique(tv[(tv < 0) | (tv >= c)])[:10].tolist()
                raise ValueError(
                    f"targets {bad} are neither classes 0..{c - 1} nor ignore {self.ignore_index}"
                )
            counts = torch.bincount(tv * c + pred_t[valid], minlength=c * c)
            self.matrix += counts.cpu().numpy().astype(np.int64).reshape(c, c)
            return self

        pred_a, target_a = np.asarray(pred), np.asarray(target)
        if pred_a.shape != target_a.shape:
            raise ValueError(f"pred shape {pred_a.shape} != target {target_a.shape}")
        for name, a in (("pred", pred_a), ("target", target_a)):
            if a.dtype.kind not in "iu":
                raise TypeError(f"{name} must hold integer class ids, got {a.dtype}")
        pred_a, target_a = (
            pred_a.reshape(-1).astype(np.int64),
            target_a.reshape(-1).astype(np.int64),
        )
        if pred_a.size == 0:
            return self
        out = (pred_a < 0) | (pred_a >= c)
        if out.any():
            raise ValueError(
                f"predictions {np.unique(pred_a[out])[:10].tolist()} are outside the class "
                f"range 0..{c - 1}"
            )
        valid = target_a != self.ignore_index
        tv = target_a[valid]
        out = (tv < 0) | (tv >= c)
        if out.any():
            raise ValueError(
                f"targets {np.unique(tv[out])[:10].tolist()} are neither classes 0..{c - 1} "
                f"nor ignore {self.ignore_index}"
            )
        self.matrix += np.bincount(tv * c + pred_a[valid], minlength=c * c).reshape(c, c)
        return self

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix (e.g. from another process) into this one; returns ``self``."""
        if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
            raise ValueError(
                f"cannot merge a {other.num_classes}-class matrix (ignore {other.ignore_index}) "
                f"into a {self.num_classes}-class one (ignore {self.ignore_index})"
            )
        self.matrix += other.matrix
        return self

    @property
    def total(self) -> int:
        """Number of counted (non-ignored) pixels."""
        return int(self.matrix.sum())

    def iou(self) -> np.ndarray:
        """Per-class IoU (float64, length C); NaN where a class is absent from gt and pred."""
        m = self.matrix.astype(np.float64)
        tp = np.diag(m)
        denom = m.sum(0) + m.sum(1) - tp
        out = np.full(self.num_classes, np.nan)
        np.divide(tp, denom, out=out, where=denom > 0)
        return out

    def class_accuracy(self) -> np.ndarray:
        """Per-class recall TP / (TP + FN); NaN for classes absent from the ground truth."""
        m = self.matrix.astype(np.float64)
        rows = m.sum(1)
        out = np.full(self.num_classes, np.nan)
        np.divide(np.diag(m), rows, out=out, where=rows > 0)
        return out

    def miou(self, class_set: str | Sequence[int] | None = None) -> float:
        """nanmean of :meth:`iou` over ``class_set`` (None = all, "19"/"16"/"13" or ids);
        NaN if no class of the set has an IoU."""
        vals = self.iou()[list(resolve_class_set(class_set, self.num_classes))]
        vals = vals[~np.isnan(vals)]
        return float(vals.mean()) if vals.size else float("nan")

    def pixel_accuracy(self) -> float:
        """Correct / counted pixels (ignore pixels excluded); NaN if nothing was counted."""
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def _names(self, class_names: Sequence[str] | None) -> tuple[str, ...]:
        if class_names is None:
            if self.num_classes == len(CITYSCAPES_CLASSES):
                return CITYSCAPES_CLASSES
            return tuple(str(i) for i in range(self.num_classes))
        names = tuple(str(n) for n in class_names)
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")
        return names

    def summary(
        self,
        class_names: Sequence[str] | None = None,
        class_sets: Sequence[str | Sequence[int] | None] = ("19",),
        include_matrix: bool = False,
    ) -> dict:
        """A JSON-friendly report (fractions in [0, 1]; NaN becomes ``None``)::

        {"miou": {"19": 0.61, ...}, "pixel_accuracy": ..., "mean_class_accuracy": ...,
         "pixels": N, "per_class": [{"id", "name", "iou", "accuracy", "gt_pixels",
         "pred_pixels", "in_sets": [...]}, ...], "class_sets": {"19": [ids]}, "convention"}
        """
        names = self._names(class_names)
        sets = {
            class_set_key(s, self.num_classes): resolve_class_set(s, self.num_classes)
            for s in class_sets
        }
        iou, acc = self.iou(), self.class_accuracy()
        gt, pr = self.matrix.sum(1), self.matrix.sum(0)
        macc = acc[~np.isnan(acc)]
        doc = {
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "pixels": self.total,
            "miou": {k: _nan_to_none(self.miou(ids)) for k, ids in sets.items()},
            "pixel_accuracy": _nan_to_none(self.pixel_accuracy()),
            "mean_class_accuracy": _nan_to_none(float(macc.mean()) if macc.size else math.nan),
            "per_class": [
                {
                    "id": c,
                    "name": names[c],
                    "iou": _nan_to_none(iou[c]),
                    "accuracy": _nan_to_none(acc[c]),
                    "gt_pixels": int(gt[c]),
                    "pred_pixels": int(pr[c]),
                    "in_sets": [k for k, ids in sets.items() if c in ids],
                }
                for c in range(self.num_classes)
            ],
            "class_sets": {k: list(ids) for k, ids in sets.items()},
            "convention": CONVENTION,
        }
        if include_matrix:
            doc["confusion_matrix"] = self.matrix.tolist()
        return doc

    def format_table(
        self,
        class_names: Sequence[str] | None = None,
        class_sets: Sequence[str | Sequence[int] | None] = ("19",),
        digits: int = 2,
    ) -> str:
        """A markdown table, in percent: one row per class of the union of ``class_sets``,
        then one ``mIoU (<set>)`` row per set and the pixel accuracy."""
        names = self._names(class_names)
        sets = {
            class_set_key(s, self.num_classes): resolve_class_set(s, self.num_classes)
            for s in class_sets
        }
        shown = sorted(set().union(*sets.values())) if sets else list(range(self.num_classes))
        iou = self.iou()

        def pct(x: float) -> str:
            return "n/a" if math.isnan(x) else f"{100 * x:.{digits}f}"

        rows = ["| class | IoU (%) |", "|---|---:|"]
        rows += [f"| {names[c]} | {pct(iou[c])} |" for c in shown]
        rows += [f"| **mIoU ({k})** | **{pct(self.miou(ids))}** |" for k, ids in sets.items()]
        rows.append(f"| pixel accuracy | {pct(self.pixel_accuracy())} |")
        return "\n".join(rows)

    def __repr__(self) -> str:
        return f"ConfusionMatrix(num_classes={self.num_classes}, pixels={self.total}, miou={self.miou():.4f})"
