#!/usr/bin/env python
"""Distance of every stage's images to the target domain (patch SWD, optional KID).

Uses a ``diffdass run`` output folder (default ``runs/benchmark``)::

    <run>/data/source/train/images        labeled source images
    <run>/data/target/train/images        unlabeled target images (the DDPM's training set)
    <run>/data/target/val/images          target validation images: the reference set
    <run>/ddpm/checkpoints/*.safetensors  the target DDPM (final.safetensors, else the newest)
    <run>/oracle/checkpoints/final.safetensors   target oracle (feature network for --kid)

and prints a markdown table of the sliced Wasserstein distance on patches
(:func:`diffdass.evaluation.distance.image_set_distance`, x1e3) of each set against target val:

    floor     target train       (same domain: the noise level of the estimate)
    ceiling   source train       (the untranslated domain gap)
    ddpm      unconditional DDPM samples
    phi^n     source train translated with n noising steps (unguided), for each --n

The DDPM rows use the toolkit's translation sampler (``SamplerConfig`` defaults: ancestral
steps, analytic variance from the eps moments stored in the checkpoint, clipped x_0); see
--solver / --variance / --no-clip-x0.

Every row uses the first ``--images`` images of its set (the DDPM row ``--samples``), the
same seed and the same reference patches, so the rows are comparable; SWD is biased upwards
for finite samples, so compare rows, not absolute values across settings.

    python benchmarks/stage_distances.py --run runs/benchmark --images 64 --n 150 300 600
    python benchmarks/stage_distances.py --run runs/benchmark --skip-ddpm   # floor/ceiling only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from diffdass.data.images import load_images
from diffdass.evaluation.distance import image_set_distance, segmenter_features


def find_ddpm(run: Path, explicit: Path | None) -> Path | None:
    if explicit is not None:
        if not explicit.is_file():
            raise SystemExit(f"{explicit}: DDPM checkpoint not found")
        return explicit
    ckpts = run / "ddpm" / "checkpoints"
    if (ckpts / "final.safetensors").is_file():
        return ckpts / "final.safetensors"
    found = sorted(ckpts.glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


@torch.no_grad()
def ddpm_samples(unet, schedule, n, size, steps, opts, batch_size, seed, device) -> torch.Tensor:
    """``n`` unconditional samples with ``steps`` respaced reverse steps, in [-1, 1]."""
    from diffdass.diffusion.sampler import as_eps_fn, reverse

    sched = schedule.respace(min(steps, schedule.num_timesteps))
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, n, batch_size):
        b = min(batch_size, n - i)
        x = torch.randn((b, 3, *size), generator=g).to(device)
        x = reverse(x, sched.num_timesteps, as_eps_fn(unet), sched, generator=g, options=opts)
        out.append(x.float().clamp(-1, 1).cpu())
        print(f"  ddpm samples {i + b}/{n}", file=sys.stderr)
    return torch.cat(out)


@torch.no_grad()
def translated(unet, schedule, x0, n, respace_steps, opts, batch_size, seed, device):
    """Unguided phi^n of ``x0`` (``respace_steps`` reverse model calls if given), in [-1, 1]."""
    from diffdass.diffusion.sampler import as_eps_fn, translate

    g = torch.Generator().manual_seed(seed)
    out = []
    for xb in x0.split(batch_size):
        y = translate(
            xb.to(device),
            n,
            as_eps_fn(unet),
            schedule,
            generator=g,
            respace_steps=respace_steps,
            options=opts,
        )
        out.append(y.float().clamp(-1, 1).cpu())
    print(f"  phi^{n}: {len(x0)} images", file=sys.stderr)
    return torch.cat(out)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--run", type=Path, default=Path("runs/benchmark"), help="`diffdass run` dir")
    p.add_argument("--ddpm", type=Path, default=None, help="checkpoint (default: from --run)")
    p.add_argument("--images", type=int, default=64, help="images per compared set")
    p.add_argument("--val-images", type=int, default=None, help="reference images (all)")
    p.add_argument("--samples", type=int, default=None, help="DDPM samples (default --images)")
    p.add_argument("--sample-steps", type=int, default=50, help="respaced steps for samples")
    p.add_argument("--n", type=int, nargs="*", default=[150, 300, 600], help="phi^n depths")
    p.add_argument(
        "--respace-steps", type=int, default=None, help="reverse model calls per phi^n (None: n)"
    )
    p.add_argument("--solver", default="ancestral", help="ancestral | ddim")
    p.add_argument(
        "--variance",
        default="analytic",
        help="analytic (toolkit default) | fixed_large | fixed_small",
    )
    p.add_argument("--no-clip-x0", action="store_true", help="do not clip the predicted x_0")
    p.add_argument("--skip-ddpm", action="store_true", help="only the floor and ceiling rows")
    p.add_argument("--kid", action="store_true", help="add KID on oracle segmenter features")
    p.add_argument("--feature-net", type=Path, default=None, help="segmenter ckpt for --kid")
    p.add_argument("--patch-size", type=int, default=7)
    p.add_argument("--levels", type=int, default=2, help="Laplacian levels (full, 1/2, ...)")
    p.add_argument("--patches-per-image", type=int, default=64)
    p.add_argument("--directions", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args()

    from diffdass.utils.device import resolve_device

    device = resolve_device(args.device)
    data = args.run / "data"
    dirs = {
        "source": data / "source" / "train" / "images",
        "target_train": data / "target" / "train" / "images",
        "target_val": data / "target" / "val" / "images",
    }
    for d in dirs.values():
        if not d.is_dir():
            raise SystemExit(f"{d}: missing; run `diffdass run` (or make-benchmark) first")

    ddpm_path = None if args.skip_ddpm else find_ddpm(args.run, args.ddpm)
    unet = schedule = size = opts = None
    if ddpm_path is not None:
        from diffdass.adaptation.ddpm_training import ddpm_moments, load_ddpm
        from diffdass.adaptation.translation import SamplerConfig
        from diffdass.diffusion.schedule import DDPMSchedule
        from diffdass.utils.config import ConfigError

        unet, meta = load_ddpm(ddpm_path, device)
        schedule = DDPMSchedule(num_timesteps=int(meta.get("num_timesteps", 1000)))
        size = tuple(meta["sample_size"])
        sampler = SamplerConfig(
            solver=args.solver, variance=args.variance, clip_x0=not args.no_clip_x0
        )
        try:
            sampler.validate()
            opts = sampler.options(ddpm_moments(meta))
        except ConfigError as exc:
            raise SystemExit(f"{ddpm_path}: {exc}") from exc
    elif not args.skip_ddpm:
        print(f"no DDPM checkpoint under {args.run / 'ddpm'}: DDPM rows skipped", file=sys.stderr)

    features = None
    if args.kid:
        net = args.feature_net or args.run / "oracle" / "checkpoints" / "final.safetensors"
        if not net.is_file():
            raise SystemExit(f"{net}: feature network for --kid not found (see --feature-net)")
        from diffdass.models.checkpoint import load_segmenter

        seg, _ = load_segmenter(net, device)

        def features(x: torch.Tensor) -> torch.Tensor:
            return segmenter_features(seg, x, batch_size=args.batch_size)

    ref = load_images(dirs["target_val"], limit=args.val_images)
    distance_opts = dict(
        seed=args.seed,
        patch_size=args.patch_size,
        levels=args.levels,
        patches_per_image=args.patches_per_image,
        n_directions=args.directions,
        features=features,
    )
    rows = []

    def add(stage: str, what: str, images: torch.Tensor, seconds: float = 0.0) -> None:
        t0 = time.perf_counter()
        r = image_set_distance(images, ref, **distance_opts)
        row = {
            "stage": stage,
            "set": what,
            "images": len(images),
            "swd": r["swd"],
            "swd_per_level": r["swd_per_level"],
            "kid_mean": r.get("kid_mean"),
            "kid_std": r.get("kid_std"),
            "generate_s": round(seconds, 1),
            "distance_s": round(time.perf_counter() - t0, 2),
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)

    add("floor", "target train", load_images(dirs["target_train"], limit=args.images))
    add("ceiling", "source train", load_images(dirs["source"], limit=args.images))
    if unet is not None:
        source = load_images(dirs["source"], size=size, limit=args.images)  # DDPM resolution
        t0 = time.perf_counter()
        n_samples = args.samples or args.images
        x = ddpm_samples(
            unet,
            schedule,
            n_samples,
            size,
            args.sample_steps,
            opts,
            args.batch_size,
            args.seed,
            device,
        )
        add("ddpm", f"DDPM samples ({args.sample_steps} steps)", x, time.perf_counter() - t0)
        for n in args.n:
            t0 = time.perf_counter()
            x = translated(
                unet,
                schedule,
                source,
                n,
                args.respace_steps,
                opts,
                args.batch_size,
                args.seed,
                device,
            )
            steps = f", {args.respace_steps} calls" if args.respace_steps else ""
            add(f"phi^{n}", f"source translated (n={n}{steps})", x, time.perf_counter() - t0)

    levels = " / ".join(f"L{i}" for i in range(args.levels))
    kid_head = " KID (oracle feats) |" if args.kid else ""
    print(f"\nreference: {dirs['target_val']} ({len(ref)} images); SWD x1e3, seed {args.seed}")
    print(f"\n| stage | set a | images | SWD | {levels} |{kid_head} gen. s |")
    print(f"|---|---|---:|---:|---:|{'---:|' if args.kid else ''}---:|")
    for r in rows:
        per = " / ".join(f"{v:.1f}" for v in r["swd_per_level"])
        kid_cell = f" {r['kid_mean']:.3g} ± {r['kid_std']:.2g} |" if args.kid else ""
        print(
            f"| {r['stage']} | {r['set']} | {r['images']} | {r['swd']:.1f} | {per} |"
            f"{kid_cell} {r['generate_s']} |"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
