#!/usr/bin/env python
"""How many reverse steps does a translation need? Label consistency and distance vs steps.

The study configuration must use "enough reverse steps that doubling them changes label
consistency by less than 1 point". This script measures it on a finished
``diffdass run`` folder::

    <run>/data/source/train               labeled source images (translated)
    <run>/data/target/val                 target val (reference set of the distance)
    <run>/ddpm/checkpoints/final.safetensors     the target DDPM
    <run>/source_only/checkpoints/final.safetensors   g_0, the guidance segmenter
    <run>/oracle/checkpoints/final.safetensors   the target oracle (label consistency)

For each ``--steps`` k it translates the first ``--images`` source images at depth ``--n``
with k respaced reverse steps (the run's sampler and guidance settings from its
``config.yaml``; unguided and guided, optionally at several guidance scales ``--scales``) and prints a markdown table of

- label consistency: the oracle's mIoU19 (%) of the translations against the source labels;
- distance: patch SWD x1e3 to target val (:mod:`diffdass.evaluation.distance`);
- seconds per image on this machine.

Example (16 images and steps 6, 12, 24 took about 7 minutes on the shared 2-core CPU)::

    python studies/reverse_steps.py --run runs/benchmark --n 300 --steps 6 12 24 --images 16

Same noise seed for every k, so rows differ only by the number of steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
import yaml

from _run_args import add_run_args  # the studies folder is on sys.path
from diffdass.adaptation.ddpm_training import ddpm_moments, load_ddpm
from diffdass.adaptation.stage_metrics import oracle_consistency, stack_images, translate_images
from diffdass.adaptation.translation import GuidanceConfig, SamplerConfig
from diffdass.data.folder import FolderDataset
from diffdass.data.transforms import Resize
from diffdass.diffusion.schedule import DDPMSchedule
from diffdass.evaluation.distance import image_set_distance
from diffdass.models.factory import load_segmenter
from diffdass.utils.config import from_dict


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_args(ap)
    ap.add_argument("--n", type=int, default=None, help="noising depth (default: ptl.n_max)")
    ap.add_argument("--steps", type=int, nargs="+", default=[6, 12, 24])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--scales",
        type=float,
        nargs="+",
        default=None,
        help="guidance scales lambda to try (default: the run's ptl.guidance.scale)",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args(argv)

    run = args.run
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    ptl = cfg.get("ptl", {})
    guidance = from_dict(GuidanceConfig, ptl.get("guidance", {}))
    sampler = from_dict(SamplerConfig, ptl.get("sampler", {}) or {})
    n = args.n or int(ptl.get("n_max", 300))

    unet, meta = load_ddpm(run / "ddpm" / "checkpoints" / "final.safetensors", "cpu")
    moments = ddpm_moments(meta)
    schedule = DDPMSchedule(num_timesteps=int(meta.get("num_timesteps", 1000)))
    tf = Resize(*tuple(meta["sample_size"]))
    data = args.data or run / "data"
    src = FolderDataset(data / "source", "train", "required", transform=tf)
    xs, ys = stack_images(src, args.images, with_labels=True)
    val = FolderDataset(data / "target", "val", "none", transform=tf)
    xv, _ = stack_images(val, len(val))
    g0 = load_segmenter(run / "source_only" / "checkpoints" / "final.safetensors", "cpu")[0]
    oracle = load_segmenter(run / "oracle" / "checkpoints" / "final.safetensors", "cpu")[0]
    none = GuidanceConfig(kind="none")

    rows = [
        {
            "steps": 0,
            "kind": "source (untranslated)",
            "consistency": oracle_consistency(oracle, xs, ys, src.classes, "cpu"),
            "swd": float(image_set_distance(xs, xv, seed=args.seed)["swd"]),
            "s_per_image": 0.0,
        }
    ]
    scales = args.scales or [guidance.scale]
    for k in args.steps:
        settings = [("unguided", None, none)]
        for lam in scales:
            g = dataclasses.replace(guidance, scale=lam)
            settings.append((f"guided, lambda {lam:g}", g0.eval(), g))
        for kind, seg, g in settings:
            t = time.perf_counter()
            x = translate_images(
                xs, ys, n, unet, schedule, seg, g, sampler, moments, k, args.seed, "cpu"
            )
            sec = (time.perf_counter() - t) / len(xs)
            rows.append(
                {
                    "steps": k,
                    "kind": kind,
                    "consistency": oracle_consistency(oracle, x, ys, src.classes, "cpu"),
                    "swd": float(image_set_distance(x, xv, seed=args.seed)["swd"]),
                    "s_per_image": sec,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nn = {n}, {len(xs)} source images, run {run}\n")
    print("| steps | translation | label consistency (oracle mIoU19) | SWD x1e3 | s / image |")
    print("|---:|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['steps']} | {r['kind']} | {r['consistency']:.1f} | {r['swd']:.1f} |"
            f" {r['s_per_image']:.2f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
