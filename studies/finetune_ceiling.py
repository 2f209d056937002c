"""How far can PTL's fine-tuning budget take g_0 if the translations were perfect?

PTL fine-tunes g_0 on translated source images X^n with the source labels. This script
replaces the translations by *real target images with their true labels* (the benchmark's
``train_oracle`` split) and otherwise runs the same fine-tuning as PTL's stage: same g_0,
optimiser, learning rate, batch size, augmentation and number of iterations, with
L_ft = CE(g(X), Y) + CE(g(X^S), Y^S) (``--no-src``: the first term only, Table 3 (a)).
The result is an upper bound of what any translation can give with that budget; a
"source" control fine-tunes on source images in both terms (more training, no target).

    python studies/finetune_ceiling.py --run runs/benchmark --iterations 120
    python studies/finetune_ceiling.py --run runs/benchmark --iterations 120 --no-src

Needs a finished ``diffdass run`` of the built-in benchmark (for g_0 and the oracle split).
Prints one JSON line per variant with the target val mIoU19.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import yaml

from _run_args import add_run_args, data_root  # the studies folder is on sys.path
from diffdass.adaptation.config import OptimConfig
from diffdass.adaptation.seg_training import SegTrainer
from diffdass.data.folder import FolderDataset, StreamBatchSampler, StreamDataset
from diffdass.data.transforms import train_transform
from diffdass.evaluation.evaluate import evaluate
from diffdass.models.factory import load_segmenter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_args(ap)
    ap.add_argument("--iterations", type=int, default=None, help="default: PTL's total")
    ap.add_argument("--no-src", action="store_true", help="drop the source term (L_ada only)")
    ap.add_argument("--variants", default="perfect,source", help="comma list of: perfect, source")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    ptl_cfg = yaml.safe_load((args.run / "ptl" / "config.yaml").read_text())
    seed = int(ptl_cfg["seed"])
    bs = int(ptl_cfg["batch_size"])
    per_domain = int(ptl_cfg["iterations_per_domain"])
    n_domains = len(json.loads((args.run / "ptl" / "domains.json").read_text()))
    iters = args.iterations or per_domain * n_domains
    a = ptl_cfg["aug"]
    tf = train_transform(
        crop=tuple(a["crop"]) if a.get("crop") else None,
        resize=tuple(a["resize"]) if a.get("resize") else None,
        scale=tuple(a["scale"]) if a.get("scale") else None,
        hflip=a.get("hflip", True),
    )
    data = data_root(args)
    src = FolderDataset(data / "source", "train", "required", tf, seed=seed)
    oracle = FolderDataset(data / "target", "train_oracle", "required", tf, seed=seed)
    val = FolderDataset(data / "target", "val", "required")
    optim = OptimConfig(**ptl_cfg["optim"])
    device = torch.device(args.device)
    variants = {"perfect": oracle, "source": src}
    for name in args.variants.split(","):
        first = variants[name]
        model, _ = load_segmenter(args.run / "source_only" / "checkpoints" / "final.safetensors")
        trainer = SegTrainer(model, optim, iters, device, seed, amp=False)
        a_stream, s_stream = StreamDataset(first), StreamDataset(src)
        n = min(len(first), len(src))
        t0 = time.perf_counter()
        model.train()
        for it, keys in enumerate(StreamBatchSampler(n, bs, seed, 0, iters)):
            xa = torch.stack([a_stream[k]["image"] for k in keys]).to(device)
            ya = torch.stack([a_stream[k]["label"] for k in keys]).to(device)
            batches = [(xa, ya)]
            if not args.no_src:
                xs = torch.stack([s_stream[k]["image"] for k in keys]).to(device)
                ys = torch.stack([s_stream[k]["label"] for k in keys]).to(device)
                batches.append((xs, ys))
            trainer.step(it, batches)
        res = evaluate(model, val, ["19"], device, progress=False)
        print(
            json.dumps(
                {
                    "variant": name,
                    "loss": "L_ada" if args.no_src else "L_ada + L_src",
                    "iterations": iters,
                    "batch_size": bs,
                    "miou19": round(res["miou"]["19"], 2),
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
