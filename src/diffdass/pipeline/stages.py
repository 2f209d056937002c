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

import dataclasses
import time
from pathlib import Path

from diffdass.adaptation.calibration import calibrate_guidance
from diffdass.adaptation.cicld import train_cicld
from diffdass.adaptation.dacs import train_dacs
from diffdass.adaptation.ddpm_training import train_ddpm
from diffdass.adaptation.ptl import run_ptl
from diffdass.adaptation.seg_training import TrainSegConfig, train_segmenter
from diffdass.adaptation.stage_metrics import measure_stages
from diffdass.data.folder import DomainSpec
from diffdass.pipeline.config import (
    EvalSpec,
    PipelineConfig,
    check_config,
    fill_config,
    scan_data,
)
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
        deps = _DEPENDENTS.get(section)
        if section == "ptl" and not key.startswith(_CALIBRATION_KEYS):
            deps = ("ptl", "stage_metrics")  # a PTL setting the calibration does not read
        return deps is not None and not any(started(s) for s in deps)

    return allow


def load_for_evaluation(ckpt: Path, device):
    """The inference model of a checkpoint: a CICLD model (:func:`load_cicld`) or a plain
    segmenter (:func:`load_segmenter`), told apart by the ``arch`` of its metadata."""
    from diffdass.models.checkpoint import load_segmenter
    from diffdass.utils.checkpoint import read_meta

    if read_meta(ckpt).get("arch") == "cicld":
        from diffdass.adaptation.cicld import load_cicld

        return load_cicld(ckpt, device)[0]
    return load_segmenter(ckpt, device)[0]


def evaluate_checkpoint(ckpt: Path, val: DomainSpec, ev: EvalSpec, out: Path, device: str) -> dict:
    """Score a segmenter (or CICLD) checkpoint on the labeled target split (cached in
    out/metrics.json)."""
    from diffdass.evaluation.evaluate import evaluate
    from diffdass.utils.device import resolve_device

    mpath = out / "metrics.json"
    if mpath.is_file() and mpath.stat().st_mtime >= ckpt.stat().st_mtime:
        return read_json(mpath)
    dev = resolve_device(device)
    model = load_for_evaluation(ckpt, dev)
    from diffdass.data.scan import scan_split

    ds = scan_split(val.root, val.split, "required").dataset()
    res = evaluate(
        model,
        ds,
        ev.class_sets,
        dev,
        ev.input_size,
        out / "predictions",
        ev.save_predictions,
        progress=False,
    )
    res |= {
        "checkpoint": str(ckpt),
        "checkpoint_kind": "last",
        "dataset": f"{val.root}:{val.split}",
    }
    write_json(mpath, res)
    return res


def adabn_baseline(cfg: PipelineConfig, g0: Path, out: Path, echo=print) -> dict | None:
    """AdaBN (no training): g_0 (or any segmenter checkpoint, e.g. g_N for AdaBN on top) with
    BatchNorm statistics re-estimated on the unlabeled target train images, scored like every
    other row. Cached: reruns only when the checkpoint changed. None for a segmenter without
    BatchNorm (nothing to re-estimate)."""
    import torch

    from diffdass.adaptation.adabn import adabn, batchnorm_layers
    from diffdass.data.transforms import Resize
    from diffdass.models.checkpoint import load_segmenter
    from diffdass.utils.checkpoint import read_meta, save_checkpoint
    from diffdass.utils.device import resolve_device

    ckpt = out / "checkpoints" / "final.safetensors"
    if not ckpt.is_file() or ckpt.stat().st_mtime < g0.stat().st_mtime:
        dev = resolve_device(cfg.device)
        model, _ = load_segmenter(g0, dev)
        if not batchnorm_layers(model):
            echo("AdaBN: the segmenter has no BatchNorm layer; baseline not applicable")
            return None
        size = cfg.evaluation.input_size
        tf = Resize(*size) if size else None
        from diffdass.data.scan import scan_split

        ds = scan_split(cfg.target.root, cfg.target.split, "none").dataset(tf)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=max(2, cfg.source_only.batch_size), shuffle=False
        )
        info = adabn(model, loader, dev)
        echo(f"AdaBN: {info['layers']} BatchNorm layers re-estimated on {info['images']} images")
        save_checkpoint(ckpt, {"model": model}, None, read_meta(g0) | {"adabn": info})
    return evaluate_checkpoint(ckpt, cfg.val, cfg.evaluation, out / "eval", cfg.device)


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

        b = cfg.benchmark
        root = Path(b.root or out / "data")
        stage(
            "benchmark",
            lambda: generate_benchmark(
                root,
                seed=b.seed,
                height=b.height,
                width=b.width,
                n_source=b.n_source,
                n_target_train=b.n_target_train,
                n_target_val=b.n_target_val,
                progress=progress,
            ),
        )
    scan_data(cfg)
    with run.open(cfg, (), allow=allow):
        run.resume_point = "the finished stages and the interrupted stage's last checkpoint"
        run.start()
        if calibrate_only:
            return _run_calibration(cfg, out, stage, progress)
        return _run_stages(cfg, out, run, stage, times, progress)


