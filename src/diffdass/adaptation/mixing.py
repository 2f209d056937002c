"""The self-training tools shared by CICLD and the DACS baseline: ClassMix, pseudo-labels,
DACS's confidence weights of a mixed image, ClassMix's pixel jitter, the segmentation loss
that tolerates all-ignored batches (plain and weighted), and the seeded source/target
streams."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from diffdass.adaptation.seg_training import ce_loss
from diffdass.data.folder import StreamBatchSampler, StreamDataset, collate_items
from diffdass.data.labels import IGNORE_INDEX
from diffdass.data.scan import scan_split
from diffdass.utils.config import ConfigError
from diffdass.utils.device import loader_options


def classmix(
    x_s: Tensor, y_s: Tensor, x_t: Tensor, y_t: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """ClassMix (Olsson et al. 2021) of source into target, per sample.

    For every pair, ``ceil(n / 2)`` of the ``n`` classes present in ``y_s`` (ignore pixels
    excluded) are drawn without replacement; their pixels are pasted, image and label alike,
    onto the target image and its (pseudo-)label ``y_t``.

    Returns ``(x_mix, y_mix, mask)``, ``mask`` (B, H, W) bool: the pixels taken from source.
    """
    masks = []
    for i in range(x_s.shape[0]):
        classes = torch.unique(y_s[i].cpu())
        classes = classes[classes != IGNORE_INDEX]
        n = len(classes)
        pick = classes[torch.randperm(n, generator=generator)[: (n + n % 2) // 2]]
        masks.append(torch.isin(y_s[i], pick.to(y_s.device)))
    mask = torch.stack(masks)
    x_mix = torch.where(mask.unsqueeze(1), x_s, x_t)
    y_mix = torch.where(mask, y_s, y_t)
    return x_mix, y_mix, mask


def segmentation_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Eq. 7: pixel cross-entropy (ignore 255); exactly 0 (with a graph) when every pixel is
    ignored, where ``F.cross_entropy`` would return NaN."""
    if not bool((labels != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    return ce_loss(logits, labels, IGNORE_INDEX)


def mix_weights(conf: Tensor, mask: Tensor, threshold: float, use_target: bool = True) -> Tensor:
    """DACS's pixel weights of a ClassMix image (Tranheden et al. 2021): 1 on the pixels pasted
    from the source (``mask``), and on the target's pixels the share of that target image's
    pixels whose pseudo-label confidence ``conf`` (B, H, W) reaches ``threshold``.
    ``use_target=False`` (a warm-up) gives the target's pixels weight 0."""
    q = (conf >= threshold).float().mean(dim=(1, 2), keepdim=True)
    if not use_target:
        q = torch.zeros_like(q)
    return torch.where(mask, torch.ones_like(conf), q.expand_as(conf))


def weighted_segmentation_loss(logits: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    """Pixel cross-entropy (ignore 255; logits upsampled bilinearly to the label size), each
    pixel's term times ``weights`` (B, H, W), divided by the number of labelled pixels: equal to
    :func:`segmentation_loss` when every weight is 1."""
    valid = labels != IGNORE_INDEX
    if not bool(valid.any()):
        return logits.sum() * 0.0
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    ce = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="none")
    return (ce * weights.to(ce.dtype))[valid].sum() / valid.sum()


def pixel_jitter(x: Tensor, strength: float, generator: torch.Generator) -> Tensor:
    """Per-image brightness shift ``U(-s, s)`` and contrast ``U(1-s, 1+s)`` around the image
    mean, clamped to ``[-1, 1]``: ClassMix's pixel-level augmentation of the mixed image."""
    if strength <= 0:
        return x
    b = x.shape[0]
    r = torch.rand((2, b), generator=generator).to(x.device, x.dtype) * 2 - 1
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = (1 + strength * r[0]).view(-1, 1, 1, 1)
    bright = (strength * r[1]).view(-1, 1, 1, 1)
    return ((x - mean) * contrast + mean + bright).clamp(-1.0, 1.0)


def pseudo_labels(logits: Tensor, threshold: float = 0.0) -> tuple[Tensor, Tensor]:
    """Arg-max labels of ``logits`` and their softmax confidence; pixels whose confidence is
    below ``threshold`` get the ignore label."""
    conf, labels = torch.softmax(logits.float(), dim=1).max(dim=1)
    if threshold > 0:
        labels = torch.where(conf < threshold, torch.full_like(labels, IGNORE_INDEX), labels)
    return labels, conf


def stream_loader(
    ds,
    batch_size: int,
    seed: int,
    start: int,
    stop: int,
    workers: int,
    device: torch.device | None = None,
):
    """Batches ``start .. stop-1`` of the seeded stream of ``ds`` (one process), loaded for
    ``device`` (:func:`~diffdass.utils.device.loader_options`; None: the CPU's options)."""
    return torch.utils.data.DataLoader(
        StreamDataset(ds),
        batch_sampler=StreamBatchSampler(len(ds), batch_size, seed, start, stop),
        collate_fn=collate_items,
        **loader_options(torch.device("cpu") if device is None else device, workers),
    )


def scan_domain_pair(cfg):
    """Scans of ``cfg.source`` (labeled) and ``cfg.target`` (labels not read), checked to
    share one class set; shared by the self-training loops (CICLD, DACS)."""
    src = scan_split(cfg.source.root, cfg.source.split, "required", cfg.on_error)
    tgt = scan_split(cfg.target.root, cfg.target.split, "none", cfg.on_error)
    if src.classes.names != tgt.classes.names:
        raise ConfigError("source and target datasets have different classes.yaml")
    return src, tgt
