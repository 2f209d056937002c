"""A picture of segmenters side by side: image | ground truth | one column per model.

Reads the colourised predictions that ``diffdass evaluate`` / ``diffdass run`` save
(``<eval>/predictions/<stem>.png``) and the labeled split they were made on, so the models are
compared on the same images without running any network::

    python benchmarks/prediction_panel.py --data runs/cicld_ablation/data/target --split val \\
        --col "g_0=runs/cicld_ablation/seed0/base/source_only/eval" \\
        --col "CICLD s0=runs/cicld_ablation/seed0/base/cicld/eval" \\
        --images 4 -o docs/img/cicld_predictions.png

The column names are written above the columns; the rows are the first ``--images`` stems
that every column has.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from diffdass.data.labels import colorize, default_palette


def _stems(folder: Path) -> set[str]:
    return {p.stem for p in folder.glob("*.png")}


def build_panel(data: Path, split: str, cols: list[tuple[str, Path]], images: int, scale: int):
    img_dir, lab_dir = data / split / "images", data / split / "labels"
    for d in (img_dir, lab_dir):
        if not d.is_dir():
            raise SystemExit(f"{d}: not found (expected a labeled folder split)")
    stems = _stems(img_dir) & _stems(lab_dir)
    for name, ev in cols:
        pred = ev / "predictions"
        if not pred.is_dir():
            raise SystemExit(f"{pred}: not found (column {name!r})")
        stems &= _stems(pred)
    chosen = sorted(stems)[:images]
    if not chosen:
        raise SystemExit("no image stem is shared by the split and every column")
    palette = default_palette(19)
    rows = []
    for stem in chosen:
        tiles = [np.asarray(Image.open(img_dir / f"{stem}.png").convert("RGB"))]
        tiles.append(colorize(np.asarray(Image.open(lab_dir / f"{stem}.png")), palette))
        for _, ev in cols:
            tiles.append(np.asarray(Image.open(ev / "predictions" / f"{stem}.png").convert("RGB")))
        h, w = tiles[0].shape[:2]
        tiles = [np.asarray(Image.fromarray(t).resize((w, h), Image.NEAREST)) for t in tiles]
        rows.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate(rows, axis=0)
    grid = Image.fromarray(grid).resize(
        (grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST
    )
    head = 14
    canvas = Image.new("RGB", (grid.width, grid.height + head), "white")
    canvas.paste(grid, (0, head))
    draw = ImageDraw.Draw(canvas)
    tile_w = grid.width // (2 + len(cols))
    for k, name in enumerate(["image", "label"] + [n for n, _ in cols]):
        draw.text((k * tile_w + 3, 1), name, fill="black")
    return canvas


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="labeled folder dataset root")
    ap.add_argument("--split", default="val")
    ap.add_argument(
        "--col", action="append", required=True, help="NAME=EVAL_DIR (its predictions/ folder)"
    )
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--scale", type=int, default=2, help="nearest-neighbour upscaling")
    ap.add_argument("-o", "--out", type=Path, required=True)
    a = ap.parse_args()
    cols = []
    for c in a.col:
        if "=" not in c:
            raise SystemExit(f"--col {c!r}: expected NAME=EVAL_DIR")
        name, path = c.split("=", 1)
        cols.append((name, Path(path)))
    panel = build_panel(a.data, a.split, cols, a.images, a.scale)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    panel.save(a.out)
    print(f"wrote {a.out} ({panel.width}x{panel.height})")


if __name__ == "__main__":
    main()
