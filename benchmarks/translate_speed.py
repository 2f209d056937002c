#!/usr/bin/env python
"""Speed of the translation reverse step with and without semantic gradient guidance.

Measures image-steps per second (batch size x reverse steps / wall time of the fastest of
``--repeats`` timed blocks, after ``--warmup`` untimed steps; CUDA is synchronised) of

- ``baseline``            unguided DDPM reverse step (UNet eps + Eq. 4 + noise)
- ``gsg``                 + GSG (one segmenter forward/backward on the image)
- ``lcg_batched``         + LCG, all (image, class) masked images stacked, ``--chunk-size`` per pass
- ``lcg_loop``            + LCG, naive reference: one fp32 forward/backward per (image, class)
- ``lcg_single_pass``     + LCG approximation: one forward/backward, per-region normalised CE
- ``sgg_alt_batched``     SGG alternate (LCG batched / GSG)
- ``sgg_alt_single_pass`` SGG alternate (LCG single-pass / GSG)

and DDPM training throughput (images/s: forward + backward + Adam step, Eq. 5).

``--size small``: a tiny UNet and a tiny segmenter at 32x64 (CPU friendly); ``--size full``:
256x512, the ``ddpm256`` UNet preset and DeepLab-V2 ResNet-101, with 12 classes in the label.
Both use ``diffdass.models`` builders. Weights are random: speed does not depend on them.

    python benchmarks/translate_speed.py --device cpu --size small
    python benchmarks/translate_speed.py --device cuda --size full --amp --json speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from diffdass.diffusion import (
    GSG,
    LCG,
    SGG,
    DDPMSchedule,
    as_eps_fn,
    reverse,
)

SIZES = {"small": (32, 64), "full": (256, 512)}
NUM_CLASSES = 19


def build_models(size: str) -> tuple[nn.Module, nn.Module, str]:
    from diffdass.models.factory import build_segmenter
    from diffdass.models.unet import build_unet

    hw = SIZES[size]
    if size == "full":
        unet = build_unet("ddpm256", sample_size=hw)
        seg = build_segmenter("deeplabv2_r101", NUM_CLASSES, pretrained=False)
        return unet, seg, "UNet 'ddpm256' + 'deeplabv2_r101'"
    unet = build_unet("tiny", sample_size=hw)
    seg = build_segmenter("deeplabv2_tiny", NUM_CLASSES, pretrained=False)
    return unet, seg, "UNet 'tiny' + 'deeplabv2_tiny'"


def make_labels(batch: int, hw: tuple[int, int], n_classes: int = 12) -> torch.Tensor:
    """A 3x4 grid of ``n_classes`` class blocks (shifted per image) with an ignore border."""
    H, W = hw
    y = torch.full((batch, H, W), 255, dtype=torch.long)
    rows, cols = 3, (n_classes + 2) // 3
    bh, bw = H // rows, W // cols
    for b in range(batch):
        for k in range(n_classes):
            r, c = divmod(k, cols)
            y[b, r * bh : (r + 1) * bh, c * bw : (c + 1) * bw] = (k + b) % NUM_CLASSES
    border = max(1, H // 32)
    y[:, :border] = 255
    y[:, -border:] = 255
    return y


# ----------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], None], device: torch.device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return time.perf_counter() - t0


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return None


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--size", default="small", choices=list(SIZES))
    p.add_argument("--batch", type=int, default=1, help="images per reverse step")
    p.add_argument("--steps", type=int, default=None, help="timed reverse steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed reverse steps per variant")
    p.add_argument("--classes", type=int, default=12, help="classes present in each label")
    p.add_argument("--chunk-size", type=int, default=12, help="LCG batched: masked images/pass")
    p.add_argument("--train-batch", type=int, default=None, help="DDPM training batch size")
    p.add_argument("--train-iters", type=int, default=None)
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    p.add_argument("--only", nargs="*", default=None, help="subset of variants to run")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--repeats", type=int, default=3, help="timed blocks; the fastest is kept")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    small = args.size == "small"
    steps = args.steps or (6 if small else 4)
    train_batch = args.train_batch or (4 if small else 2)
    train_iters = args.train_iters or 5
    amp_dtype = torch.bfloat16 if (args.amp and device.type == "cuda") else None
    hw = SIZES[args.size]
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    unet, seg, models_desc = build_models(args.size)
    unet.to(device).eval()
    seg.to(device).eval()
    sched = DDPMSchedule()
    base_eps = as_eps_fn(unet)

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ctx = torch.autocast("cuda", dtype=amp_dtype) if amp_dtype else nullcontext()
        with ctx:
            return base_eps(x, t).float()

    y = make_labels(args.batch, hw, args.classes).to(device)
    x0 = (torch.rand(args.batch, 3, *hw, device=device) * 2 - 1).float()
    scale = 80.0

    def lcg(mode: str) -> LCG:
        return LCG(seg, y, scale, chunk_size=args.chunk_size, mode=mode, amp_dtype=amp_dtype)

    gsg = GSG(seg, y, scale, amp_dtype=amp_dtype)
    variants: dict[str, Callable[[], object] | None] = {
        "baseline": lambda: None,
        "gsg": lambda: gsg,
        "lcg_batched": lambda: lcg("batched"),
        "lcg_loop": lambda: lcg("loop"),
        "lcg_single_pass": lambda: lcg("single_pass"),
        "sgg_alt_batched": lambda: SGG(lcg("batched"), gsg, "alternate"),
        "sgg_alt_single_pass": lambda: SGG(lcg("single_pass"), gsg, "alternate"),
    }
    if args.only:
        unknown = set(args.only) - set(variants) - {"train"}
        if unknown:
            raise SystemExit(f"unknown variants {sorted(unknown)}; have {sorted(variants)} + train")
        variants = {k: v for k, v in variants.items() if k in args.only}

    x_start = x0.clone()
    results: list[dict] = []
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    for name, make in variants.items():
        guidance = make()

        def run(k: int, guidance=guidance) -> None:
            # k reverse steps from index k-1 (SGG's sequence restarts with each call)
            reverse(x_start, k, eps_fn, sched, guidance=guidance, generator=gen)

        _peak_reset(device)
        if args.warmup > 0:
            run(args.warmup)
        dt = min(_timed(lambda run=run: run(steps), device, 0, 1) for _ in range(args.repeats))
        results.append(
            {
                "variant": name,
                "image_steps_per_s": args.batch * steps / dt,
                "ms_per_step": 1000.0 * dt / steps,
                "peak_mem_gib": _peak(device),
            }
        )
        print(f"  {name:22s} {args.batch * steps / dt:9.3f} image-steps/s", file=sys.stderr)

    if args.only is None or "train" in args.only:
        unet.train()
        opt = torch.optim.Adam(unet.parameters(), lr=2e-5, betas=(0.9, 0.99))
        xt = (torch.rand(train_batch, 3, *hw, device=device) * 2 - 1).float()
        tgen = torch.Generator(device="cpu").manual_seed(args.seed)

        def train_step() -> None:
            opt.zero_grad(set_to_none=True)
            ctx = torch.autocast("cuda", dtype=amp_dtype) if amp_dtype else nullcontext()
            with ctx:
                loss = sched.training_loss(base_eps, xt, tgen)
            loss.backward()
            opt.step()

        _peak_reset(device)
        dt = min(
            _timed(train_step, device, warmup=1 if r == 0 else 0, iters=train_iters)
            for r in range(args.repeats)
        )
        results.append(
            {
                "variant": f"ddpm_train (batch {train_batch}, Adam)",
                "images_per_s": train_batch * train_iters / dt,
                "ms_per_iter": 1000.0 * dt / train_iters,
                "peak_mem_gib": _peak(device),
            }
        )

    meta = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "size": args.size,
        "resolution": list(hw),
        "batch": args.batch,
        "steps": steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "train_iters": train_iters,
        "classes_in_label": args.classes,
        "lcg_items_per_step": int(lcg("loop").num_items),
        "chunk_size": args.chunk_size,
        "amp": str(amp_dtype) if amp_dtype else None,
        "models": models_desc,
        "torch": torch.__version__,
        "loadavg_1min_at_end": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    print_table(results, meta)
    out = {"meta": meta, "results": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    return out


def print_table(results: list[dict], meta: dict) -> None:
    print(
        f"\n{meta['size']} {tuple(meta['resolution'])} on {meta['device']} ({meta['device_name']}, "
        f"{meta['threads']} threads), batch {meta['batch']}, {meta['lcg_items_per_step']} LCG items/"
        f"step, chunk {meta['chunk_size']}, amp {meta['amp']}, torch {meta['torch']}, "
        f"load {meta['loadavg_1min_at_end']}\n"
        f"models: {meta['models']}\n"
    )
    base = next((r for r in results if r["variant"] == "baseline"), None)
    print("| variant | image-steps/s | ms/step | x baseline time | peak GiB |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        mem = f"{r['peak_mem_gib']:.2f}" if r.get("peak_mem_gib") is not None else "-"
        if "image_steps_per_s" in r:
            rel = f"{r['ms_per_step'] / base['ms_per_step']:.1f}" if base else "-"
            print(
                f"| {r['variant']} | {r['image_steps_per_s']:.3f} | {r['ms_per_step']:.1f} | "
                f"{rel} | {mem} |"
            )
        else:
            print(
                f"| {r['variant']} | {r['images_per_s']:.3f} images/s | "
                f"{r['ms_per_iter']:.1f} ms/iter | - | {mem} |"
            )


if __name__ == "__main__":
    main()
