#!/usr/bin/env python
"""Where along t is the target DDPM accurate? Predicted-x_0 statistics per timestep, and the
coarse / fine split of its samples' distance to the target.

Translation at n <= N only ever evaluates the UNet at t < N, while unconditional samples
start at t = T - 1. This script separates the two (docs/results/2026-12-01-guidance-lambda80.md):

1. For target train images diffused to t (forward process, fixed seed), the UNet's eps error
   and the mean of its predicted x_0 (raw and clipped to [-1, 1]) against the true mean.
2. Unconditional samples (16 per sampler: 50 analytic ancestral steps, 50 DDIM steps, 250
   fixed_small steps, all with clipped x_0; with ``--priors`` also the analytic sampler
   started from x_T = sqrt(abar_T) mu + sqrt(1 - abar_T) eps, mu the target's mean colour,
   with and without clipping) and their patch SWD x1e3 to target val per
   Laplacian level (level 0: fine detail, level 1: coarse content and colour) and mean colour.

    python studies/ddpm_timesteps.py --run runs/study/seed0/base --data runs/study/data

Cost measured on the shared 2-core CPU (one torch thread, other jobs running): about 1 minute
for part 1 and 3, 3 and 8 minutes for the three samplers of part 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from _run_args import add_run_args, data_root  # the studies folder is on sys.path
from diffdass.adaptation.ddpm_training import ddpm_moments, load_ddpm
from diffdass.adaptation.stage_metrics import stack_images
from diffdass.data.folder import FolderDataset
from diffdass.data.transforms import Resize
from diffdass.diffusion.sampler import SamplerOptions, as_eps_fn, reverse
from diffdass.diffusion.schedule import DDPMSchedule
from diffdass.evaluation.distance import image_set_distance

TIMESTEPS = (999, 950, 900, 800, 700, 500, 300, 100)


@torch.no_grad()
def x0_prediction_rows(unet, schedule: DDPMSchedule, x0: torch.Tensor, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for t in TIMESTEPS:
        a = schedule.alphas_cumprod[t]
        e = torch.randn(x0.shape, generator=g)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * e
        eh = unet(xt, torch.full((len(x0),), t)).sample
        x0h = (xt - (1 - a).sqrt() * eh) / a.sqrt()
        rows.append(
            {
                "t": t,
                "abar": float(a),
                "eps_mse": float(((eh - e) ** 2).mean()),
                "x0_mean_true": float(x0.mean()),
                "x0_hat_mean": float(x0h.mean()),
                "x0_hat_clipped_mean": float(x0h.clamp(-1, 1).mean()),
            }
        )
    return rows


@torch.no_grad()
def sample_rows(unet, schedule, moments, size, xv, n: int, seed: int, mu=None) -> list[dict]:
    """Samples of three samplers from x_T ~ N(0, I); with ``mu`` (per-channel data mean) also
    the analytic sampler started from ``sqrt(abar_T) mu + sqrt(1 - abar_T) eps`` (the forward
    marginal's mean), with and without x_0 clipping."""
    analytic = SamplerOptions(variance="analytic", clip_x0=True, moments=moments)
    small = SamplerOptions(variance="fixed_small", clip_x0=True)
    samplers = [
        ("analytic, 50 steps", 50, analytic, False),
        ("DDIM, 50 steps", 50, SamplerOptions(solver="ddim", clip_x0=True), False),
        ("fixed_small, 250 steps", 250, small, False),
    ]
    if mu is not None:
        no_clip = SamplerOptions(variance="analytic", clip_x0=False, moments=moments)
        samplers += [
            ("analytic, 50 steps, x_T with the data mean", 50, analytic, True),
            ("same, no x_0 clipping", 50, no_clip, True),
        ]
    a_t = schedule.alphas_cumprod[-1]
    rows = []
    for name, steps, opts, shifted in samplers:
        g = torch.Generator().manual_seed(seed)
        sched = schedule.respace(steps)
        x = torch.randn((n, 3, *size), generator=g)
        if shifted:
            x = a_t.sqrt() * mu + (1 - a_t).sqrt() * x
        x = reverse(x, sched.num_timesteps, as_eps_fn(unet), sched, generator=g, options=opts)
        rows.append(_distance_row(name, x.clamp(-1, 1), xv))
    return rows


def _distance_row(name: str, x: torch.Tensor, xv: torch.Tensor) -> dict:
    d = image_set_distance(x, xv)
    return {
        "images": name,
        "swd": d["swd"],
        "swd_level0_fine": d["swd_per_level"][0],
        "swd_level1_coarse": d["swd_per_level"][1],
        "mean_rgb": [round(v, 3) for v in x.mean((0, 2, 3)).tolist()],
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_args(ap)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write the rows here (json)")
    ap.add_argument(
        "--priors",
        action="store_true",
        help="also start the sampler from the forward marginal's mean (with / without clipping)",
    )
    args = ap.parse_args(argv)
    data = data_root(args)
    unet, meta = load_ddpm(args.run / "ddpm" / "checkpoints" / "final.safetensors")
    unet.eval()
    schedule = DDPMSchedule(num_timesteps=int(meta.get("num_timesteps", 1000)))
    val = FolderDataset(data / "target", "val", "none")
    xv, _ = stack_images(val, len(val))
    size = tuple(xv.shape[-2:])
    xt, _ = stack_images(
        FolderDataset(data / "target", "train", "none", transform=Resize(*size)), args.samples
    )
    xs, _ = stack_images(
        FolderDataset(data / "source", "train", "none", transform=Resize(*size)), args.samples
    )
    mu = None
    if args.priors:
        xm, _ = stack_images(
            FolderDataset(data / "target", "train", "none", transform=Resize(*size)), 64
        )
        mu = xm.mean((0, 2, 3)).view(1, 3, 1, 1)
    res = {
        "x0_prediction": x0_prediction_rows(unet, schedule, xt, args.seed),
        "samples": [
            _distance_row("target train (floor)", xt, xv),
            _distance_row("source (ceiling)", xs, xv),
            *sample_rows(unet, schedule, ddpm_moments(meta), size, xv, args.samples, args.seed, mu),
        ],
        "target_val_mean_rgb": [round(v, 3) for v in xv.mean((0, 2, 3)).tolist()],
    }
    print("| t | abar | eps MSE | true x_0 mean | predicted x_0 mean | clipped |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in res["x0_prediction"]:
        print(
            f"| {r['t']} | {r['abar']:.1e} | {r['eps_mse']:.4f} | {r['x0_mean_true']:.2f} "
            f"| {r['x0_hat_mean']:.2f} | {r['x0_hat_clipped_mean']:.2f} |"
        )
    print("\n| images | SWD | level 0 (fine) | level 1 (coarse) | mean RGB |")
    print("|---|---:|---:|---:|---|")
    for r in res["samples"]:
        print(
            f"| {r['images']} | {r['swd']:.0f} | {r['swd_level0_fine']:.0f} "
            f"| {r['swd_level1_coarse']:.0f} | {r['mean_rgb']} |"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
