"""``diffdass run``: the whole method as one resumable job.

Stages (each skipped when its artifacts exist, so an interrupted run continues where it
stopped): built-in benchmark (if enabled) -> source-only g_0 -> AdaBN baseline (g_0 with
target BatchNorm statistics, no training) -> [target oracle] -> [target DDPM -> [judge ->
guidance calibration] -> PTL] ->
[CICLD] -> [DACS] -> [stage metrics] -> evaluation of every model on target val -> HTML
report. The bracketed stages are optional: ``oracle``, ``cicld`` and ``dacs`` run when their
section is given, the DDPM and PTL unless ``ptl: null``, the judge (an independent source-only
model) and the calibration when ``ptl.guidance.scale`` is ``auto``
(:mod:`diffdass.adaptation.calibration`).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from diffdass.adaptation.ddpm_training import train_ddpm
from diffdass.adaptation.seg_training import train_segmenter
from diffdass.pipeline.config import (
    PipelineConfig,
    check_config,
    fill_config,
    scan_data,
)
from diffdass.pipeline.guidance import calibrate, calibration_summary, judge_config, stage_metrics
from diffdass.pipeline.methods import BY_KEY, METHODS, Context, describe, display_order
from diffdass.utils.config import ConfigError
from diffdass.utils.io import read_json, write_json
from diffdass.utils.run import RunDir

#: files that show a pipeline's stage started, and the stages that build on it: a section's
#: settings may change while neither it nor a stage after it has produced anything
_STAGE_OUTPUTS = {
    "source_only": ("source_only/checkpoints/*", "source_only/metrics.json"),
    "oracle": ("oracle/checkpoints/*", "oracle/metrics.json"),
    "adabn": ("adabn/checkpoints/*",),
    "ddpm": ("ddpm/checkpoints/*", "ddpm/metrics.json"),
    "judge": ("judge/checkpoints/*", "judge/metrics.json"),
    "calibration": ("calibration/calibration.json",),
    "ptl": ("ptl/checkpoints/*", "ptl/metrics.json"),
    "stage_metrics": ("stage_metrics/*.json",),
    "cicld": ("cicld/checkpoints/*", "cicld/metrics.json"),
    "dacs": ("dacs/checkpoints/*", "dacs/metrics.json"),
}
_DEPENDENTS = {
    "source_only": (
        "source_only",
        "oracle",
        "adabn",
        "judge",
        "calibration",
        "ptl",
        "stage_metrics",
        "dacs",
    ),
    "ddpm": ("ddpm", "calibration", "ptl", "stage_metrics"),
    "calibration": ("judge", "calibration", "ptl", "stage_metrics"),
    "ptl": ("calibration", "ptl", "stage_metrics"),
    "stage_metrics": ("stage_metrics",),
    "cicld": ("cicld",),
    "dacs": ("dacs",),
}
#: the PTL settings the guidance calibration reads (the rest may change after it ran)
_CALIBRATION_KEYS = tuple(
    f"ptl.{k}" for k in ("guidance", "sampler", "n_max", "domains", "num_domains", "reverse_steps")
)
#: the calibration settings the judge's training reads (the others: only the sweep)
_JUDGE_KEYS = ("calibration.judge_seed_offset", "calibration.judge_iterations")
PIPELINE_ARTIFACTS = (
    "summary.json",
    "*/eval/metrics.json",
    *(p for pats in _STAGE_OUTPUTS.values() for p in pats),
)


def _unstarted_sections(out: Path):
    """``allow(diff)`` for :meth:`RunDir.check`: a changed key of a stage section is fine while
    that stage and the ones after it have not started."""

    def started(stage: str) -> bool:
        return any(p.is_file() for pat in _STAGE_OUTPUTS[stage] for p in out.glob(pat))

    def allow(diff: str) -> bool:
        key = diff.split(":", 1)[0]
        section = key.split(".", 1)[0]
        if "logging" in key.split("."):
            return True  # where the curves go (`logging`, shared by every stage): no result
        deps = _DEPENDENTS.get(section)
        if section == "ptl" and not key.startswith(_CALIBRATION_KEYS):
            deps = ("ptl", "stage_metrics")  # a PTL setting the calibration does not read
        if section == "calibration" and not key.startswith(_JUDGE_KEYS):
            deps = ("calibration", "ptl", "stage_metrics")  # the sweep, not the judge
        return deps is not None and not any(started(s) for s in deps)

    return allow


def run_pipeline(
    cfg: PipelineConfig, progress: bool = True, echo=print, calibrate_only: bool = False
) -> dict:
    """Run every stage; returns the summary written to ``<out>/summary.json``.

    ``calibrate_only`` (``diffdass calibrate-guidance``): run only what the guidance
    calibration needs (benchmark, g_0, DDPM, judge) and the calibration itself, whatever
    ``ptl.guidance.scale`` says, and return the calibration result; a later ``diffdass run``
    on the same folder reuses all of it.

    Before any stage runs, every stage's settings and every split the stages will read are
    checked, so a mistake fails in seconds, not after hours (docs/run_directories.md).
    """
    out = Path(cfg.out)
    cfg = fill_config(cfg)
    check_config(cfg)
    run = RunDir(out, "run", artifacts=PIPELINE_ARTIFACTS)
    allow = _unstarted_sections(out)
    run.check(cfg, (), allow=allow)
    times: dict[str, float] = {}
    if (out / "stage_seconds.json").is_file():
        times.update(read_json(out / "stage_seconds.json"))

    def stage(name, fn):
        """Run one stage; its wall time accumulates over resumed invocations."""
        echo(f"[diffdass] stage: {name}")
        run.position = f"stage {name}"
        t = time.perf_counter()
        res = fn()
        times[name] = times.get(name, 0.0) + (time.perf_counter() - t)
        write_json(out / "stage_seconds.json", times)
        return res

    if cfg.benchmark.enabled:
        from diffdass.data.benchmark import generate_benchmark

        root = Path(cfg.benchmark.root or out / "data")
        bench = cfg.benchmark.config()
        stage("benchmark", lambda: generate_benchmark(root, config=bench, progress=progress))
    scan_data(cfg)
    with run.open(cfg, (), allow=allow):
        run.resume_point = "the finished stages and the interrupted stage's last checkpoint"
        run.start()
        try:
            if calibrate_only:
                return _run_calibration(cfg, out, stage, progress)
            return _run_stages(cfg, out, run, stage, times, progress)
        finally:
            # the stages keep their checkpoints in their own folders: the pipeline folder's
            # own checkpoints/ (every run folder gets one) stays empty
            with contextlib.suppress(OSError):
                run.ckpt_dir.rmdir()  # only when empty


def _run_stages(cfg: PipelineConfig, out: Path, run: RunDir, stage, times, progress) -> dict:
    """Every enabled method of the registry in run order, then the stage metrics, the
    summary and the report; ``stage(name, fn)`` times one stage into ``times``."""
    ctx = Context(cfg, out, stage, lambda m: run.logger.info(m), progress)
    results = {}
    for method in METHODS:
        if method.enabled(cfg):
            res = method.run(ctx)
            if res is not None:  # e.g. AdaBN of a segmenter without BatchNorm
                results[method.key] = res
    stage_res = None
    if cfg.ptl is not None and cfg.stage_metrics.enabled:
        g0 = ctx.final("source_only")
        stage_res = stage("stage_metrics", lambda: stage_metrics(cfg, out, g0))
    rows = {key: results[key] for key in display_order(results)}
    main_set = next(iter(rows["source_only"]["miou"]))
    calib = ctx.extras.get("calibration")
    oracle_res = rows.get("oracle")
    summary = {
        "class_set": main_set,
        "miou": {name: res["miou"][main_set] for name, res in rows.items()},
        "miou_all_sets": {
            name: res["miou"] for name, res in rows.items() if BY_KEY[name].role != "reference"
        },
        "methods": describe(rows),
        "checkpoint_kind": "last",
        "seconds": times,
        "table4": _table4(times, rows),
        **({"stage_metrics": stage_res} if stage_res else {}),
        **({"calibration": calibration_summary(calib)} if calib else {}),
        **({"oracle_per_class_iou": oracle_res["per_class_iou"]} if oracle_res else {}),
        **{k: v for k, v in ctx.extras.get("cicld_probes", {}).items() if k != "images"},
    }
    summary_path = out / "summary.json"
    write_json(summary_path, summary)
    stage("report", lambda: _report(out, summary))
    summary["seconds"] = times
    write_json(summary_path, summary)
    _log_evaluations(cfg, out, rows)
    return summary


def _log_evaluations(cfg: PipelineConfig, out: Path, rows: dict[str, dict]) -> None:
    """Every model's target-val mIoU, per class set, as ``eval/mIoU_<set>/<method>`` in
    ``<out>/tensorboard`` (step 0; a re-run replaces the points)."""
    from diffdass.training.tracking import Tracker

    values = {
        f"eval/mIoU_{name}/{key}": miou
        for key, res in rows.items()
        for name, miou in res["miou"].items()
    }
    with Tracker(out, cfg.logging, purge_step=0, name="run") as tracker:
        tracker.scalars(values, 0)


def _run_calibration(cfg: PipelineConfig, out: Path, stage, progress) -> dict:
    """The stages of ``diffdass calibrate-guidance``."""
    if cfg.ptl is None or cfg.ptl.guidance.kind == "none":
        raise ConfigError("nothing to calibrate: the config has no guided PTL (ptl.guidance.kind)")
    stage("source_only", lambda: train_segmenter(cfg.source_only, out / "source_only", progress))
    g0 = out / "source_only" / "checkpoints" / "final.safetensors"
    stage("ddpm", lambda: train_ddpm(cfg.ddpm, out / "ddpm", progress))
    stage("judge", lambda: train_segmenter(judge_config(cfg), out / "judge", progress))
    return stage("calibration", lambda: calibrate(cfg, out, g0, progress))


def _table4(times: dict[str, float], rows: dict[str, dict]) -> dict:
    """The paper's Table 4 for this run: training time of the stages behind g_N
    (``training_seconds``), and for every trained model its training time and inference
    time per image (batch 1)."""
    train = {k: times[k] for k in BY_KEY["ptl"].trains if k in times}
    models = [m.key for m in METHODS if m.trains and m.key in rows]
    return {
        "training_seconds": train | {"total": sum(train.values())},
        "inference_ms_per_image": {m: rows[m].get("inference_ms_per_image") for m in models},
        "model_training_seconds": {
            m: sum(times.get(s, 0.0) for s in BY_KEY[m].trains) for m in models
        },
    }


def _report(out: Path, summary: dict) -> Path:
    from diffdass.evaluation.report import write_report

    return write_report(out)
