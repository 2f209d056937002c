"""Label-guided translation of source images (paper Sec. 4.1-4.2) as a reusable stage.

``translate_batch`` wires a target DDPM, a segmenter and a guidance configuration into the
sampler of :mod:`diffdass.diffusion`; ``translate_dataset`` (``diffdass translate``) runs it
over a labeled split and writes the result in the folder format (translated images with
the *source* labels) plus preview sheets (source | label | baseline | guided).

Several processes (``accelerate launch``): ``translate_dataset`` gives batch b to process
b mod processes (each batch's noise depends only on (seed, b), so every image equals its
one-process translation); each process writes its own images, the main one the preview
sheet (rows gathered from all) and the metrics.

On CUDA the UNet, the segmenter and the images are channels-last and a batch's noise is
drawn on the GPU from a generator seeded with (seed, b) (:func:`batch_generator`); on the
CPU it is drawn on the CPU and nothing of this applies.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from diffdass.data.folder import DomainSpec, tensor_to_image
from diffdass.data.labels import colorize
from diffdass.data.transforms import Resize
from diffdass.diffusion.guidance import DEFAULT_SCALE, REDUCTIONS, build_guidance
from diffdass.diffusion.moments import EpsMoments
from diffdass.diffusion.sampler import SamplerOptions, as_eps_fn, translate
from diffdass.diffusion.schedule import DDPMSchedule
from diffdass.utils import distributed as dist
from diffdass.utils.config import ConfigError, validate_tree
from diffdass.utils.device import Amp, amp_dtype, autocast
from diffdass.utils.io import save_image
from diffdass.utils.progress import Progress
from diffdass.utils.rng import derive_seed, seeded_generator


@dataclass
class GuidanceConfig:
    """Semantic Gradient Guidance (paper Sec. 4.2)."""

    kind: str = "sgg"  # none (baseline phi^n) | gsg | lcg | sgg (LCG and GSG arranged)
    # The strength: a number, or "auto" (diffdass run / calibrate-guidance choose it without
    # target labels, docs/translation.md). With reduction "sum" it is the classifier scale of
    # guided diffusion, per pixel: the same value means the same pull at any resolution and
    # batch size. With "mean" it is the paper's lambda (80 in Peng et al.).
    scale: float | str = DEFAULT_SCALE
    arrangement: str = "alternate"  # alternate | lcg_then_gsg | gsg_then_lcg | random
    lcg_mode: str = "batched"  # batched | loop (naive reference) | single_pass (approximation)
    chunk_size: int = 16  # masked images per segmenter pass in batched LCG
    # How the pixel cross-entropies of L_ce are reduced (diffdass.diffusion.guidance):
    # "sum" (default): -log p(y | x_t), every pixel weighs 1 (resolution-free strength);
    # "image_mean": every labelled pixel weighs 1/|labelled pixels of its image| (the pull falls
    # as 1/pixels); "mean": the paper's Eq. 6 and 10 read literally (torch's mean CE per image,
    # per class region for LCG: a tiny region's pixels weigh up to |image| times more).
    reduction: str = "sum"
    # Where the segmenter reads the image: "x0" (default: the predicted clean image, gradient
    # mapped back by 1/sqrt(abar_t), no gradient through the UNet), "x_t" (the paper read
    # literally: the noisy sample, which no segmenter sees in training) or "x0_unet" (the
    # predicted clean image, exact gradient through the UNet; costs a UNet backward).
    # On the built-in benchmark "x0" wins back about twice the label consistency "x_t" does at
    # the same distance to the target (docs/translation.md).
    input: str = "x0"
    max_t: int | None = None  # guide only steps at model timestep <= max_t (None: every step)
    # Gaussian smoothing of every shift, std as a fraction of the image height (0: off); it
    # removes the high-frequency, guide-specific part of the gradient (docs/translation.md)
    smooth: float = 0.025
    # bf16 UNet and segmenter forwards: true on CUDA only, bf16 also on the CPU, false never
    amp: Amp = True

    def validate(self) -> None:
        if self.kind not in ("none", "gsg", "lcg", "sgg"):
            raise ConfigError(f"guidance.kind must be none|gsg|lcg|sgg, got {self.kind!r}")
        if self.arrangement not in ("alternate", "lcg_then_gsg", "gsg_then_lcg", "random"):
            raise ConfigError(f"guidance.arrangement: unknown {self.arrangement!r}")
        if self.lcg_mode not in ("batched", "loop", "single_pass"):
            raise ConfigError(f"guidance.lcg_mode: unknown {self.lcg_mode!r}")
        if self.reduction not in REDUCTIONS:
            raise ConfigError(
                f"guidance.reduction must be sum|image_mean|mean, got {self.reduction!r}"
            )
        if self.input not in ("x_t", "x0", "x0_unet"):
            raise ConfigError(f"guidance.input must be x_t|x0|x0_unet, got {self.input!r}")
        if not (isinstance(self.smooth, (int, float)) and 0 <= self.smooth < 1):
            raise ConfigError(
                f"guidance.smooth: a fraction of the image height in [0, 1), got {self.smooth!r}"
            )
        if self.chunk_size < 1:
            raise ConfigError(f"guidance.chunk_size must be >= 1, got {self.chunk_size}")
        if self.max_t is not None and self.max_t < 0:
            raise ConfigError("guidance.max_t must be >= 0 (or null for every step)")
        if isinstance(self.scale, str):
            text = self.scale.strip()
            if text != "auto":
                try:  # `--set ptl.guidance.scale=2` arrives as text (the field may be "auto")
                    self.scale = float(text)
                except ValueError:
                    raise ConfigError(
                        f"guidance.scale must be a number >= 0 or 'auto', got {self.scale!r}"
                    ) from None
        if not self.is_auto and not (math.isfinite(self.scale) and self.scale >= 0):
            raise ConfigError(f"guidance.scale must be a finite number >= 0, got {self.scale}")

    @property
    def is_auto(self) -> bool:
        """The strength is to be chosen by calibration (``scale: auto``)."""
        return isinstance(self.scale, str) and self.scale.strip() == "auto"

    def strength(self) -> float:
        """The numeric strength; ``auto`` must have been resolved (diffdass run does it)."""
        if self.is_auto:
            raise ConfigError(
                "guidance.scale is 'auto': run `diffdass calibrate-guidance CONFIG` (or let "
                "`diffdass run` calibrate) and set the number it prints"
            )
        return float(self.scale)


@dataclass
class SamplerConfig:
    """How translation takes its reverse steps (:class:`diffdass.diffusion.SamplerOptions`).

    The defaults are right at any number of reverse steps: the analytic variance (Analytic-DPM,
    from eps moments stored in the DDPM checkpoint) and the predicted x_0 clipped to [-1, 1].
    ``variance: fixed_large`` with ``clip_x0: false`` is the paper's literal sampler (exact only
    for full-length chains: with respaced steps it leaves noise in every image,
    docs/translation.md); ``solver: ddim`` is deterministic DDIM.
    """

    solver: str = "ancestral"  # ancestral | ddim
    variance: str = "analytic"  # analytic | fixed_large (paper) | fixed_small
    clip_x0: bool = True

    def validate(self) -> None:
        if self.solver not in ("ancestral", "ddim"):
            raise ConfigError(f"sampler.solver must be ancestral|ddim, got {self.solver!r}")
        if self.variance not in ("analytic", "fixed_large", "fixed_small"):
            raise ConfigError(
                f"sampler.variance must be analytic|fixed_large|fixed_small, got {self.variance!r}"
            )

    def needs_moments(self) -> bool:
        return self.solver == "ancestral" and self.variance == "analytic"

    def options(
        self, moments: EpsMoments | None = None, guidance: GuidanceConfig | None = None
    ) -> SamplerOptions:
        """The sampler options, with the guidance's input and threshold."""
        if self.needs_moments() and moments is None:
            raise ConfigError(
                "sampler.variance=analytic needs the DDPM's eps moments: this DDPM checkpoint "
                "has none (written by an older version). Re-run `diffdass train-ddpm` with the "
                "same config and output folder (it adds them without retraining), or set "
                "sampler.variance=fixed_small / sampler.solver=ddim"
            )
        return SamplerOptions(
            solver=self.solver,
            variance=self.variance,
            clip_x0=self.clip_x0,
            moments=moments,
            guidance_input=guidance.input if guidance else "x_t",
            guidance_max_t=guidance.max_t if guidance else None,
        )


