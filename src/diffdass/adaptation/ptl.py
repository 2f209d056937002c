"""Progressive Translation Learning (paper Sec. 4.3, Eq. 11-12).

For domains n_1 < n_2 < ... < n_K (paper: n = 1..N, N = 600):

1. translate the source images that this domain's fine-tuning consumes with ``n_k``
   diffusion steps and ``n_k`` guided reverse steps, guided by ``g_{k-1}`` (frozen copy);
2. fine-tune ``g`` for ``iterations_per_domain`` steps on
   ``L_ft = CE(g(X^n), Y^S) + CE(g(X^S), Y^S)`` (the second term, L_src, can be switched
   off: Table 3), keeping ``g_k``.

``g_K`` is the final model. Domain schedules:

- ``every``: n = 1, 2, ..., n_max (the paper). Cost in reverse image-steps:
  ``iterations_per_domain * batch_size * n_max (n_max + 1) / 2``.
- ``spread``: K domains at n_k = round(k n_max / K), each reversed in at most
  ``reverse_steps`` respaced model calls; cost ``I * B * sum_k min(n_k, reverse_steps)``.

The run is resumable at domain granularity: a checkpoint is written after each domain, and
everything random in domain k (batch order, augmentation, translation noise, RandMix
arrangement, dropout) is seeded from ``(seed, k)`` / ``(seed, iteration)``, so a run killed
at any moment (mid-domain included) ends with the same weights as an uninterrupted one.

Several processes (``accelerate launch``): the translation batches of a domain are shared out
among the processes (batch j to process j mod processes; each batch's noise and guidance
depend only on (seed, k, j), so every translation equals the one-process one) and gathered
by all; fine-tuning is data-parallel like ``train-seg`` (each process a slice of every global
batch) when the processes divide ``batch_size``; otherwise (say 8 GPUs at the paper's batch 2)
the main process fine-tunes alone and sends its weights to the others after each domain, so
translation, nearly all of PTL's cost, still spreads over every process. Checkpoints (after each domain, no process-dependent state), strips, history and
metrics are written by the main process; a run resumes with any number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from diffdass.adaptation.augment import NoisyMaskedAugment
from diffdass.adaptation.config import AugConfig, NoisyMaskedConfig, OptimConfig
from diffdass.adaptation.ptl_domain import (
    run_domain,
    save_strip,
    sharded_finetuning,
)
from diffdass.adaptation.seg_training import SegTrainer
from diffdass.adaptation.translation import (
    GuidanceConfig,
    SamplerConfig,
)
from diffdass.data.folder import (
    DomainSpec,
)
from diffdass.data.scan import SplitScan, scan_split
from diffdass.data.transforms import Resize
from diffdass.diffusion.schedule import DDPMSchedule
from diffdass.training import LoggingConfig, TrainLoop
from diffdass.utils import distributed as dist
from diffdass.utils.checkpoint import load_checkpoint, save_checkpoint
from diffdass.utils.config import ConfigError, validate_tree
from diffdass.utils.device import Amp
from diffdass.utils.io import write_json
from diffdass.utils.run import RunDir


@dataclass
class PTLConfig:
    """``diffdass ptl``: progressive translation learning from a source-only model g_0."""

    source: DomainSpec = field(default_factory=DomainSpec)
    val: DomainSpec | None = None  # optional labeled target split: mIoU of g_n along n
    init: str = ""  # g_0 checkpoint (train-seg)
    ddpm: str = ""  # target DDPM checkpoint (train-ddpm)
    domains: str = "every"  # every (paper) | spread
    n_max: int = 600  # N
    num_domains: int | None = None  # K for "spread" (default: n_max)
    reverse_steps: int | None = None  # respaced reverse calls per translation (spread only)
    iterations_per_domain: int = 300
    batch_size: int = 2
    loss_src: bool = True  # L_ft = L_ada + L_src (Eq. 12); False: L_ada only (Table 3)
    # Each translated image serves this many fine-tuning samples of its domain (1: every
    # sample translated afresh, the paper). r > 1 translates ceil(I*B/r) images per domain
    # and draws the domain's batches from them in seeded random order (each used r times):
    # r times less translation, the same fine-tuning budget.
    translation_reuse: int = 1
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    # The learning rate along the domains (optim.lr is the base rate, optim.warmup the warm-up
    # at the start of the run): "domain" = optim's poly decay restarted at every domain (each
    # g_k ends annealed on its own domain; the default), "constant" = optim.lr throughout (the
    # paper: SGD at 2.5e-4, no decay), "global" = one poly decay over all domains (the domains
    # nearest the target then train at a few percent of the rate).
    lr_schedule: str = "domain"
    aug: AugConfig = field(default_factory=AugConfig)
    noisy_masked: NoisyMaskedConfig = field(default_factory=NoisyMaskedConfig)
    # BatchNorm during fine-tuning (the paper does not say): "separate" = train mode, one
    # forward per batch (translated, then source: each normalised by its own statistics);
    # "joint" = one forward of the concatenated translated + source batch; "frozen" = running
    # statistics of g_0 kept (DeepLab-V2 with ImageNet weights and batch 2).
    bn: str = "separate"
    translate_batch_size: int = 8
    # translate at [H, W] (e.g. the DDPM's 256x512) instead of the training crop: the source
    # crop is resized to it (antialiased), translated, and L_ada is trained on the translation
    # at that size with nearest-resized labels (no resize back, so no blur); default: translate
    # the crop itself (the UNet is convolutional)
    translate_size: list[int] | None = None
    eval_every: int = 0  # evaluate g_k on `val` every this many domains (0: only at the end)
    eval_input_size: list[int] | None = None
    class_sets: list[str] = field(default_factory=lambda: ["19"])
    strip_images: int = 2  # source images whose translation across domains is saved (Fig. 4)
    seed: int = 0
    device: str = "auto"
    amp: Amp = True  # fine-tuning in bf16: true on CUDA only, bf16 also on the CPU, false never
    num_workers: int = 0
    on_error: str = "raise"  # or "skip": source samples the up-front check finds bad are left out
    logging: LoggingConfig = field(default_factory=LoggingConfig)  # curves: TensorBoard / W&B

    def validate(self) -> None:
        if self.on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")
        if self.bn not in ("separate", "joint", "frozen"):
            raise ConfigError(f"bn must be separate|joint|frozen, got {self.bn!r}")
        if self.domains not in ("every", "spread"):
            raise ConfigError(f"domains must be 'every' or 'spread', got {self.domains!r}")
        if self.translation_reuse < 1:
            raise ConfigError("translation_reuse must be >= 1")
        if self.n_max < 1 or self.iterations_per_domain < 1 or self.batch_size < 1:
            raise ConfigError("n_max, iterations_per_domain and batch_size must be positive")
        if self.num_domains is not None and not 1 <= self.num_domains <= self.n_max:
            raise ConfigError(f"num_domains must lie in 1..n_max ({self.n_max})")
        for key in ("translate_batch_size",):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("eval_every", "strip_images", "num_workers"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(
                f"lr_schedule must be one of {'|'.join(LR_SCHEDULES)}, got {self.lr_schedule!r}"
            )
        if self.translate_size is not None and (
            len(self.translate_size) != 2 or min(self.translate_size) <= 0
        ):
            raise ConfigError(f"translate_size: expected [H, W], got {self.translate_size}")
        fixed = self.aug.crop or self.aug.resize
        if (
            self.bn == "joint"
            and self.translate_size
            and fixed
            and list(self.translate_size) != list(fixed)
        ):
            raise ConfigError(
                "bn: joint needs translations of the training size: translate_size "
                f"{self.translate_size} differs from the crop {fixed} (use bn: separate)"
            )
        if self.domains == "every" and self.reverse_steps is not None:
            raise ConfigError(
                "reverse_steps applies to domains='spread' only (every: n reverse steps)"
            )

    def lr_at(self, it: int) -> float:
        """Base learning rate of fine-tuning iteration ``it`` (0-based over all domains) under
        ``lr_schedule``; the warm-up (``optim.warmup``) runs once, at the start."""
        from diffdass.adaptation.seg_training import poly_lr

        per = self.iterations_per_domain
        if self.lr_schedule == "global":
            return poly_lr(self.optim, it, len(self.levels()) * per)
        lr = self.optim.lr
        if self.lr_schedule == "domain":
            lr *= (1 - (it % per) / per) ** self.optim.poly_power
        if self.optim.warmup > 0 and it < self.optim.warmup:
            lr *= (it + 1) / self.optim.warmup
        return lr

    def levels(self) -> list[int]:
        """The noise depth n_k of every domain, in order."""
        if self.domains == "every":
            return list(range(1, self.n_max + 1))
        k = self.num_domains or self.n_max
        lv = [max(1, round((i + 1) * self.n_max / k)) for i in range(k)]
        return sorted(set(lv))

    def reverse_calls(self, n: int) -> int:
        return min(n, self.reverse_steps) if self.reverse_steps else n

    def translated_per_domain(self) -> int:
        """Source images translated per domain: ``ceil(I * B / translation_reuse)``."""
        return -(-self.iterations_per_domain * self.batch_size // self.translation_reuse)

    def cost(self) -> int:
        """Reverse image-steps spent on translation over the whole run."""
        per = self.translated_per_domain()
        return int(sum(per * self.reverse_calls(n) for n in self.levels()))


#: PTL's learning-rate schedules (PTLConfig.lr_schedule)
LR_SCHEDULES = ("domain", "constant", "global")


#: what a PTL run may change when resumed (nothing that changes the weights; the domain
#: schedule and iterations_per_domain fix the lr schedule's total, so they may not change)
RESUME_IGNORE = ("num_workers", "eval_every", "logging")


def check_config(cfg: PTLConfig, allow_auto: bool = False) -> None:
    """The checks of ``cfg`` that need no file (also run up front by ``diffdass run``, which
    resolves ``guidance.scale: auto`` itself: ``allow_auto``)."""
    validate_tree(cfg)
    if cfg.guidance.kind != "none" and cfg.guidance.is_auto and not allow_auto:
        cfg.guidance.strength()  # the error that says how to choose it
    if not cfg.init or not cfg.ddpm:
        raise ConfigError("PTL needs `init` (g_0 checkpoint) and `ddpm` (target DDPM checkpoint)")
    if cfg.aug.crop is None and cfg.aug.resize is None:
        raise ConfigError(
            "ptl.aug: PTL batches translations: set aug.crop or aug.resize to a fixed size "
            "(e.g. --set ptl.aug.crop=[64,128] in `diffdass run`)"
        )


def preflight(cfg: PTLConfig, checkpoints: bool = True) -> tuple[SplitScan, SplitScan | None]:
    """Everything :func:`run_ptl` can check before it writes or trains: the config, every file
    of the source and val splits and (``checkpoints``) the g_0 and DDPM checkpoints.

    Returns the scans of the source and val splits (None without val).
    """
    check_config(cfg)
    src = scan_split(cfg.source.root, cfg.source.split, "required", cfg.on_error)
    if cfg.aug.crop and not cfg.aug.resize and not cfg.aug.scale and src.samples:
        first = src.dataset()[0]
        h, w = first["image"].shape[-2:]
        if cfg.aug.crop[0] > h or cfg.aug.crop[1] > w:
            raise ConfigError(
                f"aug.crop {cfg.aug.crop} is larger than the source images ({first['stem']}: "
                f"{h}x{w}): the crops would be mostly padding -- lower it or set aug.resize"
            )
    val = scan_split(cfg.val.root, cfg.val.split, "required") if cfg.val and cfg.val.root else None
    if checkpoints:
        from diffdass.adaptation.ddpm_training import ddpm_moments, read_ddpm_meta
        from diffdass.utils.checkpoint import read_meta

        if not Path(cfg.init).is_file():
            raise FileNotFoundError(f"{cfg.init}: init checkpoint not found")
        dmeta = read_ddpm_meta(cfg.ddpm)
        _check_translation_size(cfg, dmeta)
        steps = int(dmeta.get("num_timesteps", 1000))
        if cfg.n_max > steps:
            raise ConfigError(f"n_max {cfg.n_max} exceeds the DDPM's {steps} timesteps")
        cfg.sampler.options(ddpm_moments(dmeta), cfg.guidance)
        smeta = read_meta(cfg.init)
        if smeta.get("num_classes") not in (None, src.classes.num_classes):
            raise ValueError(
                f"wrong class count: {cfg.init} predicts {smeta['num_classes']} classes, "
                f"{cfg.source.root} has {src.classes.num_classes}"
            )
    return src, val


def _check_translation_size(cfg: PTLConfig, dmeta: dict) -> None:
    """The size PTL translates at must suit the DDPM's UNet (divisible by its down-sampling)."""
    from diffdass.models.unet import UNET_PRESETS, unet_downsample_factor

    if dmeta.get("unet") not in UNET_PRESETS:
        return
    f = unet_downsample_factor(dmeta["unet"])
    size = cfg.translate_size or _fixed_size(cfg.aug)
    key = "translate_size" if cfg.translate_size else "aug.crop" if cfg.aug.crop else "aug.resize"
    if size[0] % f or size[1] % f:
        raise ConfigError(
            f"{key}: PTL translates at {size[0]}x{size[1]}, which must be divisible by {f}, "
            f"the down-sampling of the DDPM's {dmeta['unet']!r} UNet"
        )


