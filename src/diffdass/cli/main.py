"""``diffdass``: every stage of the toolkit as a subcommand.

Each subcommand that takes a config reads it as its positional ``CONFIG`` (``--config FILE``
says the same), any key can be overridden with ``--set section.key=value``, and the most
common keys have their own flags. ``diffdass config show`` prints a resolved pipeline config. Every run
directory receives the resolved config, the git revision, a log, metrics JSON and
safetensors checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Annotated

import typer

from diffdass.cli.common import (
    ConfigArg,
    ConfigOpt,
    PipelineConfigArg,
    QuietOpt,
    SetOpt,
    check_evaluate_out,
    config_path,
    friendly_errors,
    replace_folder,
)
from diffdass.cli.flags import flag_values
from diffdass.utils.config import ConfigError, build_config

app = typer.Typer(
    name="diffdass",
    help=(
        "Domain-adaptive semantic segmentation with two methods: label-guided diffusion "
        "translation with progressive translation learning (PTL; Peng et al., ICCV 2023) and "
        "CICLD, conditional and inter-coder connected latent diffusion (Yu, Sun, Luo). "
        "Run `diffdass run` for the whole pipeline on the built-in benchmark."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _global_options(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            envvar="DIFFDASS_DEBUG",
            help="Show the full traceback of an error instead of a one-line message"
            " (goes before the command: diffdass --debug train-seg ...).",
        ),
    ] = False,
):
    # cli.common.friendly_errors reads ``debug`` from the root of the context that typer
    # hands to every command. SIGTERM (what cluster schedulers send before killing a job)
    # stops a command like Ctrl-C: the stage logs where it stopped and how it resumes.
    import signal

    def _terminate(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _terminate)


@app.command("make-benchmark")
@friendly_errors
def make_benchmark(
    out: Annotated[
        Path,
        typer.Argument(
            help="Output root (gets source/ and target/ folder datasets).", metavar="OUT"
        ),
    ],
    seed: Annotated[int, typer.Option(help="Generator seed; same seed, same files.")] = 0,
    height: Annotated[int, typer.Option(help="Image height (64 for CPU, 256 for GPU).")] = 64,
    width: Annotated[int, typer.Option(help="Image width (128 for CPU, 512 for GPU).")] = 128,
    n_source: Annotated[int | None, typer.Option(help="Labeled source training images.")] = None,
    n_target_train: Annotated[
        int | None, typer.Option(help="Unlabeled target training images.")
    ] = None,
    n_target_val: Annotated[
        int | None, typer.Option(help="Labeled target validation images.")
    ] = None,
):
    """Generate the built-in synthetic->photo-textured street benchmark (no network needed)."""
    from diffdass.data.benchmark import BenchmarkConfig, generate_benchmark

    kw = {"seed": seed, "height": height, "width": width}
    for k, v in (
        ("n_source", n_source),
        ("n_target_train", n_target_train),
        ("n_target_val", n_target_val),
    ):
        if v is not None:
            kw[k] = v
    summary = generate_benchmark(out, **_bench_kwargs(BenchmarkConfig, kw))
    typer.echo(json.dumps(summary, indent=2, default=str))


def _bench_kwargs(cls, kw):
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in kw.items() if k in names}


@app.command()
@friendly_errors
def prepare(
    dataset: Annotated[str, typer.Argument(help="gta5 | synthia | cityscapes", metavar="DATASET")],
    root: Annotated[
        Path, typer.Argument(help="Root of the dataset as downloaded (see README).", metavar="ROOT")
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="Output folder-format root.", show_default="ROOT/diffdass"),
    ] = None,
    on_error: Annotated[
        str, typer.Option(help="raise | skip (log and skip bad samples).")
    ] = "raise",
    on_mismatch: Annotated[
        str, typer.Option(help="Image/label size mismatch: error | resize.")
    ] = "error",
):
    """Convert GTA5 / SYNTHIA / Cityscapes labels to train-id PNGs in the folder format (re-runnable)."""
    from diffdass.data.prepare import prepare_dataset

    summary = prepare_dataset(dataset, root, out=out, on_error=on_error, on_mismatch=on_mismatch)
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command("train-seg")
@friendly_errors
def train_seg(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (resumed if it exists).")],
    config: ConfigArg = None,
    config_option: ConfigOpt = None,
    sets: SetOpt = None,
    source_root: Annotated[str | None, typer.Option(help="Labeled folder dataset root.")] = None,
    source_split: Annotated[str | None, typer.Option(help="Split of the source root.")] = None,
    arch: Annotated[
        str | None, typer.Option(help="Segmenter architecture (see `diffdass models`).")
    ] = None,
    pretrained: Annotated[
        str | None, typer.Option(help="none | imagenet | PATH to backbone weights.")
    ] = None,
    iterations: Annotated[
        int | None, typer.Option(help="Training iterations (paper: 20000).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size (paper: 2).")] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            help="Base learning rate (paper, SGD: 2.5e-4; `--set optim.name=adamw` for AdamW)."
        ),
    ] = None,
    noisy_masked: Annotated[
        float | None,
        typer.Option(help="Fraction of noisy+masked samples (appendix C; 0 disables)."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda[:N]")] = None,
    quiet: QuietOpt = False,
):
    """Source-only training: SGD or AdamW + poly decay, noisy-masked augmentation, resumable."""
    from diffdass.adaptation.seg_training import TrainSegConfig, train_segmenter

    config = config_path(config, config_option)
    cfg = build_config(TrainSegConfig, config, sets, flag_values("train-seg", locals()))
    metrics = train_segmenter(cfg, out, progress=not quiet)
    typer.echo(json.dumps(metrics, indent=2, default=str))


@app.command()
@friendly_errors
def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="Segmenter or CICLD checkpoint (.safetensors).")],
    root: Annotated[Path, typer.Option(help="Labeled folder dataset root.")],
    split: Annotated[str, typer.Option(help="Split to score.")] = "val",
    class_sets: Annotated[
        str, typer.Option(help="Comma list: 19,16,13 (Cityscapes subsets) or all.")
    ] = "19",
    input_size: Annotated[
        str | None, typer.Option(help="Feed images at HxW (e.g. 512x1024).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Directory for metrics.json and predictions/: a new folder, or one that"
            " holds an earlier evaluate output (replaced whole, never mixed). A run folder of"
            " another command, or a folder inside one, is refused."
        ),
    ] = None,
    save_predictions: Annotated[
        int, typer.Option(help="Colourised predictions to save (-1: all).")
    ] = 16,
    adabn: Annotated[
        str | None,
        typer.Option(
            help="ROOT[:SPLIT] of unlabeled images (split default: train): re-estimate the"
            " segmenter's BatchNorm statistics on them before scoring (AdaBN; the checkpoint"
            " file is not changed), e.g. --adabn DATA/target to score a model with target"
            " statistics."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N]")] = "auto",
    quiet: QuietOpt = False,
):
    """Confusion-matrix mIoU (19/16/13 classes), per-class IoU, colourised predictions."""
    from diffdass.data.scan import scan_split
    from diffdass.evaluation.evaluate import evaluate as run_eval
    from diffdass.pipeline.scoring import adapt_batchnorm, load_for_evaluation
    from diffdass.utils.device import resolve_device
    from diffdass.utils.io import write_json

    if out is not None:
        check_evaluate_out(out)
    size = _parse_size(input_size)
    ds = scan_split(root, split, "required").dataset()  # every file checked before the model runs
    bn_images = None
    if adabn is not None:
        bn_root, _, bn_split = adabn.partition(":")
        bn_images = scan_split(bn_root, bn_split or "train", "none").dataset()
    dev = resolve_device(device)
    model = load_for_evaluation(checkpoint, dev)  # a segmenter or a CICLD model
    adabn_info = None
    if bn_images is not None:
        adabn_info = adapt_batchnorm(model, bn_images, dev, f"--adabn {adabn}")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}") if out else None
    try:
        res = run_eval(
            model,
            ds,
            [s.strip() for s in class_sets.split(",") if s.strip()],
            dev,
            input_size=size,
            pred_dir=(tmp / "predictions") if tmp else None,
            n_save=save_predictions,
            progress=not quiet,
        )
        res["checkpoint"] = str(checkpoint)
        res["checkpoint_kind"] = "last"
        if adabn_info is not None:
            res["adabn"] = adabn_info | {"images_from": adabn}
        res["dataset"] = f"{root}:{split}"
        res["stage"] = "evaluate"
        if tmp:
            write_json(tmp / "metrics.json", res)
            replace_folder(tmp, out)
    except OSError as exc:  # name the output folder, not the temporary one
        if tmp is None:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(out)) from None
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    typer.echo(res["table"])
    typer.echo(json.dumps(res["miou"]))
    typer.echo(f"inference: {res['inference_ms_per_image']:.2f} ms/image (batch 1)")


@app.command()
@friendly_errors
def predict(
    images: Annotated[
        str,
        typer.Argument(
            help="A folder of images (searched recursively), one image, or a glob pattern such"
            " as 'photos/**/*.jpg' (quote it so that the shell leaves it alone).",
            metavar="IMAGES",
        ),
    ],
    checkpoint: Annotated[
        Path,
        typer.Option(help="Segmenter or CICLD checkpoint (.safetensors) written by diffdass."),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Output folder: labels/ (train-id PNGs) and overlays/ (class colours on the"
            " image), each with the input's relative file names (.png).",
        ),
    ],
    size: Annotated[
        str | None,
        typer.Option(
            "--size",
            "--input-size",
            help="Feed the model images resized to HxW (e.g. 512x1024); the outputs keep each"
            " image's own size.",
            show_default="each image's own size",
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="Images per forward pass (of one size, unless --size).")
    ] = 1,
    alpha: Annotated[float, typer.Option(help="Opacity of the class colours (0..1).")] = 0.5,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Predict again images whose outputs exist.", show_default=False
        ),
    ] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N]")] = "auto",
    quiet: QuietOpt = False,
):
    """Label maps and colour overlays for images without labels, from any checkpoint."""
    from diffdass.evaluation.predict import find_images, predict_images
    from diffdass.pipeline.scoring import load_for_evaluation
    from diffdass.utils.device import resolve_device

    input_size = _parse_size(size, "--size")
    find_images(images, exclude=out)  # no matching image: an error before the model loads
    dev = resolve_device(device)
    model = load_for_evaluation(checkpoint, dev)  # a segmenter or a CICLD model
    res = predict_images(
        model, images, out, dev, input_size, batch_size, alpha, overwrite, progress=not quiet
    )
    typer.echo(
        f"{res['images']} images: {res['written']} predicted, {res['skipped']} already done"
        f" (--overwrite predicts them again); labels: {res['labels']}, overlays:"
        f" {res['overlays']}"
    )


def _parse_size(s: str | None, flag: str = "--input-size"):
    if not s:
        return None
    try:
        h, w = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise ValueError(f"{flag} expects HxW like 512x1024, got {s!r}") from None
    if h <= 0 or w <= 0:
        raise ConfigError(f"{flag}: both sizes must be positive, got {s!r}")
    return (h, w)


@app.command("train-ddpm")
@friendly_errors
def train_ddpm_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (resumed if it exists).")],
    config: ConfigArg = None,
    config_option: ConfigOpt = None,
    sets: SetOpt = None,
    target_root: Annotated[
        str | None, typer.Option(help="Target folder dataset root (labels unused).")
    ] = None,
    target_split: Annotated[str | None, typer.Option(help="Split of the target root.")] = None,
    unet: Annotated[str | None, typer.Option(help="UNet preset: tiny | small | ddpm256.")] = None,
    iterations: Annotated[int | None, typer.Option(help="Training iterations.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size (paper: 4).")] = None,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate (paper: 2e-5).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda[:N]")] = None,
    quiet: QuietOpt = False,
):
    """Train the unconditional target-domain DDPM (EMA, sample grids, resumable)."""
    from diffdass.adaptation.ddpm_training import TrainDDPMConfig, train_ddpm

    config = config_path(config, config_option)
    cfg = build_config(TrainDDPMConfig, config, sets, flag_values("train-ddpm", locals()))
    typer.echo(json.dumps(train_ddpm(cfg, out, progress=not quiet), indent=2, default=str))


@app.command()
@friendly_errors
def translate(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output directory (dataset/ and previews/).")
    ],
    config: ConfigArg = None,
    config_option: ConfigOpt = None,
    sets: SetOpt = None,
    source_root: Annotated[
        str | None, typer.Option(help="Labeled source folder dataset root.")
    ] = None,
    source_split: Annotated[str | None, typer.Option(help="Split to translate.")] = None,
    ddpm: Annotated[str | None, typer.Option(help="train-ddpm checkpoint.")] = None,
    segmenter: Annotated[
        str | None, typer.Option(help="Segmenter checkpoint for guidance.")
    ] = None,
    n: Annotated[int | None, typer.Option("--n", help="Diffusion depth n (steps).")] = None,
    guidance: Annotated[str | None, typer.Option(help="none | gsg | lcg | sgg")] = None,
    scale: Annotated[
        float | None,
        typer.Option(
            help="Guidance strength: the classifier scale per pixel with the default reduction"
            " `sum` (choose it with `diffdass calibrate-guidance`); the paper's lambda = 80"
            " goes with `--set guidance.reduction=mean`."
        ),
    ] = None,
    arrangement: Annotated[
        str | None, typer.Option(help="alternate | lcg_then_gsg | gsg_then_lcg | random")
    ] = None,
    lcg_mode: Annotated[str | None, typer.Option(help="batched | loop | single_pass")] = None,
    respace_steps: Annotated[
        int | None, typer.Option(help="Reverse in this many model calls.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Translate only the first N images.")] = None,
    score_with: Annotated[
        Path | None, typer.Option(help="Segmenter checkpoint for the label-consistency score.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda[:N]")] = None,
    quiet: QuietOpt = False,
):
    """Translate a labeled source split with the target DDPM and semantic gradient guidance."""
    from diffdass.adaptation.translation import TranslateConfig, translate_dataset

    config = config_path(config, config_option)
    cfg = build_config(TranslateConfig, config, sets, flag_values("translate", locals()))
    res = translate_dataset(cfg, out, progress=not quiet)
    if score_with is not None:
        from diffdass.evaluation.consistency import label_consistency

        res["label_consistency"] = label_consistency(
            score_with, Path(res["dataset"]), cfg.source.split, cfg.device
        )
        from diffdass.utils.io import write_json

        write_json(out / "metrics.json", res)
    typer.echo(json.dumps(res, indent=2, default=str))


@app.command()
@friendly_errors
def ptl(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (resumed if it exists).")],
    config: ConfigArg = None,
    config_option: ConfigOpt = None,
    sets: SetOpt = None,
    source_root: Annotated[
        str | None, typer.Option(help="Labeled source folder dataset root.")
    ] = None,
    init: Annotated[str | None, typer.Option(help="g_0 checkpoint (train-seg).")] = None,
    ddpm: Annotated[str | None, typer.Option(help="Target DDPM checkpoint (train-ddpm).")] = None,
    n_max: Annotated[int | None, typer.Option(help="N: deepest domain (paper: 600).")] = None,
    domains: Annotated[str | None, typer.Option(help="every (paper) | spread")] = None,
    num_domains: Annotated[int | None, typer.Option(help="K domains for 'spread'.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda[:N]")] = None,
    quiet: QuietOpt = False,
):
    """Progressive Translation Learning: walk domains n = 1..N, fine-tuning g on each."""
    from diffdass.adaptation.ptl import PTLConfig, run_ptl

    config = config_path(config, config_option)
    cfg = build_config(PTLConfig, config, sets, flag_values("ptl", locals()))
    typer.echo(json.dumps(run_ptl(cfg, out, progress=not quiet), indent=2, default=str))


#: the options of the commands that run a pipeline config (run, calibrate-guidance)
PipelineOut = Annotated[str | None, typer.Option("--out", "-o", help="Output directory.")]
PipelineSeed = Annotated[int | None, typer.Option(help="Random seed of every stage.")]
PipelineDevice = Annotated[str | None, typer.Option(help="auto | cpu | cuda[:N]")]
PipelineQuiet = Annotated[
    bool, typer.Option("--quiet", help="No progress bars.", show_default=False)
]


@app.command()
@friendly_errors
def run(
    config: PipelineConfigArg = None,
    config_option: ConfigOpt = None,
    sets: SetOpt = None,
    out: PipelineOut = None,
    seed: PipelineSeed = None,
    device: PipelineDevice = None,
    quiet: PipelineQuiet = False,
):
    """The whole pipeline: benchmark (if enabled) -> source-only -> DDPM -> PTL -> evaluation -> report.

    With `ptl.guidance.scale: auto` (every shipped config) a judge model is trained and the
    guidance strength is calibrated without target labels before PTL (see
    `diffdass calibrate-guidance`). Optional config sections add stages: `cicld` (CICLD) and
    `dacs` (the DACS baseline, from g_0); `ptl: null` leaves out the DDPM and PTL (e.g.
    configs/cicld_benchmark.yaml). Stages whose outputs exist are reused, so re-running
    continues an interrupted job; one process at a time may write an output folder.
    """
    from diffdass.pipeline.config import load_pipeline_config
    from diffdass.pipeline.stages import run_pipeline
    from diffdass.pipeline.summary import summary_lines

    config = config_path(config, config_option)
    cfg = load_pipeline_config(config, sets, **flag_values("run", locals()))
    summary = run_pipeline(cfg, progress=not quiet, echo=typer.echo)
    for line in summary_lines(summary):
        typer.echo(line)
    typer.echo(f"report: {Path(cfg.out) / 'report.html'}")


@app.command("calibrate-guidance")
@friendly_errors
def calibrate_guidance(
    config: PipelineConfigArg = None,
    config_option: ConfigOpt = None,
    sets: SetOpt = None,
    out: PipelineOut = None,
    seed: PipelineSeed = None,
    device: PipelineDevice = None,
    quiet: PipelineQuiet = False,
):
    """Choose the guidance strength for a domain pair without target labels.

    Trains (or reuses, in the run folder) g_0, the target DDPM and a judge (g_0's recipe with
    another seed), translates a few dozen source images at the deepest PTL depth for each
    strength of `calibration.strengths`, scores label consistency with the judge and the
    patch distance to unlabeled target images, and picks the knee (docs/translation.md).
    Writes <out>/calibration/calibration.json and curve.png. `diffdass run` does the same by
    itself when `ptl.guidance.scale: auto`; a later run on the same folder reuses all of it.
    """
    from diffdass.pipeline.config import load_pipeline_config
    from diffdass.pipeline.stages import run_pipeline
    from diffdass.pipeline.summary import calibration_lines

    config = config_path(config, config_option)
    cfg = load_pipeline_config(config, sets, **flag_values("calibrate-guidance", locals()))
    res = run_pipeline(cfg, progress=not quiet, echo=typer.echo, calibrate_only=True)
    for line in calibration_lines(res):
        typer.echo(line)
    cfg_name = str(config) if config else "(the built-in benchmark)"
    typer.echo(
        f"ptl.guidance.scale: {res['chosen_strength']:g}   "
        f"# chosen by: diffdass calibrate-guidance {cfg_name} (reduction {res['reduction']})"
    )
    typer.echo(f"curve: {Path(cfg.out) / 'calibration' / 'curve.png'}")


@app.command()
@friendly_errors
def ablate(
    config: PipelineConfigArg = None,
    config_option: ConfigOpt = None,
    sets: SetOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path(
        "runs/ablation"
    ),
    rows: Annotated[
        str,
        typer.Option(
            help="Comma list of groups: table2, table3, table5, appendix_c, control (g_0"
            " fine-tuned with PTL's budget on untranslated source images), options (the"
            " toolkit's sampler, guidance and BatchNorm options), sweep_n, sweep_lambda;"
            " CICLD's cicld_table1 (conditioning x inter-coder connection) and cicld_table2"
            " (adversarial loss), which need a config with a `cicld` section."
        ),
    ] = "table2,table3,table5,appendix_c",
    seeds: Annotated[str, typer.Option(help="Comma list of seeds.")] = "0,1,2",
    sweep_n: Annotated[str, typer.Option(help="N values for sweep_n (Fig. 5).")] = "100,200,400",
    sweep_lambda: Annotated[
        str,
        typer.Option(
            help="Guidance strengths (ptl.guidance.scale, in the config's reduction units) for"
            " sweep_lambda (Fig. 5)."
        ),
    ] = "0,20,80,200",
    reuse_run: Annotated[
        Path | None,
        typer.Option(help="A finished `diffdass run` dir of the same config: reused for its seed."),
    ] = None,
    only: Annotated[
        str,
        typer.Option(
            help="Comma list of label fragments: run only the rows whose 'group: name'"
            " contains one (e.g. 'table2: (a)'); the shared rows always run."
        ),
    ] = "",
    rows_file: Annotated[
        Path | None,
        typer.Option(
            help="A YAML file of row groups of your own (the format of the shipped"
            " diffdass/configs/ablation_rows.yaml); name its groups in --rows."
        ),
    ] = None,
    quiet: PipelineQuiet = False,
):
    """Re-run the paper's ablations (Tables 2, 3, 5, appendix C, Fig. 5) over seeds.

    Writes OUT/ablation.md (mean, std, per-seed target mIoU and the paired difference to the
    full method per row), OUT/ablation.json, and OUT/fig5_sweeps.png when sweeps were run.
    Rows whose training is identical to an earlier one (the full method appears in four
    tables) are computed once; re-running continues an interrupted ablation.
    """
    from diffdass.pipeline.ablate import run_ablation
    from diffdass.pipeline.config import load_pipeline_config

    cfg = load_pipeline_config(config_path(config, config_option), sets)

    def nums(s):
        return [float(v) for v in s.split(",") if v.strip()]

    md = run_ablation(
        cfg,
        out,
        [g.strip() for g in rows.split(",") if g.strip()],
        [int(v) for v in nums(seeds)],
        nums(sweep_n),
        nums(sweep_lambda),
        progress=not quiet,
        echo=typer.echo,
        reuse_run=reuse_run,
        only=[o.strip() for o in only.split(",") if o.strip()] or None,
        rows_file=rows_file,
    )
    typer.echo(md.read_text())


@app.command()
@friendly_errors
def estimate(
    config: PipelineConfigArg = None,
    config_option: ConfigOpt = None,
    sets: SetOpt = None,
    gpu: Annotated[
        str | None,
        typer.Option(help="h100 | h200 | a100 | cpu: count FLOPs, time nothing (no device)."),
    ] = None,
    processes: Annotated[int, typer.Option(help="N of the N-process column.")] = 8,
    steps: Annotated[int, typer.Option(help="Timed warm steps per unit (made even).")] = 4,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the estimate as JSON here.")
    ] = None,
    image_size: Annotated[
        tuple[int, int] | None, typer.Option(help="H W of the target images, if not on disk.")
    ] = None,
    val_images: Annotated[int | None, typer.Option(help="Labeled target val images.")] = None,
    target_images: Annotated[int | None, typer.Option(help="Unlabeled target images.")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda[:N]")] = None,
):
    """Hours of every stage of CONFIG on one device and on N, counted in FLOPs (no data on
    disk needed) and timed here, or converted with a named device's rate (--gpu)."""
    from diffdass.pipeline.estimate import run_estimate

    config = config_path(config, config_option)
    flags = flag_values("estimate", locals())
    if image_size is not None:
        flags["estimate.image_size"] = list(image_size)
    run_estimate(config, sets, processes, steps, json_out, flags, typer.echo, gpu=gpu)


