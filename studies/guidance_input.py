"""Where the guiding segmenter reads the image, and smoothing: the calibration curve of each
variant on a finished run (docs/translation.md, "Where the segmenter reads the image").

    python studies/guidance_input.py --run runs/benchmark -o runs/guidance_input \\
        --variants x_t,x0,x0:0.0234,x0_unet --strengths 0.01,0.014,0.02,0.028,0.04,0.057,0.08

For every variant ``INPUT[:SMOOTH]`` (``guidance.input`` and ``guidance.smooth``; no
``:SMOOTH`` means 0) the script runs the calibration sweep of ``diffdass calibrate-guidance``
with the run's g_0 as the guide and its judge (``RUN/judge``), on the same source images and
noise for every variant, without refinement and with ``stop_after`` 2. It prints, per
strength: the judge's label consistency and the share of what unguided translation loses
that guidance wins back, the guide's own consistency, and the patch SWD to the target with
its change against unguided; and per variant the strength the calibration rule chooses.
Each variant's ``calibration.json`` and translation sheet are kept in ``OUT/<variant>``.
No target label is read (the run's oracle is not used).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from _run_args import add_run_args, data_root
from diffdass.adaptation.calibration import calibrate_guidance
from diffdass.pipeline.config import fill_config, load_pipeline_config


def variant(text: str) -> tuple[str, float]:
    inp, _, smooth = text.partition(":")
    return inp, float(smooth or 0.0)


def table(name: str, res: dict) -> str:
    src = res["source_consistency"]["judge_consistency"]
    base = res["points"][0]
    lines = [
        f"{name}: chosen strength {res['chosen_strength']:g} (judge consistency of the "
        f"untranslated source images: {src:.1f})",
        "",
        "| strength | judge consistency | won back | guide consistency | SWD | SWD vs unguided |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for p in res["points"]:
        lost = src - base["judge_consistency"]
        won = (p["judge_consistency"] - base["judge_consistency"]) / lost if lost > 0 else 0.0
        lines.append(
            f"| {p['strength']:g} | {p['judge_consistency']:.1f} | {100 * won:.0f}% | "
            f"{p['guide_consistency']:.1f} | {p['distance']:.0f} | "
            f"{100 * (p['distance'] / base['distance'] - 1):+.0f}% |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_run_args(ap)
    ap.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    ap.add_argument("--variants", default="x_t,x0,x0:0.025,x0_unet", help="INPUT[:SMOOTH],...")
    ap.add_argument(
        "--strengths", default="0.01,0.014,0.02,0.028,0.04,0.057,0.08", help="the sweep"
    )
    args = ap.parse_args()
    cfg = load_pipeline_config(args.run / "config.yaml")
    if args.data is not None:  # the run's config names its data; --data only if it moved
        cfg.benchmark.root = str(data_root(args))
    cfg = fill_config(cfg)
    strengths = [float(s) for s in args.strengths.split(",")]
    spec = dataclasses.replace(cfg.calibration, strengths=strengths, stop_after=2, refine=False)
    report = []
    for text in args.variants.split(","):
        inp, smooth = variant(text)
        guidance = dataclasses.replace(cfg.ptl.guidance, input=inp, smooth=smooth, scale=0.0)
        res = calibrate_guidance(
            source=(cfg.source.root, cfg.source.split),
            target=(cfg.target.root, cfg.target.split),
            ddpm=cfg.ptl.ddpm,
            guide=args.run / "source_only" / "checkpoints" / "final.safetensors",
            judge=args.run / "judge" / "checkpoints" / "final.safetensors",
            guidance=guidance,
            sampler=cfg.ptl.sampler,
            n=cfg.calibration.n or cfg.ptl.levels()[-1],
            respace_steps=cfg.ptl.reverse_steps if cfg.ptl.domains == "spread" else None,
            spec=spec,
            out=args.out / text.replace(":", "_"),
            seed=cfg.seed,
        )
        report.append(table(text, res))
        print(report[-1], flush=True)
    (args.out / "guidance_input.md").write_text("\n".join(report), encoding="utf-8")
    (args.out / "command.json").write_text(json.dumps(vars(args), default=str, indent=1))


if __name__ == "__main__":
    main()