def run_ptl(cfg: PTLConfig, out: str | Path, progress: bool = True) -> dict:
    """Run (or resume) PTL; writes ``checkpoints/final.safetensors`` = g_K and metrics."""
    check_config(cfg)
    run = RunDir(out, "ptl")
    run.check(cfg, RESUME_IGNORE)
    final = run.ckpt_dir / "final.safetensors"
    done = run.read_metrics()
    if final.is_file() and done and done.get("complete"):
        with dist.main_open(run, cfg, RESUME_IGNORE):
            run.logger.info("already complete: %s", final)
        return done
    scans = preflight(cfg)
    with dist.main_open(run, cfg, RESUME_IGNORE):
        out = _run(cfg, run, scans, progress and dist.is_main())
    dist.barrier()  # the checkpoints exist for every process when this returns
    return out


def _run(cfg: PTLConfig, run: RunDir, scans, progress: bool) -> dict:
    from diffdass.adaptation.ddpm_training import ddpm_moments, load_ddpm
    from diffdass.evaluation.evaluate import evaluate
    from diffdass.models.factory import load_segmenter
    from diffdass.utils.device import configure_backends, resolve_device

    src_scan, val_scan = scans
    final = run.ckpt_dir / "final.safetensors"
    device = dist.device(resolve_device(cfg.device))
    configure_backends(device)
    main = dist.is_main()
    unet, dmeta = load_ddpm(cfg.ddpm, device)
    moments = ddpm_moments(dmeta)
    cfg.sampler.options(moments, cfg.guidance)  # a missing requirement fails before any work
    schedule = DDPMSchedule(num_timesteps=int(dmeta.get("num_timesteps", 1000)))
    model, smeta = load_segmenter(cfg.init, device)
    tf = cfg.aug.transform()
    ds = src_scan.dataset(tf, seed=cfg.seed)
    levels = cfg.levels()
    total_iters = len(levels) * cfg.iterations_per_domain
    nm = None
    if cfg.noisy_masked.prob > 0:
        nm = NoisyMaskedAugment(
            schedule,
            cfg.noisy_masked.prob,
            min(cfg.noisy_masked.max_timestep, schedule.num_timesteps),
        )
    trainer = SegTrainer(
        model,
        cfg.optim,
        total_iters,
        device,
        cfg.seed,
        cfg.amp,
        freeze_bn=cfg.bn == "frozen",
        noisy_masked=nm,
        joint_bn=cfg.bn == "joint",
        lr_fn=cfg.lr_at,
        distributed=sharded_finetuning(cfg.batch_size),
    )
    meta = segmenter_meta_from(smeta)
    val_ds = val_scan.dataset() if val_scan is not None else None
    strip_ds = src_scan.dataset(Resize(*_fixed_size(cfg.aug)))
    strip_idx = list(range(min(cfg.strip_images, len(strip_ds))))
    run.logger.info(
        "PTL: %d domains (n = %s), %d iterations each, translation cost %d reverse image-steps",
        len(levels),
        _levels_repr(levels),
        cfg.iterations_per_domain,
        cfg.cost(),
    )

    def load(path: Path) -> int:
        m = load_checkpoint(path, {"model": trainer.model}, trainer.optimizer, device=device)
        return int(m["domain"])

    def save(path: Path, done: int) -> None:
        modules = {"model": trainer.model}
        save_checkpoint(
            path, modules, trainer.optimizer, meta | {"domain": done, "n": levels[done - 1]}
        )

    def step(k: int, _) -> dict:
        n = levels[k]
        # X^n of a few fixed images, guided by g_{k-1} like the domain. On the main process
        # only: one batch of strip_images (2 by default) against the domain's
        # translated_per_domain() images shared out over all processes (600 at the paper's
        # I = 300, B = 2: in batches of 8 on 8 processes, 72 or 80 each, the main one 80 + 2),
        # so the others hardly wait for it at the gather. Split over processes the strip
        # would change: one generator draws the noise of the whole strip batch.
        if strip_idx and main:
            strip = save_strip(
                cfg,
                k,
                n,
                strip_ds,
                strip_idx,
                trainer.model,
                unet,
                schedule,
                device,
                run.path,
                moments,
            )
            loop.tracker.image("translations", strip, k + 1)  # source | phi^n, per image
        rec = run_domain(cfg, k, n, ds, trainer, unet, schedule, device, moments)
        if val_ds is not None and cfg.eval_every and (k + 1) % cfg.eval_every == 0:
            if k + 1 < len(levels):
                res = evaluate(
                    trainer.model,
                    val_ds,
                    cfg.class_sets,
                    device,
                    cfg.eval_input_size,
                    progress=False,
                )
                rec["val_miou"] = res["miou"]
                trainer.model.train()
        run.logger.info(
            "domain %d/%d n=%d loss %.4f (%.1fs)",
            k + 1,
            len(levels),
            n,
            rec["loss"],
            rec["seconds"],
        )
        return rec

    loop = TrainLoop(
        run,
        "ptl",
        len(levels),
        step,
        lambda start: range(start, len(levels)),
        save,
        load,
        checkpoint_every=1,  # after every domain: the checkpoint and its history move together
        history_file="domains.json",
        unit="domain",
        progress=progress,
        images=lambda _, rec: rec["translated_images"],
        show=("n", "loss"),
        tracking=cfg.logging,
        lr_key="lr_last",
    )
    history = loop().history
    hist_path = run.path / "domains.json"
    if main:
        save_checkpoint(
            final, {"model": trainer.model}, None, meta | {"domain": len(levels), "n": levels[-1]}
        )
    metrics = {
        "stage": "ptl",
        "complete": True,
        "domains": len(levels),
        "levels": levels,
        "iterations_per_domain": cfg.iterations_per_domain,
        "translation_cost_image_steps": cfg.cost(),
        "guidance": cfg.guidance.kind,
        "loss_src": cfg.loss_src,
        "seconds": sum(r["seconds"] for r in history),
        "checkpoint": str(final),
        "checkpoint_kind": "last",
    }
    if val_ds is not None:
        res = evaluate(
            trainer.model, val_ds, cfg.class_sets, device, cfg.eval_input_size, progress=False
        )
        metrics["val"] = {k: v for k, v in res.items() if k != "table"}
        history[-1]["val_miou"] = res["miou"]
        if main:
            write_json(hist_path, history)
    if dist.world_size() > 1:
        metrics["processes"] = dist.world_size()
        metrics["finetuning"] = "sharded" if trainer.world > 1 else "main process"
    if main:
        run.write_metrics(metrics)
    return metrics


def segmenter_meta_from(smeta: dict) -> dict:
    return {k: smeta[k] for k in ("arch", "num_classes", "class_names") if k in smeta}


def _fixed_size(a: AugConfig) -> tuple[int, int]:
    """The size every training sample has after augmentation (crop, else resize)."""
    return tuple(a.crop) if a.crop else tuple(a.resize)


def _levels_repr(levels: list[int]) -> str:
    if len(levels) <= 8:
        return ", ".join(map(str, levels))
    return f"{levels[0]}, {levels[1]}, ..., {levels[-1]}"
