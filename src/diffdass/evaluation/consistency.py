"""Label-consistency score of a translated set: how well a fixed segmenter (on the built-in
benchmark: the target-trained oracle) recovers the *source* labels from the translated
images. Higher means the translation preserved the semantics of the label map.
"""

from __future__ import annotations

from pathlib import Path

from diffdass.data.folder import FolderDataset
from diffdass.evaluation.evaluate import evaluate, resolve_class_sets


def label_consistency(
    segmenter_ckpt: str | Path, root: str | Path, split: str, device="auto", class_sets=None
) -> dict:
    """mIoU (%) of ``segmenter_ckpt`` on ``root/split`` against the labels stored there."""
    from diffdass.models.factory import load_segmenter
    from diffdass.utils.device import resolve_device

    dev = resolve_device(device)
    model, _ = load_segmenter(segmenter_ckpt, dev)
    ds = FolderDataset(root, split, "required")
    sets = class_sets or (["19"] if ds.classes.num_classes == 19 else ["all"])
    resolve_class_sets(sets, ds.classes.num_classes)
    res = evaluate(model, ds, sets, dev, progress=False)
    return {
        "miou": res["miou"],
        "per_class_iou": res["per_class_iou"],
        "scored_by": str(segmenter_ckpt),
    }
