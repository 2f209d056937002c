"""A picture of segmenters side by side: image | ground truth | one column per model, from
the colourised predictions ``diffdass evaluate`` saves (no network runs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from diffdass.data.labels import colorize, default_palette


def _stems(folder: Path) -> set[str]:
    return {p.stem for p in folder.glob("*.png")}


def build_panel(data: Path, split: str, cols: list[tuple[str, Path]], images: int, scale: int):
    """Image | ground truth | one column per ``(name, eval_dir)`` (its ``predictions/``
    PNGs), for the first ``images`` stems every folder shares, upscaled ``scale`` times
    (nearest), with a header naming the columns. Raises FileNotFoundError naming a missing
    folder, or when no stem is shared."""
    img_dir, lab_dir = data / split / "images", data / split / "labels"
    for d in (img_dir, lab_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: not found (expected a labeled folder split)")
    stems = _stems(img_dir) & _stems(lab_dir)
    for name, ev in cols:
        pred = ev / "predictions"
        if not pred.is_dir():
            raise FileNotFoundError(f"{pred}: not found (column {name!r})")
        stems &= _stems(pred)
    chosen = sorted(stems)[:images]
    if not chosen:
        raise FileNotFoundError("no image stem is shared by the split and every column")
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
