#!/usr/bin/env python
"""Does a model's gain survive target BatchNorm statistics? Each checkpoint with and without AdaBN.

AdaBN (re-estimating BatchNorm statistics on unlabeled target images, no training) is the
baseline every adaptation result is placed against. A method that only moved the BatchNorm
statistics towards the target gains nothing once AdaBN is applied on top of it; a method that
changed the features keeps its lead over g_0 + AdaBN. For every checkpoint given, this
script prints the target-val mIoU19 before and after AdaBN on ``DATA/target/train``::

    python benchmarks/adabn_on_top.py --data runs/benchmark/data \\
        runs/benchmark/source_only/checkpoints/final.safetensors \\
        runs/benchmark/ptl/checkpoints/final.safetensors

A few seconds per checkpoint on the 2-core CPU at the benchmark's size.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from diffdass.adaptation.adabn import adabn
from diffdass.data.folder import FolderDataset
from diffdass.evaluation.evaluate import evaluate
from diffdass.models.checkpoint import load_segmenter


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="benchmark root (target/)")
    ap.add_argument("--class-set", default="19")
    ap.add_argument("checkpoints", type=Path, nargs="+", help="segmenter checkpoints")
    args = ap.parse_args(argv)

    tgt = FolderDataset(args.data / "target", "train", "none")
    val = FolderDataset(args.data / "target", "val", "required")
    loader = torch.utils.data.DataLoader(tgt, batch_size=16)
    rows = []
    print(f"| checkpoint | mIoU{args.class_set} | + AdaBN | difference |")
    print("|---|---:|---:|---:|")
    for ckpt in args.checkpoints:
        model, _ = load_segmenter(ckpt, "cpu")
        before = evaluate(model, val, [args.class_set], "cpu", progress=False)["miou"]
        adabn(model, loader)
        after = evaluate(model, val, [args.class_set], "cpu", progress=False)["miou"]
        b, a = before[args.class_set], after[args.class_set]
        rows.append({"checkpoint": str(ckpt), "miou": b, "adabn": a})
        print(f"| {ckpt} | {b:.1f} | {a:.1f} | {a - b:+.1f} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