def translate_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    n: int,
    unet: torch.nn.Module,
    schedule: DDPMSchedule,
    segmenter: torch.nn.Module | None,
    guidance: GuidanceConfig,
    generator: torch.Generator,
    respace_steps: int | None = None,
    seed: int = 0,
    sampler: SamplerConfig | None = None,
    moments: EpsMoments | None = None,
) -> torch.Tensor:
    """Translate one batch with ``n`` diffusion steps and guidance (``kind='none'``: phi^n).

    ``sampler`` defaults to :class:`SamplerConfig` (analytic variance: needs ``moments``, see
    :func:`diffdass.adaptation.ddpm_training.ddpm_moments`). The noise comes from
    ``generator``, on its device (:func:`batch_generator`). CUDA images are taken
    channels-last (the layout of the models there)."""
    opts = (sampler or SamplerConfig()).options(moments, guidance)
    if images.is_cuda:
        images = images.contiguous(memory_format=torch.channels_last)
    g = build_guidance(
        guidance.kind,
        segmenter,
        labels if guidance.kind != "none" else None,
        scale=guidance.strength() if guidance.kind != "none" else 0.0,
        arrangement=guidance.arrangement,
        lcg_mode=guidance.lcg_mode,
        chunk_size=guidance.chunk_size,
        seed=seed,
        amp_dtype=amp_dtype(images.device, guidance.amp),
        reduction=guidance.reduction,
        smooth=guidance.smooth,
    )
    with autocast(images.device, guidance.amp):
        out = translate(
            images,
            n,
            as_eps_fn(unet),
            schedule,
            guidance=g,
            generator=generator,
            respace_steps=respace_steps,
            options=opts,
        )
    return out.float().clamp(-1, 1)


