#!/usr/bin/env python
"""The prepared GPU check: every figure the project needs from one short window on one GPU.

Run it through ``benchmarks/gpu_check.sh`` (which installs the carried wheels first). In order,
each step writing one file under ``--out`` (at most 8 in all):

1. ``env.json``         the machine: GPU, torch, CUDA, Python, the code's revision, the date;
2. ``speed.json``       the translation step speed table (``benchmarks/translate_speed.py``)
                        at batch 1 and at PTL's translation batch, bf16 autocast;
3. ``estimates.json``   ``diffdass estimate`` of the three GTA5 -> Cityscapes configs, fast and
                        literal, timed on this device (rates per kind of work, hours per stage),
                        beside the cost model's ``--gpu`` figure for the same config;
4. ``run.json``         the built-in ``diffdass run`` on this device: its summary (mIoU of every
                        method) and seconds per stage; cut at the time budget if it runs over
                        (what finished is kept);
5. ``gpu_check.md``     all of the above as readable tables (``gpu_check.log`` is the wrapper's).

``--budget-s`` bounds the whole check (default 450 s: 8 minutes with the wheels' install):
a step that would start past the budget is skipped and says so. ``--dry-run`` runs the same
steps on the CPU at tiny sizes (CI runs it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
GTA5 = [
    "gta5_cityscapes_deeplabv2",
    "gta5_cityscapes_fcn8s",
    "gta5_cityscapes_segformer",
]
VARIANTS = ["baseline", "gsg", "lcg_batched", "lcg_single_pass", "sgg_alt_batched"]
VARIANTS += ["sgg_alt_single_pass"]
# tiny sizes of the dry run: every stage of a paper config at 64x128 images, a tiny DDPM
TINY_ESTIMATE = [
    "estimate.image_size=[64,128]",
    "source_only.aug.resize=null",
    "source_only.aug.crop=[32,64]",
    "ptl.aug.resize=null",
    "ptl.aug.crop=[32,64]",
    "ptl.translate_size=[32,64]",
    "ptl.translate_batch_size=2",
    "ddpm.unet=tiny",
    "ddpm.resize=[32,64]",
    "evaluation.input_size=null",
    "source_only.model.arch=deeplabv2_tiny",
]
TINY_RUN = [
    "benchmark.height=32",
    "benchmark.width=64",
    "benchmark.n_source=8",
    "benchmark.n_target_train=8",
    "benchmark.n_target_val=4",
    "source_only.aug.crop=[32,64]",
    "source_only.iterations=2",
    "source_only.batch_size=2",
    "ddpm.iterations=2",
    "ddpm.batch_size=2",
    "ddpm.sample_every=2",
    "ddpm.sample_steps=2",
    "ptl.n_max=20",
    "ptl.num_domains=2",
    "ptl.reverse_steps=2",
    "ptl.iterations_per_domain=2",
    "ptl.batch_size=2",
    "ptl.translate_batch_size=2",
    "ptl.aug.crop=[32,64]",
    "ptl.guidance.scale=0.08",
    "stage_metrics.images=2",
]


class Check:
    """Runs the steps within the budget and writes their files."""

    def __init__(self, out: Path, budget_s: float, dry_run: bool) -> None:
        self.out, self.budget_s, self.dry_run = out, budget_s, dry_run
        self.t0 = time.monotonic()
        self.device = "cpu" if dry_run else "cuda"
        self.results: dict[str, object] = {}

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)

    def write(self, name: str, obj) -> None:
        tmp = self.out / f".{name}.tmp"
        tmp.write_text(json.dumps(obj, indent=1, default=str))
        tmp.replace(self.out / name)

    def step(self, name: str, fn, min_left: float = 10.0) -> None:
        if self.left() < min_left:
            self.results[name] = {"skipped": f"time budget ({self.budget_s:.0f} s) spent"}
            print(f"[gpu_check] {name}: skipped, budget spent", flush=True)
            return
        t = time.monotonic()
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            res = fn()
        except Exception as e:  # a step's failure is recorded; the next steps still run
            res = {"error": f"{type(e).__name__}: {e}"}
        if isinstance(res, dict):
            res.setdefault("seconds", round(time.monotonic() - t, 1))
        self.results[name] = res
        print(f"[gpu_check] {name}: {time.monotonic() - t:.1f} s", flush=True)

    # ---------------------------------------------------------------------- the steps

    def env(self) -> dict:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        doc = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "dry_run": self.dry_run,
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "git": rev or "unknown (not a git checkout)",
        }
        if torch.cuda.is_available():
            doc["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30)
        self.write("env.json", doc)
        return doc

    def speed(self) -> dict:
        sys.path.insert(0, str(REPO / "benchmarks"))
        import translate_speed

        size = "small" if self.dry_run else "full"
        common = ["--device", self.device, "--size", size, "--only", *VARIANTS]
        if self.dry_run:
            common += ["--repeats", "1", "--warmup", "1", "--steps", "1", "--train-iters", "1"]
            common += ["--chunk-size", "24", "--classes", "3"]
        else:
            common += ["--repeats", "2", "--steps", "4", "--train-iters", "3", "--amp"]
        out = {}
        for batch in (1, 8):  # 8: the paper configs' ptl.translate_batch_size
            out[f"batch{batch}"] = translate_speed.main(
                [*common, "--batch", str(batch), "--train-batch", "4"]
            )
        self.write("speed.json", out)
        return {"batches": list(out)}

    def estimates(self) -> dict:
        from diffdass.pipeline.estimate import run_estimate

        docs = {}
        for name in GTA5:
            for suffix in ("_fast", ""):
                if self.left() < 20:
                    docs[name + suffix] = {"skipped": "time budget spent"}
                    continue
                config = REPO / "configs" / f"{name}{suffix}.yaml"
                sets = TINY_ESTIMATE if self.dry_run else None
                flags = {"device": self.device}
                t = time.monotonic()
                try:
                    steps = 1 if self.dry_run else 2
                    measured = run_estimate(
                        config, sets, 8, steps, None, flags, echo=lambda *_: None
                    )
                    model = run_estimate(
                        config, sets, 8, 2, None, flags, echo=lambda *_: None, gpu="h200"
                    )
                except Exception as e:
                    docs[name + suffix] = {"error": f"{type(e).__name__}: {e}"}
                    continue
                docs[name + suffix] = {
                    "measured": measured,
                    "model_h200": {
                        k: model[k] for k in ("total_hours", "total_hours_n", "total_flops")
                    },
                    "seconds": round(time.monotonic() - t, 1),
                }
                self.write("estimates.json", docs)
        self.write("estimates.json", docs)
        return {"configs": list(docs)}

    def run(self) -> dict:
        run_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"gpu_check_run_{os.getpid()}"
        cmd = [sys.executable, "-m", "diffdass.cli.main", "run", "-o", str(run_dir)]
        cmd += ["--device", self.device]
        for s in TINY_RUN if self.dry_run else []:
            cmd += ["--set", s]
        t = time.monotonic()
        timeout = max(10.0, self.left() - 5) if self.left() != float("inf") else None
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            status = "finished" if p.returncode == 0 else f"failed (exit {p.returncode})"
            tail = (p.stdout + p.stderr)[-3000:]
        except subprocess.TimeoutExpired as e:
            status = f"cut at the time budget ({e.timeout:.0f} s)"
            tail = ((e.stdout or b"").decode(errors="replace"))[-3000:]
        doc = {"status": status, "seconds": round(time.monotonic() - t, 1), "tail": tail}
        for name in ("summary.json", "stage_seconds.json"):
            f = run_dir / name
            if f.is_file():
                doc[name.removesuffix(".json")] = json.loads(f.read_text())
        self.write("run.json", doc)
        if status.startswith("failed"):
            return {"error": f"diffdass run {status}: {tail[-500:]}"}
        return {"status": status}

    # ------------------------------------------------------------------------ report

    def report(self) -> None:
        lines = [f"# GPU check ({'dry run, CPU' if self.dry_run else self.device})", ""]
        env = self.results.get("env", {})
        lines.append(f"- {env.get('date')} on {env.get('device')}, torch {env.get('torch')}")
        lines += [f"- step `{k}`: {v}" for k, v in self.results.items() if k != "env"]
        est = self.out / "estimates.json"
        if est.is_file():
            lines += [
                "",
                "| config | hours measured here | h200 model | TFLOP |",
                "|---|---:|---:|---:|",
            ]
            for name, d in json.loads(est.read_text()).items():
                if "measured" in d:
                    m = d["measured"]
                    lines.append(
                        f"| {name} | {m['total_hours']:.2f} | {d['model_h200']['total_hours']:.2f}"
                        f" | {m['total_flops'] / 1e12:.4g} |"
                    )
                else:
                    lines.append(f"| {name} | {d} | | |")
        tmp = self.out / ".gpu_check.md.tmp"
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.out / "gpu_check.md")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the (at most 8) files")
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="time for all the steps (default 450 s; a dry run: none, and every step must run)",
    )
    p.add_argument("--dry-run", action="store_true", help="the same steps on CPU, tiny sizes")
    a = p.parse_args(argv)
    if not a.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device (use --dry-run on a CPU machine)", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    budget = a.budget_s or (float("inf") if a.dry_run else 450.0)
    check = Check(a.out, budget, a.dry_run)
    check.step("env", check.env, min_left=0)
    check.step("speed", check.speed)
    check.step("estimates", check.estimates)
    check.step("run", check.run, min_left=30)
    check.report()
    failed = [k for k, v in check.results.items() if isinstance(v, dict) and "error" in v]
    if a.dry_run:  # the dry run checks every step: a skipped one fails it too
        failed += [k for k, v in check.results.items() if isinstance(v, dict) and "skipped" in v]
    print(f"[gpu_check] done in {time.monotonic() - check.t0:.0f} s; failed steps: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
