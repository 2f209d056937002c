"""The run's guidance strength: the judge, the calibration sweep (``ptl.guidance.scale:
auto``), the PTL config with the chosen strength, and the per-stage measurements that use it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from diffdass.adaptation.calibration import calibrate_guidance
from diffdass.adaptation.seg_training import TrainSegConfig
from diffdass.adaptation.stage_metrics import measure_stages
from diffdass.pipeline.config import PipelineConfig
from diffdass.utils.config import ConfigError
from diffdass.utils.io import read_json


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


def calibrate(cfg: PipelineConfig, out: Path, g0: Path, progress: bool) -> dict:
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


def calibration_summary(res: dict) -> dict:
    from diffdass.adaptation.calibration import won_back

    return {
        "chosen_strength": res["chosen_strength"],
        "n": res["n"],
        "won_back_judge": won_back(res, "judge"),
        "won_back_oracle": won_back(res, "oracle"),
        "points": res["points"],
        "source_consistency": res["source_consistency"],
    }


def stage_metrics(cfg: PipelineConfig, out: Path, g0: Path) -> dict:
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
        levels=sm.levels or spread(cfg.ptl.levels(), 4),
        respace_steps=cfg.ptl.reverse_steps if cfg.ptl.domains == "spread" else None,
        guidance=resolved_ptl(cfg, out).guidance,
        sampler=cfg.ptl.sampler,
        out=dst,
        images=sm.images,
        guided=sm.guided,
        seed=cfg.seed,
        device=resolve_device(cfg.device),
    )


def spread(levels: list[int], k: int) -> list[int]:
    """Up to ``k`` of ``levels``, evenly spread, the last one included."""
    idx = {round(i * (len(levels) - 1) / max(k - 1, 1)) for i in range(k)}
    return [levels[i] for i in sorted(idx)]
