"""Why the own-domain template's segmenter fails on classes defined by shape, factor by factor.

    python studies/shape_test/factors.py -o runs/shape_test            # every variant
    python studies/shape_test/factors.py -o runs/shape_test --only template,plain
    python studies/shape_test/factors.py -o runs/shape_test_benchmark --pair benchmark \
        --only template,recipe                                          # the built-in pair

Generates the shape domain pair (diffdass.data.shapes: 10 silhouettes + background, 64x64,
colour independent of the class) and trains a **target oracle** (target train labels, target
val scored) for each variant below: the template's recipe (configs/custom_small.yaml at a
64x64 working size) and one change at a time, all at the same number of images seen
(iterations x batch). An oracle is the right probe: if a recipe cannot learn the target from
its own labels, no adaptation result on that pair means anything. Each variant's folder is a
resumable train-seg run; results.json and results.md hold mIoU (all 11 classes), object-class
mIoU, the training loss at the end and the minutes it took.

``--pair benchmark`` trains the same variants as oracles of the built-in street-scene
benchmark instead (64x128, 400 source / 400 target train / 100 target val images, scored on
the 19-class set): a template recipe must learn both pairs.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import time
from pathlib import Path

from diffdass.adaptation.config import AugConfig, NoisyMaskedConfig, OptimConfig, SegModelConfig
from diffdass.adaptation.seg_training import TrainSegConfig, train_segmenter
from diffdass.data.folder import DomainSpec
from diffdass.data.scan import scan_split
from diffdass.data.shapes import generate_shapes
from diffdass.evaluation.evaluate import evaluate
from diffdass.models.factory import load_segmenter
from diffdass.utils.io import atomic_write_text, write_json

SIZE = 64
#: the template's recipe (configs/custom_small.yaml, working size 64x64)
TEMPLATE = TrainSegConfig(
    model=SegModelConfig(arch="unet_small"),
    optim=OptimConfig(name="adamw", lr=3e-3, warmup=50, weight_decay=1e-4, head_lr_mult=1.0),
    aug=AugConfig(resize=[SIZE, SIZE], scale=[0.75, 1.25], crop=[SIZE, SIZE], hflip=True),
    noisy_masked=NoisyMaskedConfig(prob=0.1, max_timestep=300),
    iterations=1500,
    batch_size=16,
    num_workers=0,
    checkpoint_every=250,
    device="cpu",
)


def _variant(**changes) -> TrainSegConfig:
    cfg = copy.deepcopy(TEMPLATE)
    for key, value in changes.items():
        obj = cfg
        *path, last = key.split(".")
        for p in path:
            obj = getattr(obj, p)
        setattr(obj, last, value)
    return cfg


NO_SCALE = {"aug.scale": None, "aug.crop": None}
NO_AUG = {"aug.scale": None, "aug.crop": None, "aug.hflip": False, "noisy_masked.prob": 0.0}
CONSTANT_LR = {"optim.lr": 1e-3, "optim.warmup": 0, "optim.poly_power": 0.0}
#: name -> (what changes, config)
VARIANTS = {
    "template": ("the template's recipe (unet_small, AdamW 3e-3, warm-up + poly, scale/flip, noisy-masked 10%)", _variant()),
    "no_aug": ("no augmentation (no scale, flip or noisy-masked)", _variant(**NO_AUG)),
    "constant_lr": ("AdamW 1e-3 constant, no warm-up", _variant(**CONSTANT_LR)),
    "width32": ("width 32 at full resolution (unet_w32_d3)", _variant(**{"model.arch": "unet_w32_d3"})),
    "depth2": ("two down-samplings (unet_w16_d2)", _variant(**{"model.arch": "unet_w16_d2"})),
    "nearest": ("nearest up-sampling (unet_w16_d3_nearest)", _variant(**{"model.arch": "unet_w16_d3_nearest"})),
    "no_scale": ("no scale augmentation (flip and noisy-masked kept)", _variant(**NO_SCALE)),
    "no_noisy": ("no noisy-masked batches (scale and flip kept)", _variant(**{"noisy_masked.prob": 0.0})),
    "plain": (
        "plain U-Net: unet_w32_d2_nearest, AdamW 1e-3 constant, no weight decay, flip only",
        _variant(
            **{"model.arch": "unet_w32_d2_nearest", "optim.weight_decay": 0.0, **CONSTANT_LR,
               "aug.scale": None, "aug.crop": None, "noisy_masked.prob": 0.0}
        ),
    ),
    "recipe": (
        "the plain U-Net's recipe with noisy-masked 10% (the method's g_0 augmentation)",
        _variant(
            **{"model.arch": "unet_w32_d2_nearest", "optim.weight_decay": 0.0, **CONSTANT_LR,
               "aug.scale": None, "aug.crop": None}
        ),
    ),
    "recipe_750": (
        "the recipe at 750 iterations (about the template's CPU time: width 32 costs 2x)",
        _variant(
            **{"model.arch": "unet_w32_d2_nearest", "optim.weight_decay": 0.0, **CONSTANT_LR,
               "aug.scale": None, "aug.crop": None, "iterations": 750}
        ),
    ),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Pair:
    """A domain pair the variants are trained on (as target oracles)."""

    size: tuple[int, int]  # working size (height, width)
    oracle_split: str  # the labelled target split the oracle trains on
    class_set: str  # the class set mIoU is averaged over
    background: str | None  # the class left out of the object mIoU


PAIRS = {
    "shapes": Pair((SIZE, SIZE), "train", "all", "background"),
    "benchmark": Pair((64, 128), "train_oracle", "19", None),
}


def generate(pair: str, root: Path) -> Path:
    if pair == "shapes":
        return generate_shapes(root, size=SIZE)
    from diffdass.data.benchmark import generate_benchmark

    generate_benchmark(root, seed=0, height=64, width=128, progress=False)
    return root


def for_pair(cfg: TrainSegConfig, pair: Pair) -> TrainSegConfig:
    """The variant at the pair's working size (resize, and the crop when there is one)."""
    cfg = copy.deepcopy(cfg)
    cfg.aug.resize = list(pair.size)
    if cfg.aug.crop is not None:
        cfg.aug.crop = list(pair.size)
    return cfg


