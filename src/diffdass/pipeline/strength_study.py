"""Tables of the guidance-strength study from a ``diffdass ablate`` folder: the calibration per
seed (the share of the label consistency unguided translation loses that guidance wins back,
under the judge and the oracle, and the SWD change), the strength sweep (g_N mIoU,
consistency and SWD per strength, mean over seeds; strength 0 is row (b)), the rows with
paired differences, and every trained row with target BatchNorm statistics (AdaBN on top,
cached in ``adabn_on_top.json`` of the folder). ``studies/strength_study.py`` prints them."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

FULL = "table2: (f) full"
ROW_A = "table2: (a) baseline phi^N, then training"
ROW_B = "table2: (b) w/o SGG"
ADABN = "AdaBN (g_0 with target BN statistics)"


def _ms(vals: list[float]) -> str:
    if not vals:
        return ""
    if len(vals) == 1:
        return f"{vals[0]:.1f}"
    return f"{statistics.fmean(vals):.1f} +- {statistics.stdev(vals):.1f}"


def _won_back(cal: dict, strength: float, key: str) -> float | None:
    pts = {p["strength"]: p for p in cal["points"]}
    src = cal["source_consistency"].get(key)
    base = pts[0.0].get(key)
    at = pts.get(strength, {}).get(key)
    if None in (src, base, at) or src <= base:
        return None
    return 100 * (at - base) / (src - base)


def load(root: Path) -> tuple[dict, dict]:
    results = json.loads((root / "ablation.json").read_text())
    cals = {}
    for seed in sorted(results, key=int):
        f = root / f"seed{seed}" / "base" / "calibration" / "calibration.json"
        if f.is_file():
            cals[seed] = json.loads(f.read_text())
    return results, cals


def calibration_table(cals: dict) -> str:
    lines = [
        "| seed | chosen strength | judge consistency: source / unguided / chosen | won back "
        "(judge) | oracle consistency: source / unguided / chosen | won back (oracle) | SWD "
        "unguided -> chosen | rms change vs unguided |",
        "|---|---:|---|---:|---|---:|---|---:|",
    ]
    for seed, cal in cals.items():
        s = cal["chosen_strength"]
        pts = {p["strength"]: p for p in cal["points"]}
        src = cal["source_consistency"]

        def trio(key, src=src, pts=pts, s=s):
            vals = (src.get(key), pts[0.0].get(key), pts[s].get(key))
            return " / ".join("-" if v is None else f"{v:.1f}" for v in vals)

        wj, wo = _won_back(cal, s, "judge_consistency"), _won_back(cal, s, "oracle_consistency")
        rms = pts[s].get("rms_change_vs_unguided")
        lines.append(
            f"| {seed} | {s:g} | {trio('judge_consistency')} | "
            f"{'-' if wj is None else f'{wj:.0f}%'} | {trio('oracle_consistency')} | "
            f"{'-' if wo is None else f'{wo:.0f}%'} | {pts[0.0]['distance']:.0f} -> "
            f"{pts[s]['distance']:.0f} ({100 * (pts[s]['distance'] / pts[0.0]['distance'] - 1):+.0f}%)"
            f" | {'-' if rms is None else f'{rms:.3f}'} |"
        )
    return "\n".join(lines) + "\n"


def sweep_table(results: dict, cals: dict) -> str:
    """Rows per strength: the calibration's points (all seeds) with g_N where trained."""
    strengths = sorted({p["strength"] for c in cals.values() for p in c["points"]})
    lines = [
        "| strength | g_N mIoU (seeds) | judge consistency | oracle consistency | SWD to target |",
        "|---:|---|---|---|---|",
    ]
    for s in strengths:
        miou = []
        for seed, res in results.items():
            cal = cals.get(seed)
            if s == 0.0 and ROW_B in res:
                miou.append(res[ROW_B])
            elif cal and s == cal["chosen_strength"] and FULL in res:
                miou.append(res[FULL])
            elif f"sweep_lambda: lambda = {s:g}" in res:
                miou.append(res[f"sweep_lambda: lambda = {s:g}"])
        pts = [p for c in cals.values() for p in c["points"] if p["strength"] == s]
        col = {k: [p[k] for p in pts if p.get(k) is not None] for k in pts[0]} if pts else {}
        per = ", ".join(f"{v:.1f}" for v in miou)
        lines.append(
            f"| {s:g} | {_ms(miou)}{f' ({per})' if len(miou) > 1 else ''} | "
            f"{_ms(col.get('judge_consistency', []))} | {_ms(col.get('oracle_consistency', []))} | "
            f"{_ms(col.get('distance', []))} |"
        )
    return "\n".join(lines) + "\n"