def _run_calibration(cfg: PipelineConfig, out: Path, stage, progress) -> dict:
    """The stages of ``diffdass calibrate-guidance``."""
    if cfg.ptl is None or cfg.ptl.guidance.kind == "none":
        raise ConfigError("nothing to calibrate: the config has no guided PTL (ptl.guidance.kind)")
    stage("source_only", lambda: train_segmenter(cfg.source_only, out / "source_only", progress))
    g0 = out / "source_only" / "checkpoints" / "final.safetensors"
    stage("ddpm", lambda: train_ddpm(cfg.ddpm, out / "ddpm", progress))
    stage("judge", lambda: train_segmenter(judge_config(cfg), out / "judge", progress))
    return stage("calibration", lambda: _calibrate(cfg, out, g0, progress))


def _run_stages(cfg: PipelineConfig, out: Path, run: RunDir, stage, times, progress) -> dict:
    """The stages after the benchmark; ``stage(name, fn)`` times one into ``times``."""
    summary_path = out / "summary.json"
    ev, dev = cfg.evaluation, cfg.device
    stage("source_only", lambda: train_segmenter(cfg.source_only, out / "source_only", progress))
    g0 = out / "source_only" / "checkpoints" / "final.safetensors"
    res0 = stage(
        "eval_source_only",
        lambda: evaluate_checkpoint(g0, cfg.val, ev, out / "source_only" / "eval", dev),
    )
    res_adabn = stage(
        "adabn", lambda: adabn_baseline(cfg, g0, out / "adabn", echo=lambda m: run.logger.info(m))
    )
    oracle_res = None
    if cfg.oracle is not None:
        ocfg = dataclasses.replace(cfg.source_only, source=cfg.oracle)
        stage("oracle", lambda: train_segmenter(ocfg, out / "oracle", progress))
        go = out / "oracle" / "checkpoints" / "final.safetensors"
        oracle_res = stage(
            "eval_oracle",
            lambda: evaluate_checkpoint(go, cfg.val, ev, out / "oracle" / "eval", dev),
        )
    res_ptl = res_ptl_bn = calib = None
    if cfg.ptl is not None:
        stage("ddpm", lambda: train_ddpm(cfg.ddpm, out / "ddpm", progress))
        if needs_calibration(cfg):
            stage("judge", lambda: train_segmenter(judge_config(cfg), out / "judge", progress))
            calib = stage("calibration", lambda: _calibrate(cfg, out, g0, progress))
        ptl_cfg = resolved_ptl(cfg, out)
        stage("ptl", lambda: run_ptl(ptl_cfg, out / "ptl", progress))
        res_ptl = stage("eval_ptl", lambda: _evaluate_stage(cfg, out, "ptl"))
        if cfg.evaluation.adabn_on_top:
            gN = out / "ptl" / "checkpoints" / "final.safetensors"
            res_ptl_bn = stage(
                "ptl_adabn",
                lambda: adabn_baseline(
                    cfg, gN, out / "ptl_adabn", echo=lambda m: run.logger.info(m)
                ),
            )
    res_cicld = None
    if cfg.cicld is not None:
        stage("cicld", lambda: train_cicld(cfg.cicld, out / "cicld", progress))
        res_cicld = stage("eval_cicld", lambda: _evaluate_stage(cfg, out, "cicld"))
    res_dacs = None
    if cfg.dacs is not None:
        stage("dacs", lambda: train_dacs(cfg.dacs, out / "dacs", progress))
        res_dacs = stage("eval_dacs", lambda: _evaluate_stage(cfg, out, "dacs"))
    stage_res = None
    if cfg.ptl is not None and cfg.stage_metrics.enabled:
        stage_res = stage("stage_metrics", lambda: _stage_metrics(cfg, out, g0))
    rows = {
        "source_only": res0,
        "adabn": res_adabn,
        "ptl": res_ptl,
        "ptl_adabn": res_ptl_bn,
        "cicld": res_cicld,
        "dacs": res_dacs,
        "oracle": oracle_res,
    }
    rows = {name: res for name, res in rows.items() if res is not None}
    main_set = next(iter(res0["miou"]))
    summary = {
        "class_set": main_set,
        "miou": {name: res["miou"][main_set] for name, res in rows.items()},
        "miou_all_sets": {name: res["miou"] for name, res in rows.items() if name != "oracle"},
        "checkpoint_kind": "last",
        "seconds": times,
        "table4": _table4(times, rows),
        **({"stage_metrics": stage_res} if stage_res else {}),
        **({"calibration": _calibration_summary(calib)} if calib else {}),
        **({"oracle_per_class_iou": oracle_res["per_class_iou"]} if oracle_res else {}),
    }
    write_json(summary_path, summary)
    stage("report", lambda: _report(out, summary))
    summary["seconds"] = times
    write_json(summary_path, summary)
    return summary