@app.command("launch-plan")
@friendly_errors
def launch_plan(
    config: PipelineConfigArg = None,
    config_option: ConfigOpt = None,
    sets: SetOpt = None,
    dest: Annotated[Path, typer.Option("--dir", "-d", help="Folder for the stage configs.")] = Path(
        "launch"
    ),
    processes: Annotated[int, typer.Option(help="Processes (GPUs) per stage.")] = 8,
):
    """Write `run`'s stage configs; print its long stages' `accelerate launch` commands."""
    from diffdass.pipeline.config import load_pipeline_config
    from diffdass.pipeline.launch import write_plan

    config = config_path(config, config_option)
    cfg = load_pipeline_config(config, sets)
    for line in write_plan(cfg, config, dest, processes):
        typer.echo(line)


@app.command()
def models():
    """List the segmenter architectures and DDPM UNet presets."""
    from diffdass.models.factory import ARCH_DESCRIPTIONS
    from diffdass.models.unet import UNET_PARAM_COUNTS

    typer.echo("segmenters (--arch):")
    for name, desc in ARCH_DESCRIPTIONS.items():
        typer.echo(f"  {name:16s} {desc}")
    typer.echo("DDPM UNets (--unet):")
    for name, n in UNET_PARAM_COUNTS.items():
        typer.echo(f"  {name:16s} {n / 1e6:.1f}M parameters")


config_app = typer.Typer(
    help="Inspect configs: `diffdass config show CONFIG` prints the resolved pipeline config.",
    no_args_is_help=True,
)
app.add_typer(config_app, name="config")


@config_app.command("show")
@friendly_errors
def config_show(
    config: PipelineConfigArg = None,
    config_option: ConfigOpt = None,
    sets: SetOpt = None,
    out: PipelineOut = None,
    seed: PipelineSeed = None,
    device: PipelineDevice = None,
):
    """Print the resolved pipeline config as YAML: defaults < CONFIG < --set < flags, with the
    shared settings filled into every stage section, as `diffdass run` records it."""
    from diffdass.pipeline.config import fill_config, load_pipeline_config
    from diffdass.utils.config import dump_yaml

    config = config_path(config, config_option)
    cfg = load_pipeline_config(config, sets, **flag_values("run", locals()))
    typer.echo(dump_yaml(fill_config(cfg)), nl=False)


if __name__ == "__main__":
    app()