def rows_table(results: dict) -> str:
    seeds = sorted(results, key=int)
    labels = ["source-only g_0", ADABN, ROW_A, ROW_B, FULL, "target oracle"]
    lines = [
        "| row | mean +- std | per seed | full minus row (paired) |",
        "|---|---|---|---|",
    ]
    for lab in labels:
        vals = [results[s][lab] for s in seeds if lab in results[s]]
        diffs = [
            results[s][FULL] - results[s][lab] for s in seeds if {lab, FULL} <= results[s].keys()
        ]
        d = (
            ""
            if lab == FULL or not diffs
            else f"{_ms(diffs)} ({', '.join(f'{x:+.1f}' for x in diffs)})"
        )
        lines.append(f"| {lab} | {_ms(vals)} | {', '.join(f'{v:.1f}' for v in vals)} | {d} |")
    return "\n".join(lines) + "\n"


#: row label -> its g_N checkpoint, relative to the seed's folder
def _checkpoints(seed_dir: Path, labels: list[str]) -> dict[str, Path]:
    import re

    out = {"source-only g_0": seed_dir / "base" / "source_only" / "checkpoints" / "final.safetensors",
           FULL: seed_dir / "base" / "ptl" / "checkpoints" / "final.safetensors"}  # fmt: skip
    for lab in labels:
        slug = "_".join(p for p in re.sub(r"[^0-9a-z]", "_", lab.lower()).split("_") if p)[:60]
        f = seed_dir / slug / "ptl" / "checkpoints" / "final.safetensors"
        if f.is_file():
            out[lab] = f
    return out


def adabn_on_top(root: Path, results: dict) -> dict:
    """seed -> label -> mIoU19 with target BatchNorm statistics (cached)."""
    from diffdass.data.folder import FolderDataset
    from diffdass.evaluation.evaluate import evaluate
    from diffdass.models.factory import load_segmenter
    from diffdass.pipeline.scoring import adapt_batchnorm
    from diffdass.utils.io import write_json

    cache = root / "adabn_on_top.json"
    done = json.loads(cache.read_text()) if cache.is_file() else {}
    tgt = FolderDataset(root / "data" / "target", "train", "none")
    val = FolderDataset(root / "data" / "target", "val", "required")
    for seed, res in results.items():
        for lab, ckpt in _checkpoints(root / f"seed{seed}", list(res)).items():
            if lab in done.get(seed, {}):
                continue
            model, _ = load_segmenter(ckpt, "cpu")
            adapt_batchnorm(model, tgt, "cpu")
            miou = evaluate(model, val, ["19"], "cpu", progress=False)["miou"]["19"]
            done.setdefault(seed, {})[lab] = miou
            write_json(cache, done)
    return done


def on_top_table(results: dict, bn: dict) -> str:
    seeds = sorted(bn, key=int)
    labels = ["source-only g_0", ROW_A, ROW_B, FULL] + sorted(
        {lab for s in seeds for lab in bn[s]} - {"source-only g_0", ROW_A, ROW_B, FULL}
    )
    lines = [
        "| row | without | with target BN statistics (AdaBN on top) | full minus row, both with (paired) |",
        "|---|---|---|---|",
    ]
    for lab in labels:
        vals = [bn[s][lab] for s in seeds if lab in bn[s]]
        plain = [results[s][lab] for s in seeds if lab in results[s] and lab in bn[s]]
        diffs = [bn[s][FULL] - bn[s][lab] for s in seeds if {lab, FULL} <= bn[s].keys()]
        d = "" if lab == FULL else f"{_ms(diffs)} ({', '.join(f'{x:+.1f}' for x in diffs)})"
        name = "AdaBN (g_0 with target BN statistics)" if lab == "source-only g_0" else lab
        lines.append(
            f"| {name} | {_ms(plain)} | {_ms(vals)} ({', '.join(f'{v:.1f}' for v in vals)}) | {d} |"
        )
    return "\n".join(lines) + "\n"