def _evaluate_stage(cfg: PipelineConfig, out: Path, name: str) -> dict:
    """Score stage ``name``'s final checkpoint on target val into ``out/<name>/eval``."""
    ckpt = out / name / "checkpoints" / "final.safetensors"
    return evaluate_checkpoint(ckpt, cfg.val, cfg.evaluation, out / name / "eval", cfg.device)


def needs_calibration(cfg: PipelineConfig) -> bool:
    """PTL guides with ``scale: auto``: the run trains a judge and calibrates the strength."""
    return cfg.ptl is not None and cfg.ptl.guidance.kind != "none" and cfg.ptl.guidance.is_auto


def judge_config(cfg: PipelineConfig) -> TrainSegConfig:
    """The judge: g_0's recipe and data with another seed (``calibration.judge_seed_offset``)
    and, if set, ``calibration.judge_iterations``; it never guides, so its consistency score
    of a translation is independent of the guidance."""
    c = cfg.calibration
    judge = dataclasses.replace(cfg.source_only, seed=cfg.seed + c.judge_seed_offset)
    if c.judge_iterations is not None:
        judge = dataclasses.replace(judge, iterations=c.judge_iterations)
    return judge


def calibration_depth(cfg: PipelineConfig) -> int:
    """The depth the strength is calibrated at: ``calibration.n``, else the deepest domain."""
    return cfg.calibration.n or cfg.ptl.levels()[-1]


def _calibrate(cfg: PipelineConfig, out: Path, g0: Path, progress: bool) -> dict:
    """The strength sweep (cached in ``out/calibration``; recomputed when g_0, the judge or
    the DDPM changed)."""
    from diffdass.utils.device import resolve_device

    dst = out / "calibration"
    res_path = dst / "calibration.json"
    judge = out / "judge" / "checkpoints" / "final.safetensors"
    ddpm = Path(cfg.ptl.ddpm)
    newest = max(p.stat().st_mtime for p in (g0, judge, ddpm))
    if res_path.is_file() and res_path.stat().st_mtime >= newest:
        return read_json(res_path)
    oracle = out / "oracle" / "checkpoints" / "final.safetensors"
    res = calibrate_guidance(
        source=(cfg.source.root, cfg.source.split),
        target=(cfg.target.root, cfg.target.split),
        ddpm=ddpm,
        guide=g0,
        judge=judge,
        oracle=oracle if cfg.oracle is not None and oracle.is_file() else None,
        guidance=cfg.ptl.guidance,
        sampler=cfg.ptl.sampler,
        n=calibration_depth(cfg),
        respace_steps=cfg.ptl.reverse_steps if cfg.ptl.domains == "spread" else None,
        spec=cfg.calibration,
        out=dst,
        seed=cfg.seed,
        device=resolve_device(cfg.device),
        progress=progress,
    )
    from diffdass.evaluation.report import calibration_plot
    from diffdass.utils.io import atomic_write_bytes

    atomic_write_bytes(dst / "curve.png", calibration_plot(res))
    return res


