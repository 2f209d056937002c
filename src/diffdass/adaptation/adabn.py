"""AdaBN (Li et al., 2016): re-estimate BatchNorm statistics on unlabeled target images.

The simplest domain-adaptation baseline a reviewer asks for: no training, no labels, no
translation. Every BatchNorm layer's ``running_mean`` / ``running_var`` are replaced by the
statistics of its input over the given target images; weights, biases and every other
buffer stay untouched. A method that only re-aligns low-order feature statistics cannot beat
this row, so every adaptation gain is reported next to it.

Estimation: the running statistics are reset and accumulated with ``momentum=None``
(torch's cumulative moving average), i.e. the mean over batches of the per-batch mean and
(unbiased) variance. With equally sized batches this is the average of the batch statistics
(for the mean, exactly the dataset mean). Only BatchNorm modules are put in train mode during
the pass; Dropout and the rest stay in eval mode, and each module's ``training`` flag and
momentum are restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

__all__ = ["adabn", "batchnorm_layers"]


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm (1d/2d/3d, SyncBatchNorm) module of ``model`` that tracks statistics."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


@torch.no_grad()
def adabn(
    model: nn.Module,
    images: Iterable[Tensor],
    device: torch.device | str | None = None,
    max_images: int | None = None,
) -> dict:
    """Replace ``model``'s BatchNorm statistics by those of ``images`` (in place).

    Args:
        model: a segmenter (any module); its BatchNorm layers are re-estimated.
        images: an iterable of image batches ``(B, 3, H, W)`` in the model's input range (or of
            dicts with an ``"image"`` entry, as a DataLoader over a FolderDataset yields).
        device: where to run (default: the model's device).
        max_images: stop after this many images.

    Returns ``{"layers": number of BN layers, "images": images used}``. Raises ``ValueError``
    if the model has no BatchNorm layer or no image was given; on any error the model's
    statistics are left as they were.
    """
    bns = batchnorm_layers(model)
    if not bns:
        raise ValueError("AdaBN: the model has no BatchNorm layer with running statistics")
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    flags = [(m, m.training) for m in model.modules()]
    saved = [(m, m.momentum) for m in bns]
    backup = [{k: v.clone() for k, v in m.state_dict().items()} for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
        m.train()
    seen = 0
    ok = False
    try:
        for batch in images:
            x = batch["image"] if isinstance(batch, dict) else batch
            if max_images is not None:
                x = x[: max_images - seen]
            if x.shape[0] == 0:
                break
            if x.shape[0] == 1 and any(isinstance(m, nn.BatchNorm1d) for m in bns):
                continue  # a 1-image batch has no variance for BatchNorm1d
            model(x.to(device).float())
            seen += x.shape[0]
            if max_images is not None and seen >= max_images:
                break
        ok = seen > 0
    finally:
        for m, was in flags:
            m.training = was
        for m, mom in saved:
            m.momentum = mom
        if not ok:  # never leave a model with reset statistics behind
            for m, state in zip(bns, backup, strict=True):
                m.load_state_dict(state)
    if seen == 0:
        raise ValueError("AdaBN: no target image was given")
    return {"layers": len(bns), "images": seen}
