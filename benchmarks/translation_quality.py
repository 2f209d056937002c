#!/usr/bin/env python
"""Label consistency of translated images: baseline phi^n vs GSG vs LCG vs SGG.

Uses the artifacts of a finished pipeline run (default ``runs/benchmark``, made by
``diffdass run``): its target DDPM, its source-only model g_0 as the guiding segmenter, and
its target-trained oracle as the *judge*. For every guidance variant and depth n, it
translates the first ``--images`` source training images and scores the oracle's mIoU
against the source labels (higher = the translation kept the label's semantics). It also
writes one preview sheet (source | label | baseline | guided) per variant.

    python benchmarks/translation_quality.py --run runs/benchmark --n 150 300 --out runs/translation_quality
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffdass.adaptation.translation import GuidanceConfig, TranslateConfig, translate_dataset
from diffdass.data.folder import DomainSpec
from diffdass.evaluation.consistency import label_consistency


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--run", type=Path, default=Path("runs/benchmark"), help="finished `diffdass run` directory"
    )
    p.add_argument("--out", type=Path, default=Path("runs/translation_quality"))
    p.add_argument("--n", type=int, nargs="+", default=[150, 300], help="translation depths")
    p.add_argument("--variants", nargs="+", default=["none", "gsg", "lcg", "sgg"])
    p.add_argument("--scale", type=float, default=80.0, help="guidance scale lambda")
    p.add_argument("--respace-steps", type=int, default=12, help="reverse model calls (None: n)")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    src = DomainSpec(str(args.run / "data" / "source"), "train")
    ddpm = args.run / "ddpm" / "checkpoints" / "final.safetensors"
    g0 = args.run / "source_only" / "checkpoints" / "final.safetensors"
    oracle = args.run / "oracle" / "checkpoints" / "final.safetensors"
    for f in (ddpm, g0, oracle):
        if not f.is_file():
            raise SystemExit(f"{f}: missing; run `diffdass run` first")
    rows = []
    for n in args.n:
        for kind in args.variants:
            cfg = TranslateConfig(
                source=src,
                ddpm=str(ddpm),
                segmenter=str(g0),
                n=n,
                respace_steps=args.respace_steps,
                guidance=GuidanceConfig(kind=kind, scale=args.scale),
                limit=args.images,
                preview=6,
                device=args.device,
            )
            out = args.out / f"n{n}_{kind}"
            m = translate_dataset(cfg, out, progress=True)
            score = label_consistency(oracle, out / "dataset", "train", args.device)
            rows.append({"n": n, "guidance": kind, "miou": score["miou"], "seconds": m["seconds"]})
            print(json.dumps(rows[-1]))
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    key = next(iter(rows[0]["miou"]))
    print(f"\n| n | guidance | label consistency mIoU{key} (oracle) |\n|---:|---|---:|")
    for r in rows:
        print(f"| {r['n']} | {r['guidance']} | {r['miou'][key]:.1f} |")


if __name__ == "__main__":
    main()