def resolved_ptl(cfg: PipelineConfig, out: Path):
    """``cfg.ptl`` with ``guidance.scale: auto`` replaced by the calibrated strength (read from
    ``out/calibration/calibration.json``); unchanged when the scale is a number."""
    if not needs_calibration(cfg):
        return cfg.ptl
    res_path = out / "calibration" / "calibration.json"
    if not res_path.is_file():
        raise ConfigError(
            f"guidance.scale is 'auto' but {res_path} does not exist: run the calibration "
            "first (`diffdass run` or `diffdass calibrate-guidance` on this config and folder)"
        )
    chosen = float(read_json(res_path)["chosen_strength"])
    guidance = dataclasses.replace(cfg.ptl.guidance, scale=chosen)
    return dataclasses.replace(cfg.ptl, guidance=guidance)


def _calibration_summary(res: dict) -> dict:
    from diffdass.adaptation.calibration import won_back

    return {
        "chosen_strength": res["chosen_strength"],
        "n": res["n"],
        "won_back_judge": won_back(res, "judge"),
        "won_back_oracle": won_back(res, "oracle"),
        "points": res["points"],
        "source_consistency": res["source_consistency"],
    }


def _stage_metrics(cfg: PipelineConfig, out: Path, g0: Path) -> dict:
    """DDPM samples and translations along the PTL depths, scored against target val
    (cached in ``out/stage_metrics``; recomputed when the DDPM or g_0 changed)."""
    from diffdass.utils.device import resolve_device

    dst = out / "stage_metrics"
    ddpm = Path(cfg.ptl.ddpm)
    res_path = dst / "stage_metrics.json"
    calib = out / "calibration" / "calibration.json"
    newest = max(p.stat().st_mtime for p in (ddpm, g0, calib) if p.is_file())
    if res_path.is_file() and res_path.stat().st_mtime >= newest:
        return read_json(res_path)
    oracle = out / "oracle" / "checkpoints" / "final.safetensors"
    judge = out / "judge" / "checkpoints" / "final.safetensors"
    sm = cfg.stage_metrics
    return measure_stages(
        source=(cfg.source.root, cfg.source.split),
        target_train=(cfg.target.root, cfg.target.split),
        val=(cfg.val.root, cfg.val.split),
        ddpm=ddpm,
        g0=g0,
        oracle=oracle if cfg.oracle is not None and oracle.is_file() else None,
        judge=judge if needs_calibration(cfg) and judge.is_file() else None,
        levels=sm.levels or _spread(cfg.ptl.levels(), 4),
        respace_steps=cfg.ptl.reverse_steps if cfg.ptl.domains == "spread" else None,
        guidance=resolved_ptl(cfg, out).guidance,
        sampler=cfg.ptl.sampler,
        out=dst,
        images=sm.images,
        guided=sm.guided,
        seed=cfg.seed,
        device=resolve_device(cfg.device),
    )


def _spread(levels: list[int], k: int) -> list[int]:
    """Up to ``k`` of ``levels``, evenly spread, the last one included."""
    idx = {round(i * (len(levels) - 1) / max(k - 1, 1)) for i in range(k)}
    return [levels[i] for i in sorted(idx)]


#: the stages whose wall time trains each model (DACS and PTL continue g_0's training)
MODEL_STAGES = {
    "source_only": ("source_only",),
    "ptl": ("source_only", "ddpm", "ptl"),
    "cicld": ("cicld",),
    "dacs": ("source_only", "dacs"),
}


def _table4(times: dict[str, float], rows: dict[str, dict]) -> dict:
    """The paper's Table 4 for this run: training time of the stages behind g_N
    (``training_seconds``), and for every trained model its training time and inference
    time per image (batch 1)."""
    train = {k: times[k] for k in ("source_only", "ddpm", "ptl") if k in times}
    models = [m for m in MODEL_STAGES if m in rows]
    return {
        "training_seconds": train | {"total": sum(train.values())},
        "inference_ms_per_image": {m: rows[m].get("inference_ms_per_image") for m in models},
        "model_training_seconds": {
            m: sum(times.get(s, 0.0) for s in MODEL_STAGES[m]) for m in models
        },
    }


def _report(out: Path, summary: dict) -> Path:
    from diffdass.evaluation.report import write_report

    return write_report(out)
