"""CICLD's inference variants and probes of what its diffusion path carries, on a trained
network (``studies/cicld_inference.py`` prints them for checkpoints; every CICLD run writes
the two shares into ``summary.json``): ``predict`` (the ``self``, ``none`` and ground-truth
``label`` conditions), ``score`` (mIoU of one variant), ``probe_condition`` (how far the
ground-truth condition moves logits and the middle block) and ``noise_probe`` (the share of
pixels whose class changes when the denoised latent is replaced by noise)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffdass.evaluation.metrics import ConfusionMatrix, resolve_class_set
from diffdass.models.cicld import CICLDSegmenter


@torch.no_grad()
def predict(net, x, label, t_start: int, steps: int, condition: str, seed: int = 0):
    """Logits of ``net`` (a CICLDNet) at input size under one inference variant: ``self`` and
    ``none`` are :class:`CICLDSegmenter` itself; ``label`` is one pass conditioned on the
    given label map, with the segmenter's noise (seeded by ``seed``)."""
    seg = CICLDSegmenter(net, t_start, steps, "none" if condition == "label" else condition, seed)
    if condition != "label" or net.mask_encoder is None:
        return seg(x)
    return seg.predict(net.encode(x), label)


def score(net, ds, t_start: int, steps: int, condition: str) -> float:
    nc = ds.classes.num_classes
    cm = ConfusionMatrix(nc, ds.classes.ignore_index)
    for i in range(len(ds)):
        item = ds[i]
        x, y = item["image"][None], item["label"]
        logits = predict(net, x, y[None], t_start, steps, condition)
        logits = F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
        cm.update(logits.argmax(1)[0], y)
    return float(cm.miou(resolve_class_set("19", nc))) * 100


@torch.no_grad()
def probe_condition(net, ds, n: int, t_start: int, steps: int) -> dict:
    """How far the ground-truth condition moves the prediction (first ``n`` images): the
    largest logit change against no condition, the share of pixels whose arg-max changes,
    and, with Eq. 5 conditioning, the mean norms at the middle block of o, of the tokens c
    and of the change of o. Empty without conditioning."""
    from diffdass.models.cicld import ConditionedMidBlock, condition_features

    if net.mask_encoder is None:
        return {}
    mids = [m for m in net.modules() if isinstance(m, ConditionedMidBlock)]
    norms: list = []

    def hook(module, args, output):
        if module.tokens is not None:  # recompute o (the block's own output before Eq. 5)
            o = module.block(*args)
            delta = condition_features(o, module.tokens) - o
            norms.append(
                [o.norm(dim=1).mean(), module.tokens.norm(dim=2).mean(), delta.norm(dim=1).mean()]
            )

    handles = [m.register_forward_hook(hook) for m in mids[:1]]
    max_dl, flips, pixels, mean_abs = 0.0, 0, 0, 0.0
    try:
        for i in range(min(n, len(ds))):
            item = ds[i]
            x, y = item["image"][None], item["label"][None]
            a = predict(net, x, y, t_start, steps, "none")
            b = predict(net, x, y, t_start, steps, "label")
            max_dl = max(max_dl, float((a - b).abs().max()))
            mean_abs += float(a.abs().mean())
            flips += int((a.argmax(1) != b.argmax(1)).sum())
            pixels += a.argmax(1).numel()
    finally:
        for h in handles:
            h.remove()
    res = {
        "max_logit_change": max_dl,
        "mean_abs_logit": mean_abs / min(n, len(ds)),
        "argmax_changed_pct": 100.0 * flips / pixels,
    }
    if norms:
        o, c, d = (float(sum(r[k] for r in norms) / len(norms)) for k in range(3))
        res |= {"mid_norm_o": o, "mid_norm_c": c, "mid_norm_delta": d}
    return res


@torch.no_grad()
def noise_probe(seg: CICLDSegmenter, ds, n: int | None = None, seed: int = 0) -> float:
    """The share of pixels (over the first ``n`` images of ``ds``; all when ``None``) whose
    predicted class changes when the denoised latent that the decoder receives is replaced by
    ``N(0, I)`` noise of its shape (in the normalised units the diffusion works in); the
    decoder keeps its inter-coder features.

    0 means the segmentation does not go through the diffusion path at all (the inter-coder
    features alone decide it); a model whose only path is the latent gets about ``1 - 1/K``
    for K evenly used classes. The noise of image ``i`` is seeded by ``seed + i``."""
    net = seg.net
    device = next(net.parameters()).device
    changed = total = 0
    count = len(ds) if n is None else min(n, len(ds))
    for i in range(count):
        x = ds[i]["image"][None].to(device)
        ref = seg(x).argmax(1)
        enc = net.encode(x)
        gen = torch.Generator().manual_seed(seed + i)
        z = torch.randn(enc.z0.shape, generator=gen, dtype=enc.z0.dtype).to(device)
        probe = net.decode_logits(z, enc).argmax(1)
        changed += int((probe != ref).sum())
        total += ref.numel()
    return changed / max(total, 1)
