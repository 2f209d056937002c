#!/usr/bin/env python
"""Does a translation carry the target's statistics? The reverse-variance choices, measured.

Translates the first ``--images`` source images with the trained target DDPM at depth ``n``
(unguided phi^n) with each sampler setting, and reports for every output set:

- residual high-frequency std: ``std(x - blur3x3(x))`` in [-1, 1] units (noise left behind
  shows up here; real target images give the reference value);
- patch SWD to target val (``diffdass.evaluation.distance``; x1e3, lower = closer to target);
- with ``--g0``: target-val mIoU of g_0 with BatchNorm statistics re-estimated on the
  translations (AdaBN on translations: do they carry target feature statistics?).

It also scores unconditional DDPM samples (pure noise -> image, analytic variance) and the
reference rows target train / source train. Example::

    python studies/sampler_quality.py --data runs/benchmark/data \\
        --ddpm runs/benchmark/ddpm/checkpoints/final.safetensors \\
        --g0 runs/benchmark/source_only/checkpoints/final.safetensors --n 300 --steps 6
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from diffdass.adaptation.adabn import adabn
from diffdass.adaptation.ddpm_training import ddpm_moments, load_ddpm, sample_images
from diffdass.data.folder import FolderDataset
from diffdass.diffusion.sampler import SamplerOptions, as_eps_fn, translate
from diffdass.diffusion.schedule import DDPMSchedule
from diffdass.evaluation.distance import image_set_distance


def hf_std(x: torch.Tensor) -> float:
    """Std of the image minus its 3x3 box blur (replicate padding)."""
    k = torch.ones(3, 1, 3, 3) / 9.0
    blur = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=3)
    return float((x - blur).std())


def load(root: Path, split: str, limit: int, labels: str = "none") -> torch.Tensor:
    ds = FolderDataset(root, split, labels)
    return torch.stack([ds[i]["image"] for i in range(min(limit, len(ds)))])


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", type=Path, required=True, help="benchmark root (source/, target/)")
    p.add_argument("--ddpm", type=Path, required=True, help="train-ddpm final checkpoint")
    p.add_argument("--g0", type=Path, default=None, help="source-only checkpoint (AdaBN probe)")
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--steps", type=int, default=6, help="respaced reverse steps")
    p.add_argument("--images", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write results.json here")
    args = p.parse_args()

    torch.manual_seed(args.seed)
    unet, meta = load_ddpm(args.ddpm, "cpu")
    moments = ddpm_moments(meta)
    if moments is None:
        raise SystemExit(f"{args.ddpm}: no eps moments; re-run train-ddpm on it to add them")
    sched = DDPMSchedule(num_timesteps=int(meta.get("num_timesteps", 1000)))
    eps = as_eps_fn(unet)
    src = load(args.data / "source", "train", args.images)
    val = load(args.data / "target", "val", 1000)
    tgt_train = load(args.data / "target", "train", args.images)
    settings = {
        f"{args.steps} steps, fixed_large (paper Sigma)": (args.steps, SamplerOptions()),
        f"{args.steps} steps, fixed_small": (args.steps, SamplerOptions(variance="fixed_small")),
        f"{args.steps} steps, analytic + clip (default)": (
            args.steps,
            SamplerOptions(variance="analytic", clip_x0=True, moments=moments),
        ),
        f"{args.steps} steps, DDIM + clip": (args.steps, SamplerOptions("ddim", clip_x0=True)),
        f"all {args.n} steps, fixed_large (paper)": (None, SamplerOptions()),
    }
    sets: dict[str, torch.Tensor] = {
        "target train (reference)": tgt_train,
        "source train (untranslated)": src,
    }
    with torch.no_grad():
        for name, (steps, opts) in settings.items():
            outs = []
            for b in range(0, len(src), 16):
                g = torch.Generator().manual_seed(args.seed * 1000 + b)
                x = translate(src[b : b + 16], args.n, eps, sched, None, g, steps, options=opts)
                outs.append(x.clamp(-1, 1))
            sets[f"phi^{args.n}, {name}"] = torch.cat(outs)
            print(f"translated: {name}", flush=True)
        size = tuple(meta["sample_size"])
        sets["DDPM samples (50 steps, analytic)"] = sample_images(
            unet, sched, len(src), size, 50, args.seed, "cpu", moments
        )
    g0 = None
    if args.g0 is not None:
        from diffdass.evaluation.evaluate import evaluate
        from diffdass.models.factory import load_segmenter

        val_ds = FolderDataset(args.data / "target", "val", "required")
    rows = []
    for name, x in sets.items():
        row = {"set": name, "hf_std": hf_std(x), "swd": image_set_distance(x, val)["swd"]}
        if args.g0 is not None and "DDPM samples" not in name:
            g0, _ = load_segmenter(args.g0, "cpu")
            adabn(g0, [x[i : i + 16] for i in range(0, len(x), 16)])
            res = evaluate(g0, val_ds, ["19"], "cpu", progress=False)
            row["adabn_miou"] = next(iter(res["miou"].values()))
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nreal target val: hf_std {hf_std(val):.3f}")
    head = "| images | residual HF std | SWD to target val |" + (
        " g_0 + AdaBN on them, mIoU19 |" if args.g0 else ""
    )
    print("\n" + head + "\n|---|---:|---:|" + ("---:|" if args.g0 else ""))
    for r in rows:
        extra = f" {r['adabn_miou']:.1f} |" if "adabn_miou" in r else (" |" if args.g0 else "")
        print(f"| {r['set']} | {r['hf_std']:.3f} | {r['swd']:.1f} |{extra}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(
            json.dumps({"args": vars(args) | {"data": str(args.data)}, "rows": rows}, default=str)
        )


if __name__ == "__main__":
    main()
