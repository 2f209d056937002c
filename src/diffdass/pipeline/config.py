"""The configuration of ``diffdass run``: the sections, how the pipeline fills the shared
data roots, seed and device into every stage, and the checks that need no file."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from diffdass.adaptation.calibration import CalibrationSpec
from diffdass.adaptation.cicld import CICLDConfig
from diffdass.adaptation.config import SegModelConfig
from diffdass.adaptation.dacs import DACSConfig
from diffdass.adaptation.ddpm_training import TrainDDPMConfig
from diffdass.adaptation.ptl import PTLConfig
from diffdass.adaptation.seg_training import TrainSegConfig
from diffdass.adaptation.stage_metrics import StageMetricsSpec
from diffdass.data.benchmark.writer import BenchmarkConfig
from diffdass.data.folder import DomainSpec
from diffdass.training.tracking import LoggingConfig
from diffdass.utils.config import ConfigError, build_config, validate_tree
from diffdass.utils.device import Amp

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "benchmark.yaml"


@dataclass
class BenchmarkSpec(BenchmarkConfig):
    """The built-in benchmark of a run: its seed and sizes (:class:`BenchmarkConfig`), and
    whether it provides the run's source/target/val (``enabled``) and where (``root``)."""

    enabled: bool = False
    root: str = ""  # default: <out>/data

    def config(self) -> BenchmarkConfig:
        """The generator's config (seed and sizes only)."""
        return BenchmarkConfig(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(BenchmarkConfig)}
        )


@dataclass
class EvalSpec:
    class_sets: list[str] = field(default_factory=lambda: ["19"])
    input_size: list[int] | None = None  # feed [H, W]; logits upsampled to the label size
    save_predictions: int = 8
    # beyond the paper: also score g_N with BatchNorm statistics re-estimated on the unlabeled
    # target images (AdaBN on top), the like-for-like comparison with the AdaBN baseline
    adabn_on_top: bool = False


@dataclass
class EstimateSpec:
    """The data sizes ``diffdass estimate`` counts with when the data is not on disk (the
    built-in benchmark and data on disk say them; these keys win)."""

    image_size: list[int] | None = None  # [H, W] of the target (val) images
    val_images: int | None = None  # labeled target images scored by every evaluation
    target_images: int | None = None  # unlabeled target train images (AdaBN)
    classes_present: int = 12  # classes per label image: LCG's passes per guided step


@dataclass
class PipelineConfig:
    out: str = "runs/benchmark"
    seed: int = 0
    device: str = "auto"
    # mixed precision of every stage (null: each stage's own `amp`, true by default = bf16 on
    # CUDA only); `bf16` also on the CPU (faster there, not bit-identical: docs/performance.md)
    amp: Amp | None = None
    # the training curves of every stage: TensorBoard event files in <stage>/tensorboard/
    # (and the evaluations in <out>/tensorboard/); `wandb: true` also logs to W&B
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    benchmark: BenchmarkSpec = field(default_factory=BenchmarkSpec)
    source: DomainSpec = field(default_factory=DomainSpec)  # labeled source
    target: DomainSpec = field(default_factory=DomainSpec)  # unlabeled target (train)
    val: DomainSpec = field(default_factory=lambda: DomainSpec(split="val"))  # labeled target
    oracle: DomainSpec | None = None  # labeled target train split for an oracle (scale only)
    evaluation: EvalSpec = field(default_factory=EvalSpec)
    source_only: TrainSegConfig = field(default_factory=TrainSegConfig)
    # the method of Peng et al.: the target DDPM, PTL and the per-stage measurements run
    # unless ``ptl: null`` (then the ``ddpm`` and ``stage_metrics`` sections are not used)
    ddpm: TrainDDPMConfig = field(default_factory=TrainDDPMConfig)
    ptl: PTLConfig | None = field(default_factory=PTLConfig)
    # how `ptl.guidance.scale: auto` is chosen (judge training and the strength sweep)
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    stage_metrics: StageMetricsSpec = field(default_factory=StageMetricsSpec)
    # CICLD (Yu et al.; docs/cicld.md): runs when the section is given (``cicld: {}`` for
    # the defaults); its source, target, seed, device and on_error come from the pipeline
    cicld: CICLDConfig | None = None
    # DACS baseline (adaptation/dacs.py): runs when given; it starts from g_0, so its
    # ``init`` and ``model`` are the source-only model's, set by the pipeline
    dacs: DACSConfig | None = None
    # data sizes for `diffdass estimate` without the data on disk (not used by `run`)
    estimate: EstimateSpec = field(default_factory=EstimateSpec)


def load_pipeline_config(
    config: str | Path | None, sets: list[str] | None = None, **flags
) -> PipelineConfig:
    """A run's config: defaults < YAML (default: the built-in benchmark) < ``--set`` strings
    < ``flags`` (None: not given). Stage sections are validated by :func:`fill_config`, once
    the data roots are known."""
    return build_config(PipelineConfig, config or DEFAULT_CONFIG, sets, flags, validate=False)


def _own(obj, attr: str, value, key: str, source: str) -> None:
    """Set a key the pipeline owns: ``value`` comes from ``source`` (a shared setting). A
    config that gives the key a different, non-default value is refused, never silently
    overridden (a config the pipeline filled before, e.g. a run's config.yaml, passes)."""
    current, default = getattr(obj, attr), getattr(type(obj)(), attr)
    if current != default and current != value:
        raise ConfigError(
            f"{key} is set by the pipeline from {source}; remove it from the config "
            f"(it says {current!r}, the pipeline would use {value!r})"
        )
    setattr(obj, attr, value)


