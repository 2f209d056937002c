"""A picture of segmenters side by side: image | ground truth | one column per model.

Reads the colourised predictions that ``diffdass evaluate`` / ``diffdass run`` save
(``<eval>/predictions/<stem>.png``) and the labeled split they were made on, so the models are
compared on the same images without running any network::

    python studies/prediction_panel.py --data runs/cicld_ablation/data/target --split val \\
        --col "g_0=runs/cicld_ablation/seed0/base/source_only/eval" \\
        --col "CICLD s0=runs/cicld_ablation/seed0/base/cicld/eval" \\
        --images 4 -o docs/img/cicld_predictions.png

The column names are written above the columns; the rows are the first ``--images`` stems
that every column has.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffdass.evaluation.panel import build_panel


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
