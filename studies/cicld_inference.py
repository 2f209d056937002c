"""CICLD's inference choices, measured on a trained checkpoint (no training).

Where the paper is vague, CICLD's inference makes choices (docs/cicld.md): the condition of
an unlabeled image (``self``: the arg-max of an unconditioned pass conditions a second pass;
``none``: one unconditioned pass), the noise level t the latent is diffused to and the number
of DDIM steps back. This script scores one or more ``final.safetensors`` on a labeled split
under each variant, plus ``label``: the split's ground truth as the condition, which no
deployed model has. It bounds how much the condition can carry and shows whether the
network copies it (label leakage)::

    python studies/cicld_inference.py runs/cicld_ablation/seed*/base/cicld/checkpoints/final.safetensors \\
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

from diffdass.adaptation.cicld import load_cicld
from diffdass.data.scan import scan_split
from diffdass.evaluation.cicld_probe import probe_condition, score


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