@dataclass
class TranslateConfig:
    """``diffdass translate``: translate a labeled split at depth ``n``."""

    source: DomainSpec = field(default_factory=DomainSpec)
    ddpm: str = ""  # train-ddpm checkpoint
    segmenter: str = ""  # segmenter checkpoint guiding the translation (unless guidance.kind=none)
    n: int = 200  # diffusion/reverse steps (paper's final domain: 600)
    respace_steps: int | None = None  # reverse in fewer model calls (off: all n steps)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    resize: list[int] | None = None  # translate at [H, W] (default: the DDPM's resolution)
    batch_size: int = 8
    limit: int | None = None  # translate only the first `limit` images
    preview: int = 8  # images shown in the preview sheet (baseline translated too)
    seed: int = 0
    device: str = "auto"

    def validate(self) -> None:
        if not self.source.root:
            raise ConfigError("source.root is required")
        if not self.ddpm:
            raise ConfigError("ddpm: a train-ddpm checkpoint is required")
        if self.guidance.kind != "none" and not self.segmenter:
            raise ConfigError("segmenter: a checkpoint is required for guided translation")
        if self.n < 1:
            raise ConfigError("n must be >= 1")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.resize is not None and (len(self.resize) != 2 or min(self.resize) <= 0):
            raise ConfigError(f"resize: expected [H, W] with positive sizes, got {self.resize}")


def resize_pair(x0: torch.Tensor, y: torch.Tensor, size: tuple[int, int]):
    """Images resized to ``size`` (bilinear, antialiased, clamped to [-1, 1]) and their
    labels (nearest): a source batch at the translation size."""
    import torch.nn.functional as F

    x0 = F.interpolate(x0, size=size, mode="bilinear", align_corners=False, antialias=True)
    y = F.interpolate(y[:, None].float(), size=size, mode="nearest")[:, 0].long()
    return x0.clamp(-1, 1), y


