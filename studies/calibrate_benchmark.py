"""Calibrate the built-in benchmark's domain gap: source-only vs. target oracle vs. AdaBN.

The built-in benchmark should sit in the regime of the real task (GTA5 -> Cityscapes with
DeepLab-V2: source-only about 36.6 mIoU against a target oracle of about 65, i.e. 45-60%
of the oracle; re-aligning feature statistics alone recovers only a few points). This
script measures that on a generated benchmark, with the library's own training and
evaluation code:

1. generate the benchmark (the sizes of the ``benchmark`` block of
   ``configs/benchmark_study.yaml``: 64x128, 400 source / 400 target train / 100
   target val) into ``OUT/data``;
2. train a segmenter on ``source/train`` (source-only) and one on ``target/train_oracle``
   (oracle) with :func:`~diffdass.adaptation.seg_training.train_segmenter`, the same recipe
   for both: the ``source_only`` block of the study configuration, whose g_0 and oracle
   are trained with it (``--arch``, ``--optim``, ``--lr``, ``--weight-decay``,
   ``--batch-size`` and ``--iterations`` override it; ``--config`` picks another file,
   e.g. ``src/diffdass/configs/benchmark.yaml`` for the 15-minute demo's shorter recipe);
3. AdaBN: re-estimate the BatchNorm statistics of a copy of the source-only model on the
   ``target/train`` images (no labels, no training);
4. score all three on ``target/val`` (mIoU over the 19 classes, last checkpoint) with
   :func:`~diffdass.evaluation.evaluate`, and write ``OUT/calibration.json`` and
   ``OUT/calibration.md`` with the ratios ``source / oracle`` and
   ``(adabn - source) / (oracle - source)`` (the share of the gap AdaBN closes).

The criteria (fixed before any adaptation method was run on generator version 3):
source-only between 45% and 60% of the oracle, and AdaBN closing at most a third of the
gap. Runs are cached by the content hash of the data they read (``OUT/runs``), so
re-running after a change of the source renderer only retrains the source-only model.

    python studies/calibrate_benchmark.py --out runs/calibrate --seed 0
    python studies/calibrate_benchmark.py --out runs/calibrate1 --seed 1

Cost on the 2-core CPU machine (pipeline recipe: unet_small, AdamW, 1500 iterations of
batch 16, one torch thread): about 11 minutes per training run while another job shares
the cores, 15 s to generate the data, seconds for AdaBN and the three evaluations. After a
change of the source renderer only the source-only model is retrained.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import time
from pathlib import Path

import torch
import yaml

from diffdass.adaptation.adabn import adabn
from diffdass.adaptation.config import (
    AugConfig,
    NoisyMaskedConfig,
    OptimConfig,
    SegModelConfig,
)
from diffdass.adaptation.seg_training import TrainSegConfig, train_segmenter
from diffdass.data.benchmark import GENERATOR_VERSION, content_hash, generate_benchmark
from diffdass.data.folder import DomainSpec, FolderDataset
from diffdass.evaluation.evaluate import evaluate
from diffdass.models.factory import load_segmenter

CONFIG = Path(__file__).resolve().parents[1] / "configs/benchmark_study.yaml"
BENCH_KEYS = ("height", "width", "n_source", "n_target_train", "n_target_val")
CRITERIA = {"source_over_oracle": (0.45, 0.60), "adabn_gap_share_max": 1 / 3}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/calibrate"), help="output folder")
    ap.add_argument("--seed", type=int, default=0, help="benchmark and training seed")
    ap.add_argument(
        "--config", type=Path, default=CONFIG, help="pipeline YAML whose source_only block is used"
    )
    # the recipe: default None = the value of the config's source_only block
    ap.add_argument("--arch", default=None, help="segmenter (diffdass models)")
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--optim", default=None, choices=("adamw", "sgd"))
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--weight-decay", type=float, default=None)
    ap.add_argument(
        "--regenerate",
        action="store_true",
        help="delete OUT/data first (after a generator change without a version bump)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 is faster than 2 on a 2-core machine shared with other jobs)",
    )
    ap.add_argument("--note", default="", help="free text stored with the result")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap.parse_args(argv)


def recipe(args) -> dict:
    """The segmenter recipe: the config's ``source_only`` block with this script's overrides.

    ``diffdass run`` with that config trains g_0 and the oracle with exactly that block, so
    the calibration measures the benchmark with the study's own recipe.
    """
    cfg = yaml.safe_load(Path(args.config).read_text())
    so = cfg["source_only"]
    optim = dict(so.get("optim", {}))
    for key, val in (("name", args.optim), ("lr", args.lr), ("weight_decay", args.weight_decay)):
        if val is not None:
            optim[key] = val
    if optim.get("name", "sgd") != "sgd":
        optim.pop("momentum", None)
    model = {"arch": args.arch or so["model"]["arch"], "pretrained": "none"}
    return {
        "benchmark": {k: cfg["benchmark"][k] for k in BENCH_KEYS if k in cfg["benchmark"]},
        "model": model,
        "optim": optim,
        "aug": so["aug"],
        "noisy_masked": so.get("noisy_masked", {"prob": 0.0}),
        "iterations": args.iterations or so["iterations"],
        "batch_size": args.batch_size or so["batch_size"],
        "seed": args.seed,
    }


def train(rec: dict, root: Path, split: str, out: Path, progress: bool) -> Path:
    """Train (or reuse: ``out`` is named by the recipe and the data's content hash)."""
    final = out / "checkpoints" / "final.safetensors"
    if final.is_file() and (out / "metrics.json").is_file():
        return final
    cfg = TrainSegConfig(
        source=DomainSpec(str(root), split),
        model=SegModelConfig(**rec["model"]),
        aug=AugConfig(**rec["aug"]),
        optim=OptimConfig(**rec["optim"]),
        noisy_masked=NoisyMaskedConfig(**rec["noisy_masked"]),
        iterations=rec["iterations"],
        batch_size=rec["batch_size"],
        seed=rec["seed"],
        device="cpu",
        num_workers=0,
        checkpoint_every=max(rec["iterations"] // 4, 1),
    )
    train_segmenter(cfg, out, progress=progress)
    return final


def score(model: torch.nn.Module, val: FolderDataset) -> dict:
    res = evaluate(model, val, ("19",), "cpu", progress=False)
    return {"miou19": res["miou"]["19"], "per_class_iou": res["per_class_iou"]}


def run_key(rec: dict, data_hash: str) -> str:
    """Identifies a training run: the recipe and the data it reads."""
    import hashlib

    blob = json.dumps({k: rec[k] for k in rec if k != "benchmark"}, sort_keys=True) + data_hash
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def markdown(res: dict) -> str:
    r = res["results"]
    lines = [
        f"Benchmark v{res['generator_version']} seed {res['seed']}, {res['recipe']['model']['arch']}"
        f" {res['recipe']['optim']['name']} lr {res['recipe']['optim']['lr']:g}, batch "
        f"{res['recipe']['batch_size']}, {res['recipe']['iterations']} iterations; mIoU19 on "
        "target/val.",
        "",
        "| source-only | AdaBN | oracle | source / oracle | AdaBN share of gap |",
        "|---:|---:|---:|---:|---:|",
        f"| {r['source_only']:.1f} | {r['adabn']:.1f} | {r['oracle']:.1f} | "
        f"{res['source_over_oracle']:.2f} | {res['adabn_gap_share']:.2f} |",
        "",
        "| class | source-only | AdaBN | oracle |",
        "|---|---:|---:|---:|",
    ]
    pc = res["per_class_iou"]
    for name in pc["oracle"]:
        vals = [pc[k][name] for k in ("source_only", "adabn", "oracle")]
        cells = " | ".join("n/a" if v is None else f"{v:.1f}" for v in vals)
        lines.append(f"| {name} | {cells} |")
    lines.append("")
    lines.append(
        "criteria: source/oracle in [0.45, 0.60]: "
        f"{'PASS' if res['pass']['source_over_oracle'] else 'FAIL'}; "
        f"AdaBN share <= 1/3: {'PASS' if res['pass']['adabn_gap_share'] else 'FAIL'}"
    )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out
    rec = recipe(args)
    data = out / "data"
    if args.regenerate and data.exists():
        shutil.rmtree(data)
    t0 = time.perf_counter()
    bench = generate_benchmark(data, seed=args.seed, progress=not args.quiet, **rec["benchmark"])
    t_gen = time.perf_counter() - t0
    src_hash = content_hash(data / "source")
    tgt_hash = content_hash(data / "target")
    runs = out / "runs"
    progress = not args.quiet
    times = {"generate": round(t_gen, 1)}

    ckpts = {}
    for name, dom, split, h in (
        ("source_only", "source", "train", src_hash),
        ("oracle", "target", "train_oracle", tgt_hash),
    ):
        run = runs / f"{name}-{run_key(rec, h)}"
        cached = (run / "metrics.json").is_file()
        t = time.perf_counter()
        ckpts[name] = train(rec, data / dom, split, run, progress)
        times[name] = "cached" if cached else round(time.perf_counter() - t, 1)
    src_ckpt, ora_ckpt = ckpts["source_only"], ckpts["oracle"]

    val = FolderDataset(data / "target", "val", "required")
    src_model, _ = load_segmenter(src_ckpt, "cpu")
    ora_model, _ = load_segmenter(ora_ckpt, "cpu")
    t = time.perf_counter()
    ada_model = copy.deepcopy(src_model)
    tgt = FolderDataset(data / "target", "train", "optional")
    loader = torch.utils.data.DataLoader(tgt, batch_size=rec["batch_size"], shuffle=False)
    ada_info = adabn(ada_model, loader, device="cpu")
    times["adabn"] = round(time.perf_counter() - t, 1)
    scores = {
        "source_only": score(src_model, val),
        "adabn": score(ada_model, val),
        "oracle": score(ora_model, val),
    }
    s, a, o = (scores[k]["miou19"] for k in ("source_only", "adabn", "oracle"))
    ratio = s / o if o > 0 else float("nan")
    share = (a - s) / (o - s) if o != s else float("nan")
    lo, hi = CRITERIA["source_over_oracle"]
    res = {
        "generator_version": GENERATOR_VERSION,
        "content_hash": bench["content_hash"],
        "seed": args.seed,
        "note": args.note,
        "date": time.strftime("%Y-%m-%d"),
        "recipe": rec,
        "results": {"source_only": s, "adabn": a, "oracle": o},
        "source_over_oracle": ratio,
        "adabn_gap_share": share,
        "criteria": {"source_over_oracle": [lo, hi], "adabn_gap_share_max": 1 / 3},
        "pass": {
            "source_over_oracle": bool(lo <= ratio <= hi),
            "adabn_gap_share": bool(share <= CRITERIA["adabn_gap_share_max"]),
        },
        "per_class_iou": {k: v["per_class_iou"] for k, v in scores.items()},
        "adabn": ada_info,
        "seconds": times,
        "checkpoints": {"source_only": str(src_ckpt), "oracle": str(ora_ckpt)},
    }
    (out / "calibration.json").write_text(json.dumps(res, indent=2) + "\n")
    md = markdown(res)
    (out / "calibration.md").write_text(md)
    # one line per invocation, to keep the iteration log
    with open(out / "calibration_log.jsonl", "a") as fh:
        keep = ("date", "generator_version", "seed", "note", "results")
        fh.write(
            json.dumps(
                {k: res[k] for k in keep}
                | {
                    "source_over_oracle": round(ratio, 3),
                    "adabn_gap_share": round(share, 3),
                    "seconds": times,
                }
            )
            + "\n"
        )
    print(md)
    print(json.dumps({"results": res["results"], "pass": res["pass"], "seconds": times}))
    return res


if __name__ == "__main__":
    main()
