"""CICLD's inference choices, measured on a trained checkpoint (no training).

Where the paper is vague, CICLD's inference makes choices (docs/cicld.md): the condition of
an unlabeled image (``self``: the arg-max of an unconditioned pass conditions a second pass;
``none``: one unconditioned pass), the noise level t the latent is diffused to and the number
of DDIM steps back. This script scores one or more ``final.safetensors`` on a labeled split
under each variant, plus ``label``: the split's ground truth as the condition, which no
deployed model has. It bounds how much the condition can carry and shows whether the
network copies it (label leakage)::

    python benchmarks/cicld_inference.py runs/cicld_ablation/seed*/base/cicld/checkpoints/final.safetensors \\
        --data runs/cicld_ablation/data/target --split val --timesteps 0,100,200,400

Prints a markdown table (mIoU19 per checkpoint and variant); ``--json`` also writes it.
``--probe N`` adds, on N images, how far the ground-truth condition moves the logits and
the middle block's features.
The noise of Eq. 1 is seeded per image (seed 0), as in ``CICLDSegmenter``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from diffdass.adaptation.cicld import load_cicld
from diffdass.data.scan import scan_split
from diffdass.evaluation.metrics import ConfusionMatrix, resolve_class_set
from diffdass.models.cicld import CICLDSegmenter, denoise_timesteps


@torch.no_grad()
def predict(net, x, label, t_start: int, steps: int, condition: str, seed: int = 0):
    """Logits of ``net`` (a CICLDNet) at input size under one inference variant: ``self`` and
    ``none`` are :class:`CICLDSegmenter` itself; ``label`` is one pass conditioned on the
    given label map, with the segmenter's noise (seeded by ``seed``)."""
    if condition != "label" or net.mask_encoder is None:
        return CICLDSegmenter(net, t_start, steps, condition, seed)(x)
    post, skips = net.encode(x)
    z0 = post.mode()
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed), dtype=z0.dtype)
    tokens = net.condition_tokens(label, z0)
    ts = denoise_timesteps(t_start, steps)
    return net.decode_logits(net.denoise(z0, tokens, ts, noise)[-1], skips)


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
    and, at the middle block (Eq. 5), the mean norms of o, of the tokens c and of the
    change of o."""
    from diffdass.models.cicld import ConditionedMidBlock, condition_features

    mids = [m for m in net.modules() if isinstance(m, ConditionedMidBlock)]
    if not mids or net.mask_encoder is None:
        return {}
    mid, norms = mids[0], []

    def hook(module, args, output):
        if module.tokens is not None:  # recompute o (the block's own output before Eq. 5)
            o = module.block(*args)
            delta = condition_features(o, module.tokens) - o
            norms.append(
                [o.norm(dim=1).mean(), module.tokens.norm(dim=2).mean(), delta.norm(dim=1).mean()]
            )

    handle = mid.register_forward_hook(hook)
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
        handle.remove()
    o, c, d = (float(sum(r[k] for r in norms) / len(norms)) for k in range(3))
    return {
        "max_logit_change": max_dl,
        "mean_abs_logit": mean_abs / min(n, len(ds)),
        "argmax_changed_pct": 100.0 * flips / pixels,
        "mid_norm_o": o,
        "mid_norm_c": c,
        "mid_norm_delta": d,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", type=Path, help="CICLD final.safetensors files")
    ap.add_argument("--data", type=Path, required=True, help="labeled folder dataset root")
    ap.add_argument("--split", default="val")
    ap.add_argument(
        "--timesteps", default="", help="comma list of noise levels t (default: the trained one)"
    )
    ap.add_argument("--conditions", default="self,none,label")
    ap.add_argument(
        "--probe",
        type=int,
        default=0,
        help="also measure, on the first N images at the trained t, how far the ground-truth\n"
        "condition moves the logits and the middle block (0: off)",
    )
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    ds = scan_split(a.data, a.split, "required").dataset()
    conds = [c.strip() for c in a.conditions.split(",") if c.strip()]
    for c in conds:
        if c not in ("self", "none", "label"):
            raise SystemExit(f"--conditions: unknown {c!r} (self, none, label)")
    results: dict = {}
    for path in a.checkpoints:
        seg, meta = load_cicld(path)
        net = seg.net.eval()
        t_trained, s_trained = int(meta["noise_timestep"]), int(meta["denoise_steps"])
        ts = [int(t) for t in a.timesteps.split(",") if t.strip()] or [t_trained]
        res = results[str(path)] = {}
        for t in ts:
            # t = 0: one step (denoise_timesteps needs t >= steps - 1)
            steps = max(1, min(s_trained, t))
            for c in conds:
                res[f"t={t} steps={steps} {c}"] = score(net, ds, t, steps, c)
                print(f"{path}: t={t} steps={steps} {c}: {res[f't={t} steps={steps} {c}']:.1f}")
        if a.probe > 0:
            probe = probe_condition(net, ds, a.probe, t_trained, s_trained)
            print(f"{path}: condition probe ({a.probe} images): " + json.dumps(probe))
            res["probe"] = probe
    cols = [k for k in next(iter(results.values())) if k != "probe"]
    lines = ["| checkpoint | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for path, res in results.items():
        lines.append(
            f"| {path} | " + " | ".join(f"{res.get(k, float('nan')):.1f}" for k in cols) + " |"
        )
    print("\n".join(lines))
    if a.json is not None:
        a.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
