"""``diffdass launch-plan CONFIG``: a pipeline's long stages as stand-alone commands for
``accelerate launch`` (several GPUs), with the stage configs ``diffdass run`` would use.

``diffdass run`` computes on one process. Its long stages are the commands ``train-seg``,
``train-ddpm`` and ``ptl``, each of which runs on N processes. The plan writes each stage's
config exactly as the pipeline fills it (data roots, seed, device, g_0's checkpoint, the
calibrated guidance strength) into ``DIR/<stage>.yaml`` and lists the commands in order, each
writing into the pipeline's own run folder (``<out>/<stage>``). A later one-process
``diffdass run CONFIG`` finds those stages finished (same config) and runs only the rest:
calibration, evaluations, AdaBN, stage metrics and the report.

The PTL stage needs the calibrated strength when ``ptl.guidance.scale`` is ``auto``: its
config is written once ``<out>/calibration/calibration.json`` exists (run
``diffdass calibrate-guidance CONFIG`` after the training stages, then the plan again).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from diffdass.pipeline.config import PipelineConfig, check_config, fill_config
from diffdass.pipeline.cost import batch_processes
from diffdass.pipeline.guidance import judge_config, needs_calibration, resolved_ptl
from diffdass.utils.config import ConfigError, dump_yaml
from diffdass.utils.io import atomic_write_text


@dataclass
class LaunchStage:
    """One stage of the plan: the command, its config (None: not ready yet) and run folder."""

    name: str
    command: str
    config: object | None
    out: Path
    waits_for: str = ""


def launch_stages(cfg: PipelineConfig) -> list[LaunchStage]:
    """The multi-process stages of ``cfg`` (filled) in the order they must run."""
    out = Path(cfg.out)
    stages = [LaunchStage("source_only", "train-seg", cfg.source_only, out / "source_only")]
    if cfg.oracle is not None:
        oracle = dataclasses.replace(cfg.source_only, source=cfg.oracle)
        stages.append(LaunchStage("oracle", "train-seg", oracle, out / "oracle"))
    if cfg.ptl is None:
        return stages
    stages.append(LaunchStage("ddpm", "train-ddpm", cfg.ddpm, out / "ddpm"))
    waits = ""
    if needs_calibration(cfg):
        stages.append(LaunchStage("judge", "train-seg", judge_config(cfg), out / "judge"))
        waits = "the guidance calibration"
    try:
        ptl = resolved_ptl(cfg, out)
    except ConfigError:
        ptl = None  # `scale: auto` before the calibration has run
    stages.append(LaunchStage("ptl", "ptl", ptl, out / "ptl", waits if ptl is None else ""))
    return stages


def write_plan(
    cfg: PipelineConfig, config_path: Path | None, dest: Path, processes: int
) -> list[str]:
    """Write the ready stage configs into ``dest``; return the plan's shell lines."""
    cfg = fill_config(cfg)
    check_config(cfg)
    dest.mkdir(parents=True, exist_ok=True)
    config_arg = f" {config_path}" if config_path else ""
    lines = [f"# the multi-process stages of `diffdass run{config_arg}`, in order"]
    if cfg.benchmark.enabled:
        root = Path(cfg.benchmark.root or Path(cfg.out) / "data")
        flags = " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in cfg.benchmark.config().to_dict().items()
        )
        lines.append(f"diffdass make-benchmark {root} {flags}   # the data `run` would generate")
    calibration_listed = False
    for s in launch_stages(cfg):
        if s.name == "ptl" and needs_calibration(cfg) and not calibration_listed:
            lines.append(
                f"diffdass calibrate-guidance{config_arg}   # one process; reuses the stages above"
            )
            calibration_listed = True
        if s.config is None:
            lines.append(
                f"# {s.name}: its config needs {s.waits_for}; run `diffdass launch-plan"
                f"{config_arg} -d {dest}` again after it, then:"
            )
            path = dest / f"{s.name}.yaml"
            lines.append(f"# {_launcher(s, processes)} {s.command} -c {path} -o {s.out}")
            continue
        path = dest / f"{s.name}.yaml"
        atomic_write_text(path, dump_yaml(s.config))
        lines.append(f"{_launcher(s, processes)} {s.command} -c {path} -o {s.out}")
    lines.append(
        f"diffdass run{config_arg}   # one process: finds the stages above finished, runs the rest"
    )
    return lines


def stage_processes(stage: LaunchStage, processes: int) -> int:
    """The processes a stage runs on: PTL on any number (translation is shared out by whole
    batches); a training stage on the largest count up to ``processes`` that divides its
    global batch (the batch is the one-process batch, so the result does not change)."""
    if stage.command == "ptl":
        return processes
    return batch_processes(stage.config.batch_size, processes)


def _launcher(stage: LaunchStage, processes: int) -> str:
    n = stage_processes(stage, processes) if stage.config is not None else processes
    if n == 1:
        return "diffdass"
    return f"accelerate launch --multi_gpu --num_processes {n} -m diffdass.cli.main"
