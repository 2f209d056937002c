"""What limits a trained CICLD: its fit of its own source domain, and what its diffusion path
carries in each ablation row.

* ``source-fit RUN``: mIoU19 of CICLD's EMA model and of g_0 on the first 100 source-train
  images of a finished ``diffdass run`` of a CICLD config (does CICLD fit its source?).
* ``probes ABLATE_DIR [...]``: the noise and condition probes (``docs/cicld.md``) of every
  CICLD row checkpoint of seed 0 under ``diffdass ablate`` output folders, on the first 100
  target-val images of ``--val ROOT`` (default: the shared run's benchmark data); cached next
  to each checkpoint in ``probes_row.json``.

Recorded in ``docs/results/2026-12-03-cicld.md``::

    python studies/cicld_diagnostics.py source-fit runs/cicld/seed0
    python studies/cicld_diagnostics.py probes runs/cicld_rows --val runs/cicld/seed0/data/target
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from diffdass.adaptation.cicld import load_cicld
from diffdass.data.scan import scan_split
from diffdass.evaluation.cicld_probe import noise_probe, probe_condition
from diffdass.evaluation.metrics import ConfusionMatrix, resolve_class_set
from diffdass.models.factory import load_segmenter

IMAGES = 100


@torch.no_grad()
def miou(model, ds, n: int = IMAGES) -> float:
    nc = ds.classes.num_classes
    cm = ConfusionMatrix(nc, ds.classes.ignore_index)
    for i in range(min(n, len(ds))):
        item = ds[i]
        logits = model(item["image"][None])
        logits = F.interpolate(
            logits, size=item["label"].shape[-2:], mode="bilinear", align_corners=False
        )
        cm.update(logits.argmax(1)[0], item["label"])
    return float(cm.miou(resolve_class_set("19", nc))) * 100


def source_fit(run: Path) -> dict:
    cicld, _ = load_cicld(run / "cicld" / "checkpoints" / "final.safetensors")
    g0, _ = load_segmenter(run / "source_only" / "checkpoints" / "final.safetensors")
    ds = scan_split(run / "data" / "source", "train", "required").dataset()
    return {"g_0": miou(g0.eval(), ds), "cicld": miou(cicld, ds)}


def probes(dirs: list[Path], val: Path) -> dict:
    ds = scan_split(val, "val", "required").dataset()
    res = {}
    for d in dirs:
        for ckpt in sorted(d.glob("seed0/*/cicld/checkpoints/final.safetensors")):
            row = ckpt.parts[-4]
            cache = ckpt.parent.parent / "probes_row.json"
            if cache.is_file():
                res[row] = json.loads(cache.read_text())
                continue
            seg, _ = load_cicld(ckpt)
            cond = probe_condition(seg.net, ds, IMAGES, seg.t_start, seg.steps)
            res[row] = {
                "noise": noise_probe(seg, ds, IMAGES),
                "cond": cond["argmax_changed_pct"] / 100 if cond else None,
            }
            cache.write_text(json.dumps(res[row]))
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("source-fit")
    a.add_argument("run", type=Path)
    b = sub.add_parser("probes")
    b.add_argument("dirs", type=Path, nargs="+")
    b.add_argument("--val", type=Path, required=True, help="labeled target root (val split)")
    args = p.parse_args()
    torch.set_num_threads(1)
    out = source_fit(args.run) if args.cmd == "source-fit" else probes(args.dirs, args.val)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