def batch_generator(
    seed: int, batch_index: int, device: torch.device | str | None = None
) -> torch.Generator:
    """The generator of translation batch ``batch_index``: seeded from ``(seed, batch_index)``
    only (so a batch's noise does not depend on the number of processes), on ``device`` when
    that is CUDA and on the CPU otherwise (:func:`~diffdass.utils.rng.seeded_generator`)."""
    return seeded_generator(derive_seed(seed, 4242, batch_index), device)


def preview_sheet(rows: list[list[np.ndarray]]) -> np.ndarray:
    """Tile rows of equally sized RGB images with a 2-pixel white gutter."""
    h, w = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    sheet = np.full((len(rows) * (h + 2), ncol * (w + 2), 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            sheet[i * (h + 2) : i * (h + 2) + h, j * (w + 2) : j * (w + 2) + w] = im
    return sheet


#: what a translation may change when resumed (the translated images do not depend on them)
RESUME_IGNORE = ("limit", "preview")


def preflight(cfg: TranslateConfig):
    """The config, every file of the source split and the checkpoints, checked before
    anything is written. Returns the scan of the source split."""
    from diffdass.adaptation.ddpm_training import ddpm_moments, read_ddpm_meta
    from diffdass.data.scan import scan_split
    from diffdass.utils.checkpoint import read_meta

    validate_tree(cfg)
    scan = scan_split(cfg.source.root, cfg.source.split, "required")
    meta = read_ddpm_meta(cfg.ddpm)
    steps = int(meta.get("num_timesteps", 1000))
    if cfg.n > steps:
        raise ConfigError(f"n: {cfg.n} exceeds the DDPM's {steps} timesteps (1..{steps})")
    if cfg.respace_steps is not None and cfg.respace_steps < 1:
        raise ConfigError("respace_steps must be >= 1 (or null for all n steps)")
    cfg.sampler.options(ddpm_moments(meta), cfg.guidance)
    if cfg.guidance.kind != "none":
        if not Path(cfg.segmenter).is_file():
            raise FileNotFoundError(f"{cfg.segmenter}: segmenter checkpoint not found")
        smeta = read_meta(cfg.segmenter)
        if smeta.get("num_classes") not in (None, scan.classes.num_classes):
            raise ValueError(
                f"wrong class count: segmenter {cfg.segmenter} predicts {smeta['num_classes']} "
                f"classes, {cfg.source.root} has {scan.classes.num_classes}"
            )
    return scan


def translate_dataset(cfg: TranslateConfig, out: str | Path, progress: bool = True) -> dict:
    """Translate ``cfg.source`` and write ``out/dataset`` (folder format) and ``out/previews``.

    Everything is checked before the first file is written; a re-run reuses the images
    already translated (docs/run_directories.md)."""
    from diffdass.utils.run import RunDir

    validate_tree(cfg)
    run = RunDir(out, "translate", artifacts=("dataset/*/images/*",))
    run.check(cfg, RESUME_IGNORE)
    scan = preflight(cfg)
    with dist.main_open(run, cfg, RESUME_IGNORE):
        out = _translate_dataset(cfg, run, scan, progress and dist.is_main())
    dist.barrier()  # every image is written when this returns
    return out


def _translate_dataset(cfg: TranslateConfig, run, scan, progress: bool) -> dict:
    from diffdass.adaptation.ddpm_training import ddpm_moments, load_ddpm
    from diffdass.models.factory import load_segmenter
    from diffdass.utils.device import channels_last, configure_backends, resolve_device

    out = run.path
    device = dist.device(resolve_device(cfg.device))
    configure_backends(device)
    world, main = dist.world_size(), dist.is_main()
    unet, meta = load_ddpm(cfg.ddpm, device)  # channels-last on CUDA
    moments = ddpm_moments(meta)
    size = tuple(cfg.resize) if cfg.resize else tuple(meta["sample_size"])
    ds = scan.dataset(Resize(*size))
    seg = None
    if cfg.guidance.kind != "none":
        seg, smeta = load_segmenter(cfg.segmenter, device)
        seg = channels_last(seg, device)
    schedule = DDPMSchedule(num_timesteps=int(meta.get("num_timesteps", 1000)))
    dst = Path(out) / "dataset"
    run.start()
    if main:
        ds.classes.save(dst)
    split = cfg.source.split
    n_items = len(ds) if cfg.limit is None else min(cfg.limit, len(ds))
    bs = cfg.batch_size
    t0, done, skipped = time.perf_counter(), 0, 0
    bar = Progress(
        n_items,
        0,
        f"translate n={cfg.n}",
        enabled=progress,
        unit="image",
        logger=run.logger,
        run=run,
    )
    preview_rows: list[list[np.ndarray]] = []
    indexed_rows: list[tuple[int, list[np.ndarray]]] = []  # several processes
    for b, start in enumerate(range(0, n_items, bs)):
        if world > 1 and b % world != dist.rank():
            continue  # another process's batch
        idx = list(range(start, min(start + bs, n_items)))
        items = [ds[i] for i in idx]
        outs = [dst / split / "images" / f"{it['stem']}.png" for it in items]
        # the preview shows the first cfg.preview images (several processes: by index)
        need_preview = len(preview_rows) < cfg.preview if world == 1 else start < cfg.preview
        if all(p.is_file() for p in outs) and not need_preview:
            skipped += len(idx)
            bar.update(len(idx))
            continue
        x0 = torch.stack([it["image"] for it in items]).to(device)
        y = torch.stack([it["label"] for it in items]).to(device)
        guided = translate_batch(
            x0,
            y,
            cfg.n,
            unet,
            schedule,
            seg,
            cfg.guidance,
            batch_generator(cfg.seed, b, device),
            cfg.respace_steps,
            cfg.seed + b,
            cfg.sampler,
            moments,
        )
        for it, x in zip(items, guided, strict=True):
            save_image(
                dst / split / "labels" / f"{it['stem']}.png", it["label"].numpy().astype(np.uint8)
            )
            save_image(dst / split / "images" / f"{it['stem']}.png", tensor_to_image(x))
        if need_preview:
            base = guided
            if cfg.guidance.kind != "none":
                none = GuidanceConfig(kind="none")
                base = translate_batch(
                    x0,
                    y,
                    cfg.n,
                    unet,
                    schedule,
                    None,
                    none,
                    batch_generator(cfg.seed, b, device),
                    cfg.respace_steps,
                    sampler=cfg.sampler,
                    moments=moments,
                )
            for i, it, xb, xg in zip(idx, items, base, guided, strict=True):
                if (len(preview_rows) if world == 1 else i) < cfg.preview:
                    lbl = colorize(it["label"].numpy().astype(np.uint8), ds.classes.palette)
                    row = [
                        tensor_to_image(it["image"]),
                        lbl,
                        tensor_to_image(xb),
                        tensor_to_image(xg),
                    ]
                    if world == 1:
                        preview_rows.append(row)
                    else:
                        indexed_rows.append((i, row))
        done += len(idx)
        bar.update(len(idx))
    bar.close()
    if world > 1:  # rows in image order, counts of every process
        preview_rows = [r for _, r in sorted(dist.gather_objects(indexed_rows), key=lambda t: t[0])]
        done = int(dist.all_reduce_sum(torch.tensor(done)))
        skipped = int(dist.all_reduce_sum(torch.tensor(skipped)))
    if preview_rows and main:
        save_image(Path(out) / "previews" / "sheet.png", preview_sheet(preview_rows))
    secs = time.perf_counter() - t0
    steps = cfg.respace_steps if cfg.respace_steps and cfg.respace_steps < cfg.n else cfg.n
    metrics = {
        "stage": "translate",
        "n": cfg.n,
        "reverse_steps": steps,
        "guidance": cfg.guidance.kind,
        "sampler": f"{cfg.sampler.solver}/{cfg.sampler.variance}/clip={cfg.sampler.clip_x0}",
        "images": n_items,
        "translated": done,
        "reused": skipped,
        "seconds": secs,
        "image_steps_per_second": done * steps / secs if done else None,
        "dataset": str(dst),
    }
    if world > 1:
        metrics["processes"] = world
    if main:
        run.write_metrics(metrics)
    return metrics
