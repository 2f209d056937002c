"""Small structures from random initialisation: old CPU recipe vs ``unet_small`` + AdamW.

Generates a synthetic folder-format dataset (11 classes, 64x64 images, numpy only,
deterministic from ``--seed``): a shaded background of random colour, a few large regions
(road, building) and many small structures -- thin bars 1-3 px wide (poles, wires), discs
of 3-8 px (lights, bicycles), squares of 3-8 px (markers, signs) and small rectangles
(persons, cones). Pairs of small classes share one colour and differ only in shape/size;
every object's colour is jittered and the image is noisy. Then trains a target oracle on
its train split with the library's ``train_segmenter`` and scores the val split with
``evaluate`` (mIoU over all 11 classes), for two recipes:

* ``a``: the previous CPU-scale default (``configs/custom_small.yaml`` before the change):
  ``deeplabv2_tiny`` (output stride 8), SGD lr 0.01 poly, batch 8, 800 iterations;
* ``b``: the new default: ``unet_small`` (full-resolution logits), AdamW lr 3e-3 with poly
  decay after 50 warm-up iterations, weight decay 1e-4, batch 16, 1500 iterations.

Both use the same augmentation (random rescale 0.75-1.25, crop, flip, 10% noisy-masked
samples) and random initialisation. The working size is the images' own 64x64 (``--size``).

    python studies/small_structures.py                 # both recipes, prints a table
    python studies/small_structures.py --recipes b --iterations-b 1000 --threads 2

Prints a markdown table (mIoU, per-class IoU, training wall and CPU time) and one JSON line
per recipe. The CPU time (all threads) is what the training costs on an otherwise idle
machine; the wall time grows when other processes share the cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from diffdass.adaptation.seg_training import TrainSegConfig, train_segmenter
from diffdass.data.folder import ClassInfo, FolderDataset
from diffdass.evaluation.evaluate import evaluate
from diffdass.models.factory import load_segmenter
from diffdass.utils.config import load_config
from diffdass.utils.io import save_image

#: (name, base RGB colour). The eight small classes come in four pairs of the *same* colour
#: that differ only in shape and size, so a segmenter has to resolve the shapes.
YELLOW, ORANGE, RED, BLUE = (215, 200, 70), (250, 150, 30), (170, 20, 50), (30, 40, 220)
CLASSES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("background", (110, 110, 110)),  # random per-image colour and shading
    ("road", (128, 64, 128)),  # a band at the bottom
    ("building", (80, 80, 160)),  # large rectangles / ellipses
    ("pole", YELLOW),  # vertical bars 1-3 px wide
    ("wire", YELLOW),  # horizontal bars 1-2 px wide
    ("light", ORANGE),  # discs, diameter 3-5 px
    ("sign", ORANGE),  # squares, side 5-8 px
    ("bicycle", RED),  # discs, diameter 6-8 px
    ("person", RED),  # upright rectangles 2-3 x 6-10 px
    ("marker", BLUE),  # squares, side 3-4 px
    ("cone", BLUE),  # flat rectangles 5-8 x 2 px
)
#: colour jitter of every object (per channel, uniform +-) and pixel noise (std).
JITTER, NOISE = 35, 15.0

RECIPES: dict[str, dict] = {
    "a": {
        "label": "deeplabv2_tiny, SGD lr 0.01 poly, batch 8 (old default)",
        "model.arch": "deeplabv2_tiny",
        "optim.name": "sgd",
        "optim.lr": 0.01,
        "optim.momentum": 0.9,
        "optim.weight_decay": 5e-4,
        "optim.head_lr_mult": 1.0,
        "batch_size": 8,
        "iterations": 800,
    },
    "b": {
        "label": "unet_small, AdamW lr 3e-3 poly + 50 warm-up, batch 16 (new default)",
        "model.arch": "unet_small",
        "optim.name": "adamw",
        "optim.lr": 3e-3,
        "optim.warmup": 50,
        "optim.weight_decay": 1e-4,
        "optim.head_lr_mult": 1.0,
        "batch_size": 16,
        "iterations": 1500,
    },
}


# --------------------------------------------------------------------- dataset
def _colour(rng: np.random.Generator, base: tuple[int, int, int], jitter: int) -> np.ndarray:
    return np.clip(np.asarray(base) + rng.integers(-jitter, jitter + 1, 3), 0, 255)


def _disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def make_sample(rng: np.random.Generator, h: int = 64, w: int = 64):
    """One (image uint8 HxWx3, label uint8 HxW) pair."""
    lbl = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    # background: a random colour with a linear shading across the image
    base = rng.integers(60, 170, 3).astype(np.float64)
    slope = rng.uniform(-0.6, 0.6, (2, 3))
    img = base + yy[..., None] * slope[0] + xx[..., None] * slope[1]

    def paint(mask: np.ndarray, c: int) -> None:
        lbl[mask] = c
        img[mask] = _colour(rng, CLASSES[c][1], JITTER)

    def rect(y0: int, x0: int, rh: int, rw: int) -> np.ndarray:
        m = np.zeros((h, w), bool)
        m[y0 : y0 + rh, x0 : x0 + rw] = True
        return m

    def place(rh: int, rw: int) -> tuple[int, int]:
        return int(rng.integers(0, h - rh + 1)), int(rng.integers(0, w - rw + 1))

    # large regions
    if rng.random() < 0.6:
        paint(yy >= int(rng.integers(h // 2, h - 8)), 1)
    for _ in range(int(rng.integers(0, 3))):
        rh, rw = (int(v) for v in rng.integers(12, 32, 2))
        y0, x0 = place(rh, rw)
        if rng.random() < 0.5:
            paint(rect(y0, x0, rh, rw), 2)
        else:
            cy, cx = y0 + rh / 2, x0 + rw / 2
            paint(((yy - cy) / (rh / 2)) ** 2 + ((xx - cx) / (rw / 2)) ** 2 <= 1, 2)

    # small structures: (class, count range, shape sampler) in random order
    def bar_v():
        bw, bl = int(rng.integers(1, 4)), int(rng.integers(10, 41))
        return rect(*place(bl, bw), bl, bw)

    def bar_h():
        bw, bl = int(rng.integers(1, 3)), int(rng.integers(10, 41))
        return rect(*place(bw, bl), bw, bl)

    def disc(lo: int, hi: int):
        def draw():
            d = float(rng.integers(lo, hi + 1))
            cy, cx = rng.uniform(d / 2, h - d / 2), rng.uniform(d / 2, w - d / 2)
            return _disc(h, w, cy - 0.5, cx - 0.5, d / 2)

        return draw

    def box(hlo: int, hhi: int, wlo: int, whi: int, square: bool = False):
        def draw():
            rh = int(rng.integers(hlo, hhi + 1))
            rw = rh if square else int(rng.integers(wlo, whi + 1))
            return rect(*place(rh, rw), rh, rw)

        return draw

    objects = [
        (3, (1, 4), bar_v),
        (4, (0, 3), bar_h),
        (5, (0, 4), disc(3, 5)),
        (6, (0, 3), box(5, 8, 5, 8, square=True)),
        (7, (0, 3), disc(6, 8)),
        (8, (0, 4), box(6, 10, 2, 3)),
        (9, (0, 4), box(3, 4, 3, 4, square=True)),
        (10, (0, 3), box(2, 2, 5, 8)),
    ]
    todo = [(c, draw) for c, (lo, hi), draw in objects for _ in range(int(rng.integers(lo, hi)))]
    for j in rng.permutation(len(todo)):
        c, draw = todo[j]
        paint(draw(), c)
    img += rng.normal(0.0, NOISE, img.shape)  # sensor noise
    return np.clip(img, 0, 255).astype(np.uint8), lbl


def generate(root: Path, n_train: int, n_val: int, seed: int, size=(64, 64)) -> Path:
    """Write the folder-format dataset ``root/{classes.yaml, train, val}``."""
    ClassInfo.create([n for n, _ in CLASSES], palette=[c for _, c in CLASSES]).save(root)
    for split_id, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        for i in range(n):
            img, lbl = make_sample(np.random.default_rng([seed, split_id, i]), *size)
            save_image(root / split / "images" / f"{i:05d}.png", img)
            save_image(root / split / "labels" / f"{i:05d}.png", lbl)
    return root


def class_frequencies(root: Path, split: str = "val") -> np.ndarray:
    from PIL import Image

    counts = np.zeros(len(CLASSES))
    for f in sorted((root / split / "labels").glob("*.png")):
        counts += np.bincount(np.asarray(Image.open(f)).ravel(), minlength=len(CLASSES))[
            : len(CLASSES)
        ]
    return counts / counts.sum()


# -------------------------------------------------------------------- training
def run_recipe(name: str, root: Path, out: Path, args) -> dict:
    recipe = dict(RECIPES[name])
    label = recipe.pop("label")
    if name == "a" and args.iterations_a:
        recipe["iterations"] = args.iterations_a
    if name == "b" and args.iterations_b:
        recipe["iterations"] = args.iterations_b
    h, w = args.size
    over = {
        "source.root": str(root),
        "source.split": "train",
        "aug.resize": [h, w],
        "aug.scale": [0.75, 1.25],
        "aug.crop": [h, w],
        "aug.hflip": True,
        "noisy_masked.prob": 0.1,
        "noisy_masked.max_timestep": 300,
        "num_workers": 0,
        "checkpoint_every": 100000,
        "seed": args.seed,
        "device": args.device,
        **recipe,
    }
    cfg = load_config(TrainSegConfig, None, over)
    t0, c0 = time.perf_counter(), time.process_time()
    m = train_segmenter(cfg, out / f"recipe_{name}", progress=not args.quiet)
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    model, _ = load_segmenter(m["checkpoint"], args.device)
    val = FolderDataset(root, "val", "required")
    res = evaluate(model, val, ["all"], args.device, input_size=(h, w), progress=False)
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "recipe": name,
        "label": label,
        "arch": cfg.model.arch,
        "params_m": n_params / 1e6,
        "iterations": cfg.iterations,
        "batch_size": cfg.batch_size,
        "miou": next(iter(res["miou"].values())),
        "per_class_iou": res["per_class_iou"],
        "train_seconds": train_s,
        "train_cpu_seconds": train_cpu,  # all threads; the wall time on an idle machine
        "loss_first": m["loss_first"],
        "loss_last": m["loss_last"],
    }


def markdown(results: list[dict], freqs: np.ndarray) -> str:
    names = [n for n, _ in CLASSES]
    head = ["recipe", "segmenter", "optimiser", "batch", "iterations", "wall", "CPU", "mIoU11"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * 5]
    for r in results:
        seg, opt = r["label"].split(", ", 1)
        opt = opt.split(", batch")[0]
        lines.append(
            f"| ({r['recipe']}) | {seg} ({r['params_m']:.2f}M) | {opt} | {r['batch_size']} | "
            f"{r['iterations']} | {r['train_seconds'] / 60:.1f} min | "
            f"{r['train_cpu_seconds'] / 60:.1f} min | **{r['miou']:.1f}** |"
        )
    lines += [
        "",
        "| class | val pixels | " + " | ".join(f"({r['recipe']})" for r in results) + " |",
    ]
    lines.append("|---|---:|" + "---:|" * len(results))
    for c, n in enumerate(names):
        cells = []
        for r in results:
            v = r["per_class_iou"][n]
            cells.append("n/a" if v is None else f"{v:.1f}")
        lines.append(f"| {n} | {100 * freqs[c]:.2f}% | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipes", default="a,b", help="comma list of: a, b")
    ap.add_argument("--n-train", type=int, default=400)
    ap.add_argument("--n-val", type=int, default=100)
    ap.add_argument("--size", type=int, nargs=2, default=(64, 64), metavar=("H", "W"))
    ap.add_argument("--iterations-a", type=int, default=None, help="default 800")
    ap.add_argument("--iterations-b", type=int, default=None, help="default 1500")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None, help="keep data and runs here")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="diffdass_small_") as tmp:
        out = args.out or Path(tmp)
        root = out / "data"
        if not (root / "classes.yaml").is_file():
            t0 = time.perf_counter()
            generate(root, args.n_train, args.n_val, args.seed, tuple(args.size))
            print(
                f"generated {args.n_train}+{args.n_val} images in {time.perf_counter() - t0:.1f}s"
            )
        freqs = class_frequencies(root)
        results = []
        for name in args.recipes.split(","):
            r = run_recipe(name.strip(), root, out, args)
            print(json.dumps(r), flush=True)
            results.append(r)
        print()
        print(f"torch threads: {torch.get_num_threads()}, device: {args.device}")
        print(markdown(results, freqs))


if __name__ == "__main__":
    main()
