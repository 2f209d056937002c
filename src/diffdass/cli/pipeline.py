"""``diffdass run``: the whole method as one resumable job.

Stages (each skipped when its artifacts exist, so an interrupted run continues where it
stopped): built-in benchmark (if enabled) -> source-only g_0 -> AdaBN baseline (g_0 with
target BatchNorm statistics, no training) -> [target oracle] -> target DDPM -> PTL ->
evaluation of g_0, AdaBN and g_N on target val -> HTML report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from diffdass.adaptation.ptl import PTLConfig, run_ptl
from diffdass.adaptation.seg_training import TrainSegConfig, train_segmenter
from diffdass.adaptation.stage_metrics import StageMetricsSpec, measure_stages
from diffdass.data.folder import DomainSpec
from diffdass.diffusion.training import TrainDDPMConfig, train_ddpm
from diffdass.utils.config import ConfigError, validate_tree
from diffdass.utils.io import read_json, write_json
from diffdass.utils.run import RunDir

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "benchmark.yaml"


@dataclass
class BenchmarkSpec:
    """The built-in benchmark; when enabled, it provides source/target/val."""

    enabled: bool = False
    root: str = ""  # default: <out>/data
    seed: int = 0
    height: int = 64
    width: int = 128
    n_source: int = 400
    n_target_train: int = 400
    n_target_val: int = 100


@dataclass
class EvalSpec:
    class_sets: list[str] = field(default_factory=lambda: ["19"])
    input_size: list[int] | None = None  # feed [H, W]; logits upsampled to the label size
    save_predictions: int = 8


@dataclass
class PipelineConfig:
    out: str = "runs/benchmark"
    seed: int = 0
    device: str = "auto"
    benchmark: BenchmarkSpec = field(default_factory=BenchmarkSpec)
    source: DomainSpec = field(default_factory=DomainSpec)  # labeled source
    target: DomainSpec = field(default_factory=DomainSpec)  # unlabeled target (train)
    val: DomainSpec = field(default_factory=lambda: DomainSpec(split="val"))  # labeled target
    oracle: DomainSpec | None = None  # labeled target train split for an oracle (scale only)
    evaluation: EvalSpec = field(default_factory=EvalSpec)
    source_only: TrainSegConfig = field(default_factory=TrainSegConfig)
    ddpm: TrainDDPMConfig = field(default_factory=TrainDDPMConfig)
    ptl: PTLConfig = field(default_factory=PTLConfig)
    stage_metrics: StageMetricsSpec = field(default_factory=StageMetricsSpec)


def _fill(cfg: PipelineConfig) -> PipelineConfig:
    """Propagate the shared data sources, seed and device into every stage config."""
    out = Path(cfg.out)
    if cfg.benchmark.enabled:
        root = Path(cfg.benchmark.root or out / "data")
        cfg.source = DomainSpec(str(root / "source"), "train")
        cfg.target = DomainSpec(str(root / "target"), "train")
        cfg.val = DomainSpec(str(root / "target"), "val")
        if cfg.oracle is not None:
            cfg.oracle = DomainSpec(str(root / "target"), "train_oracle")
    for name in ("source", "target", "val"):
        if not getattr(cfg, name).root:
            raise ConfigError(f"{name}.root is required (or enable the built-in benchmark)")
    cfg.source_only.source = cfg.source
    cfg.ddpm.target = cfg.target
    cfg.ptl.source = cfg.source
    cfg.ptl.val = cfg.val
    cfg.ptl.class_sets = cfg.evaluation.class_sets
    cfg.ptl.eval_input_size = cfg.evaluation.input_size
    cfg.ptl.init = str(out / "source_only" / "checkpoints" / "final.safetensors")
    cfg.ptl.ddpm = str(out / "ddpm" / "checkpoints" / "final.safetensors")
    for stage in (cfg.source_only, cfg.ddpm, cfg.ptl):
        stage.seed = cfg.seed
        stage.device = cfg.device
    # the source split is shared: source_only.on_error decides for PTL's reads of it too
    cfg.ptl.on_error = cfg.source_only.on_error
    validate_tree(cfg.source_only)
    validate_tree(cfg.ddpm)
    validate_tree(cfg.ptl)
    return cfg


def check_config(cfg: PipelineConfig) -> None:
    """Every stage's settings that need no file, checked before any stage runs (``cfg`` as
    :func:`_fill` leaves it)."""
    from diffdass.adaptation.ptl import check_config as check_ptl

    check_ptl(cfg.ptl)
    if cfg.ptl.n_max > cfg.ddpm.num_timesteps:
        raise ConfigError(
            f"ptl.n_max {cfg.ptl.n_max} exceeds ddpm.num_timesteps {cfg.ddpm.num_timesteps}"
        )
    if cfg.evaluation.input_size is not None and (
        len(cfg.evaluation.input_size) != 2 or min(cfg.evaluation.input_size) <= 0
    ):
        raise ConfigError(
            f"evaluation.input_size: expected [H, W], got {cfg.evaluation.input_size}"
        )


def scan_data(cfg: PipelineConfig) -> dict:
    """Every split the stages will read, checked up front (diffdass.data.scan)."""
    from diffdass.data.scan import scan_split

    on_error = cfg.source_only.on_error
    scans = {
        "source": scan_split(cfg.source.root, cfg.source.split, "required", on_error),
        "target": scan_split(cfg.target.root, cfg.target.split, "none"),
        "val": scan_split(cfg.val.root, cfg.val.split, "required"),
    }
    if cfg.oracle is not None:
        scans["oracle"] = scan_split(cfg.oracle.root, cfg.oracle.split, "required", on_error)
    return scans


#: files that show a pipeline's stage started, and the stages that build on it: a section's
#: settings may change while neither it nor a stage after it has produced anything
_STAGE_OUTPUTS = {
    "source_only": ("source_only/checkpoints/*", "source_only/metrics.json"),
    "oracle": ("oracle/checkpoints/*", "oracle/metrics.json"),
    "adabn": ("adabn/checkpoints/*",),
    "ddpm": ("ddpm/checkpoints/*", "ddpm/metrics.json"),
    "ptl": ("ptl/checkpoints/*", "ptl/metrics.json"),
    "stage_metrics": ("stage_metrics/*.json",),
}
_DEPENDENTS = {
    "source_only": ("source_only", "oracle", "adabn", "ptl", "stage_metrics"),
    "ddpm": ("ddpm", "ptl", "stage_metrics"),
    "ptl": ("ptl", "stage_metrics"),
    "stage_metrics": ("stage_metrics",),
}
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
        section = diff.split(":", 1)[0].split(".", 1)[0]
        deps = _DEPENDENTS.get(section)
        return deps is not None and not any(started(s) for s in deps)

    return allow


def evaluate_checkpoint(ckpt: Path, val: DomainSpec, ev: EvalSpec, out: Path, device: str) -> dict:
    """Score a segmenter checkpoint on the labeled target split (cached in out/metrics.json)."""
    from diffdass.evaluation.evaluate import evaluate
    from diffdass.models.checkpoint import load_segmenter
    from diffdass.utils.device import resolve_device

    mpath = out / "metrics.json"
    if mpath.is_file() and mpath.stat().st_mtime >= ckpt.stat().st_mtime:
        return read_json(mpath)
    dev = resolve_device(device)
    model, _ = load_segmenter(ckpt, dev)
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
    """AdaBN (no training): g_0 with BatchNorm statistics re-estimated on the unlabeled target
    train images, scored like every other row. Cached: reruns only when g_0 changed. None for a
    segmenter without BatchNorm (nothing to re-estimate)."""
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


def run_pipeline(cfg: PipelineConfig, progress: bool = True, echo=print) -> dict:
    """Run every stage; returns the summary written to ``<out>/summary.json``.

    Before any stage runs, every stage's settings and every split the stages will read are
    checked, so a mistake fails in seconds, not after hours (docs/run_directories.md).
    """
    out = Path(cfg.out)
    cfg = _fill(cfg)
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
        return _run_stages(cfg, out, run, stage, times, progress)


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
        import dataclasses

        ocfg = dataclasses.replace(cfg.source_only, source=cfg.oracle)
        stage("oracle", lambda: train_segmenter(ocfg, out / "oracle", progress))
        go = out / "oracle" / "checkpoints" / "final.safetensors"
        oracle_res = stage(
            "eval_oracle",
            lambda: evaluate_checkpoint(go, cfg.val, ev, out / "oracle" / "eval", dev),
        )
    stage("ddpm", lambda: train_ddpm(cfg.ddpm, out / "ddpm", progress))
    stage("ptl", lambda: run_ptl(cfg.ptl, out / "ptl", progress))
    gN = out / "ptl" / "checkpoints" / "final.safetensors"
    resN = stage(
        "eval_ptl", lambda: evaluate_checkpoint(gN, cfg.val, ev, out / "ptl" / "eval", dev)
    )
    stage_res = None
    if cfg.stage_metrics.enabled:
        stage_res = stage("stage_metrics", lambda: _stage_metrics(cfg, out, g0))
    main_set = next(iter(resN["miou"]))
    summary = {
        "class_set": main_set,
        "miou": {
            "source_only": res0["miou"][main_set],
            **({"adabn": res_adabn["miou"][main_set]} if res_adabn else {}),
            "ptl": resN["miou"][main_set],
            **({"oracle": oracle_res["miou"][main_set]} if oracle_res else {}),
        },
        "miou_all_sets": {
            "source_only": res0["miou"],
            **({"adabn": res_adabn["miou"]} if res_adabn else {}),
            "ptl": resN["miou"],
        },
        "checkpoint_kind": "last",
        "seconds": times,
        "table4": _table4(times, res0, resN),
        **({"stage_metrics": stage_res} if stage_res else {}),
    }
    write_json(summary_path, summary)
    stage("report", lambda: _report(out, summary))
    summary["seconds"] = times
    write_json(summary_path, summary)
    return summary


def _stage_metrics(cfg: PipelineConfig, out: Path, g0: Path) -> dict:
    """DDPM samples and translations along the PTL depths, scored against target val
    (cached in ``out/stage_metrics``; recomputed when the DDPM or g_0 changed)."""
    from diffdass.utils.device import resolve_device

    dst = out / "stage_metrics"
    ddpm = Path(cfg.ptl.ddpm)
    res_path = dst / "stage_metrics.json"
    newest = max(ddpm.stat().st_mtime, g0.stat().st_mtime)
    if res_path.is_file() and res_path.stat().st_mtime >= newest:
        return read_json(res_path)
    oracle = out / "oracle" / "checkpoints" / "final.safetensors"
    sm = cfg.stage_metrics
    return measure_stages(
        source=(cfg.source.root, cfg.source.split),
        target_train=(cfg.target.root, cfg.target.split),
        val=(cfg.val.root, cfg.val.split),
        ddpm=ddpm,
        g0=g0,
        oracle=oracle if cfg.oracle is not None and oracle.is_file() else None,
        levels=sm.levels or _spread(cfg.ptl.levels(), 4),
        respace_steps=cfg.ptl.reverse_steps if cfg.ptl.domains == "spread" else None,
        guidance=cfg.ptl.guidance,
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


def _table4(times: dict[str, float], res0: dict, resN: dict) -> dict:
    """The paper's Table 4 for this run: training time of each stage, inference time, mIoU."""
    train = {k: times[k] for k in ("source_only", "ddpm", "ptl") if k in times}
    return {
        "training_seconds": train | {"total": sum(train.values())},
        "inference_ms_per_image": {
            "source_only": res0.get("inference_ms_per_image"),
            "ptl": resN.get("inference_ms_per_image"),
        },
    }


def _report(out: Path, summary: dict) -> Path:
    from diffdass.evaluation.report import write_report

    return write_report(out)
