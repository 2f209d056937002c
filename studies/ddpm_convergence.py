#!/usr/bin/env python
"""When does the target DDPM stop improving? Sample distance of each training snapshot.

The study configuration trains the DDPM until its sample distance stops improving. Train it with ``ddpm.snapshot_every`` set (``configs/benchmark_study.yaml`` does), which
keeps the EMA weights as ``<run>/ddpm/checkpoints/snapshot_<iteration>.safetensors``; this
script then draws ``--samples`` unconditional samples from every snapshot (50 respaced steps
of the translation sampler: analytic variance with moments estimated on 16 target train
images, clipped x_0) and measures their patch SWD x1e3 to ``<run>/data/target/val``, beside
the floor (target train vs target val) and the ceiling (source vs target val). A markdown
table goes to stdout and ``OUT`` (json).

    python studies/ddpm_convergence.py --run runs/study/seed0 --out runs/study/seed0/ddpm_convergence.json

Cost measured on the shared 2-core CPU (one torch thread, other jobs running): about 4
minutes per snapshot for 32 samples at 64x128.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from _run_args import add_run_args, data_root  # the studies folder is on sys.path
from diffdass.adaptation.ddpm_training import estimate_moments, load_ddpm, sample_images
from diffdass.adaptation.stage_metrics import stack_images
from diffdass.data.folder import FolderDataset
from diffdass.data.transforms import Resize
from diffdass.diffusion.schedule import DDPMSchedule
from diffdass.evaluation.distance import image_set_distance


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_args(ap)
    ap.add_argument("--out", type=Path, default=None, help="write the rows here (json)")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    data = data_root(args)
    ckpts = args.run / "ddpm" / "checkpoints"
    snaps = sorted(ckpts.glob("snapshot_*.safetensors"))
    if not snaps:
        raise SystemExit(f"{ckpts}: no snapshot_*.safetensors (train with ddpm.snapshot_every)")
    val = FolderDataset(data / "target", "val", "none")
    size = tuple(val[0]["image"].shape[-2:])
    xv, _ = stack_images(val, len(val))
    train = FolderDataset(data / "target", "train", "none", transform=Resize(*size))
    xt, _ = stack_images(train, args.samples)
    xs, _ = stack_images(
        FolderDataset(data / "source", "train", "none", transform=Resize(*size)), args.samples
    )
    rows = [
        {"iterations": "floor: target train", "swd": float(image_set_distance(xt, xv)["swd"])},
        {"iterations": "ceiling: source", "swd": float(image_set_distance(xs, xv)["swd"])},
    ]
    for snap in snaps:
        unet, meta = load_ddpm(snap, "cpu")
        schedule = DDPMSchedule(num_timesteps=int(meta.get("num_timesteps", 1000)))
        moments = estimate_moments(unet, train, schedule, "cpu", args.seed)
        x = sample_images(unet, schedule, args.samples, size, 50, args.seed, "cpu", moments)
        rows.append(
            {
                "iterations": int(meta["iteration"]),
                "swd": float(image_set_distance(x, xv, seed=args.seed)["swd"]),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    print(f"\nDDPM samples vs target val ({args.samples} images, patch SWD x1e3), {args.run}\n")
    print("| DDPM | SWD x1e3 |")
    print("|---|---:|")
    for r in rows:
        print(f"| {r['iterations']} | {r['swd']:.1f} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