def run_variant(name: str, cfg: TrainSegConfig, root: Path, out: Path, pair: Pair) -> dict:
    cfg = for_pair(cfg, pair)
    cfg.source = DomainSpec(str(root / "target"), pair.oracle_split)  # the oracle: target labels
    dst = out / name
    t0 = time.perf_counter()
    metrics = train_segmenter(cfg, dst, progress=False)
    model, _ = load_segmenter(dst / "checkpoints" / "final.safetensors")
    val = scan_split(str(root / "target"), "val", "required").dataset()
    res = evaluate(model, val, [pair.class_set], "cpu", list(pair.size), progress=False)
    per = res["per_class_iou"]
    objects = [v for k, v in per.items() if k != pair.background and v is not None]
    hist = (
        json.loads((dst / "loss_history.json").read_text())
        if (dst / "loss_history.json").is_file()
        else []
    )
    return {
        "variant": name,
        "arch": cfg.model.arch,
        "miou": next(iter(res["miou"].values())),
        "object_miou": statistics.fmean(objects) if objects else None,
        "per_class_iou": per,
        "final_loss": _loss(hist[-1]) if hist else metrics.get("loss_last"),
        # the wall time of this invocation (a resumed run counts only what it trained)
        "minutes": (time.perf_counter() - t0) / 60,
    }


def table(rows: list[dict], pair: Pair) -> str:
    objects = pair.background is not None
    lines = [
        f"| variant | what changes | mIoU ({pair.class_set} classes) |"
        + (" objects mIoU |" if objects else "")
        + " final loss | minutes |",
        "|---|---|---:|" + ("---:|" if objects else "") + "---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {VARIANTS[r['variant']][0]} | {r['miou']:.1f} | "
            + (f"{r['object_miou']:.1f} | " if objects else "")
            + f"{r['final_loss']:.3f} | {r['minutes']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-o", "--out", type=Path, default=Path("runs/shape_test"))
    ap.add_argument("--only", default="", help="comma list of variants (default: all)")
    ap.add_argument(
        "--pair",
        choices=sorted(PAIRS),
        default="shapes",
        help="the shape pair (default) or the built-in street-scene benchmark",
    )
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(VARIANTS)
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    pair = PAIRS[args.pair]
    root = generate(args.pair, args.out / "data")
    res_path = args.out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.is_file() else {}
    for name in names:
        results[name] = run_variant(name, VARIANTS[name][1], root, args.out, pair)
        write_json(res_path, results)
        print(f"{name}: mIoU {results[name]['miou']:.1f} ({results[name]['minutes']:.1f} min)")
    rows = [results[n] for n in VARIANTS if n in results]
    atomic_write_text(args.out / "results.md", table(rows, pair))
    print(table(rows, pair))


def _loss(row) -> float:
    """The loss of a history row: a dict, or an ``[it, loss]`` pair of earlier versions."""
    return row["loss"] if isinstance(row, dict) else row[1]


if __name__ == "__main__":
    main()