def fill_config(cfg: PipelineConfig) -> PipelineConfig:
    """Share the data sources, seed, device, ``logging`` (and ``amp`` when given) with every
    stage config.

    The keys filled here belong to the pipeline: a stage section that sets one of them to
    something else is refused with a :class:`ConfigError` naming the shared setting to use.
    """
    out = Path(cfg.out)
    if cfg.benchmark.enabled:
        root = Path(cfg.benchmark.root or out / "data")
        bench = "the built-in benchmark (benchmark.enabled)"
        _own(cfg, "source", DomainSpec(str(root / "source"), "train"), "source", bench)
        _own(cfg, "target", DomainSpec(str(root / "target"), "train"), "target", bench)
        _own(cfg, "val", DomainSpec(str(root / "target"), "val"), "val", bench)
        if cfg.oracle is not None:
            oracle = DomainSpec(str(root / "target"), "train_oracle")
            if cfg.oracle.root and cfg.oracle != oracle:
                raise ConfigError(
                    f"oracle is set by the pipeline from {bench}; write `oracle: "
                    "{root: '', split: train_oracle}` to train the target oracle"
                )
            cfg.oracle = oracle
    for name in ("source", "target", "val"):
        if not getattr(cfg, name).root:
            raise ConfigError(f"{name}.root is required (or enable the built-in benchmark)")
    for name, stage in stage_sections(cfg).items():
        for key, (value, source) in _shared(cfg, name).items():
            if hasattr(stage, key):
                _own(stage, key, value, f"{name}.{key}", source)
    if cfg.amp is not None and cfg.ptl is not None:  # translation's forwards follow it too
        _own(cfg.ptl.guidance, "amp", cfg.amp, "ptl.guidance.amp", "`amp`")
    stages = stage_sections(cfg)
    for stage in stages.values():
        validate_tree(stage)
    return cfg


def stage_sections(cfg: PipelineConfig) -> dict[str, object]:
    """The stage configs a run trains with: every section with its own ``seed`` and
    ``device`` that is given (``ddpm`` only with ``ptl``: it serves PTL)."""
    out = {}
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if section is None or not dataclasses.is_dataclass(section):
            continue
        if {"seed", "device"} <= {x.name for x in dataclasses.fields(section)}:
            out[f.name] = section
    if cfg.ptl is None:
        out.pop("ddpm", None)
    return out


def _shared(cfg: PipelineConfig, name: str) -> dict[str, tuple[object, str]]:
    """The keys the pipeline owns in stage section ``name``, by field name: ``{key: (value,
    where it comes from)}``. A section gets each key it has; a new method's section needs no
    line here as long as its fields use these names."""
    out = Path(cfg.out)
    g0 = str(out / "source_only" / "checkpoints" / "final.safetensors")
    shared: dict[str, tuple[object, str]] = {
        "source": (cfg.source, "`source`"),
        "target": (cfg.target, "`target`"),
        "val": (cfg.val, "`val`"),
        "class_sets": (cfg.evaluation.class_sets, "`evaluation.class_sets`"),
        "eval_input_size": (cfg.evaluation.input_size, "`evaluation.input_size`"),
        "ddpm": (str(out / "ddpm" / "checkpoints" / "final.safetensors"), "the run's DDPM stage"),
        "seed": (cfg.seed, "`seed`"),
        "device": (cfg.device, "`device`"),
        "logging": (cfg.logging, "`logging`"),
    }
    if cfg.amp is not None:
        shared["amp"] = (cfg.amp, "`amp`")
    if name != "source_only":
        # a stage that starts from g_0 gets its weights (and a segmenter `model`, its
        # architecture); the source split is shared, so source_only.on_error decides for
        # every stage that reads it
        shared["init"] = (g0, "the run's source-only stage (g_0)")
        shared["on_error"] = (
            cfg.source_only.on_error,
            "`source_only.on_error` (the source split is shared)",
        )
        if isinstance(getattr(getattr(cfg, name), "model", None), SegModelConfig):
            model = dataclasses.replace(cfg.source_only.model)
            shared["model"] = (model, f"`source_only.model` ({name} continues g_0)")
    return shared


def check_config(cfg: PipelineConfig) -> None:
    """Every stage's settings that need no file, checked before any stage runs (``cfg`` as
    :func:`fill_config` leaves it)."""
    from diffdass.adaptation.ptl import check_config as check_ptl

    validate_tree(cfg.logging)
    if cfg.ptl is not None:
        check_ptl(cfg.ptl, allow_auto=True)
        validate_tree(cfg.calibration)
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
    if cfg.cicld is not None:
        _check_cicld_sizes(cfg)


def _check_cicld_sizes(cfg: PipelineConfig) -> None:
    """The image sizes CICLD will see that the config fixes (training crop/resize, evaluation
    input size, the built-in benchmark's size) are divisible by its total downsampling."""
    f = cfg.cicld.model.total_downsample()
    bench = [cfg.benchmark.height, cfg.benchmark.width] if cfg.benchmark.enabled else None
    sizes = {
        "cicld.aug (training)": cfg.cicld.aug.crop or cfg.cicld.aug.resize or bench,
        "evaluation.input_size": cfg.evaluation.input_size or bench,
    }
    for what, size in sizes.items():
        if size is not None and (size[0] % f or size[1] % f):
            raise ConfigError(
                f"{what}: CICLD sees {size[0]}x{size[1]} images, which must be divisible by "
                f"{f} (autoencoder x UNet downsampling of cicld.model)"
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
