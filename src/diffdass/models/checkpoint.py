"""Rebuild a segmenter from a diffdass checkpoint (architecture stored in its metadata)."""

from __future__ import annotations

from pathlib import Path

import torch

from diffdass.models.factory import build_segmenter
from diffdass.utils.checkpoint import load_checkpoint, read_meta


def load_segmenter(path: str | Path, device: str | torch.device = "cpu", name: str = "model"):
    """A segmenter with the weights of checkpoint ``path`` (random init, then loaded)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: segmenter checkpoint not found")
    meta = read_meta(path)
    for key in ("arch", "num_classes"):
        if key not in meta:
            raise ValueError(
                f"{path}: not a diffdass segmenter checkpoint (no '{key}' in metadata)"
            )
    model = build_segmenter(meta["arch"], int(meta["num_classes"]), pretrained=False)
    load_checkpoint(path, {name: model}, device="cpu")
    return model.to(device).eval(), meta
