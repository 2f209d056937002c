"""Segmenter training: the source-only stage (``diffdass train-seg``) and the shared
training step that PTL fine-tuning reuses.

Reproducibility: the batch order and augmentation of iteration ``it`` depend only on
``(seed, it)`` (see :class:`~diffdass.data.folder.StreamBatchSampler`), and the torch RNG
is re-seeded from ``(seed, it)`` before every step (dropout, noisy-masked augmentation).
A run resumed from its checkpoint therefore ends with the same weights as an
uninterrupted one (bit for bit on CPU).

Several processes (``accelerate launch``, :mod:`diffdass.utils.distributed`): each process
trains on a contiguous slice of the same global batch (``batch_size / processes`` samples),
BatchNorm statistics are those of the global batch, the loss is normalised by the global
number of labelled pixels and the gradients are summed over processes, so a step computes
the one-process step (up to floating-point summation order; dropout masks are drawn per
process). Checkpoints, history and metrics are written by the main process; they hold the
global iteration and no process-dependent state, so a run resumes with any number of
processes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from diffdass.adaptation.augment import NoisyMaskedAugment
from diffdass.adaptation.config import (
    AugConfig,
    NoisyMaskedConfig,
    OptimConfig,
    SegModelConfig,
)
from diffdass.data.folder import (
    DomainSpec,
    FolderDataset,
    StreamBatchSampler,
    StreamDataset,
    collate_items,
)
from diffdass.data.scan import SplitScan, scan_split
from diffdass.diffusion.schedule import DDPMSchedule
from diffdass.models.factory import build_segmenter
from diffdass.training import LoggingConfig, TrainLoop, first_last
from diffdass.utils import distributed as dist
from diffdass.utils.checkpoint import load_checkpoint, save_checkpoint
from diffdass.utils.config import ConfigError, validate_tree
from diffdass.utils.device import (
    Amp,
    autocast,
    channels_last,
    configure_backends,
    loader_options,
    memory_format,
    resolve_device,
)
from diffdass.utils.rng import derive_seed, seeded_generator
from diffdass.utils.run import RunDir

log = logging.getLogger(__name__)


@dataclass
class TrainSegConfig:
    """``diffdass train-seg``: supervised training on a labeled (source) split."""

    source: DomainSpec = field(default_factory=DomainSpec)
    model: SegModelConfig = field(default_factory=SegModelConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    noisy_masked: NoisyMaskedConfig = field(default_factory=NoisyMaskedConfig)
    iterations: int = 20000
    batch_size: int = 2
    seed: int = 0
    device: str = "auto"
    # bf16 autocast: true on CUDA only, bf16 also on the CPU, false never (utils.device.Amp)
    amp: Amp = True
    num_workers: int = 2
    checkpoint_every: int = 1000
    on_error: str = "raise"  # or "skip": log and skip bad samples
    logging: LoggingConfig = field(default_factory=LoggingConfig)  # curves: TensorBoard / W&B

    def validate(self) -> None:
        if not self.source.root:
            raise ConfigError("source.root: a labeled source dataset is required")
        if self.iterations < 1 or self.batch_size < 1:
            raise ConfigError("iterations and batch_size must be positive")
        if self.checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")


def step_seed(seed: int, it: int, stream: int = 0) -> int:
    """The seed of random stream ``stream`` at iteration ``it``."""
    return derive_seed(seed, stream, it)


def seg_loss(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255
):
    """Pixel cross-entropy, logits upsampled bilinearly to the label size."""
    return ce_loss(model(images), labels, ignore_index)


def ce_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255):
    """Pixel cross-entropy of ``logits``, upsampled bilinearly to the label size."""
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index)


def set_bn_eval(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def build_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser ``optim.name`` over ``model.param_groups`` (head at ``head_lr_mult`` x lr).

    ``sgd``: momentum ``optim.momentum``, L2 weight decay ``optim.weight_decay`` (the paper).
    ``adamw``: betas (0.9, 0.999), decoupled weight decay ``optim.weight_decay``; momentum is
    unused. The learning rates are set by :class:`SegTrainer` at every step.

    Raises:
        ConfigError: unknown ``optim.name``.
    """
    optim.validate()
    groups = model.param_groups(optim.lr, head_lr_mult=optim.head_lr_mult)
    if optim.name == "adamw":
        return torch.optim.AdamW(
            groups, lr=optim.lr, betas=(0.9, 0.999), weight_decay=optim.weight_decay
        )
    return torch.optim.SGD(
        groups, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay
    )


class SegTrainer:
    """SGD or AdamW + (warm-up and) poly decay + optional AMP and noisy-masked augmentation
    around one segmenter.

    ``step(it, batches)`` sums the cross-entropy of several (images, labels) batches,
    which is how PTL's L_ft = CE(g(X^n), Y^S) + CE(g(X^S), Y^S) is formed.

    On CUDA the model and its input images are channels-last and the noisy-masked
    augmentation draws from a generator on the GPU (seeded from ``(seed, it)`` as on the CPU,
    where nothing of this applies).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optim: OptimConfig,
        total_iterations: int,
        device: torch.device,
        seed: int = 0,
        amp: Amp = True,
        freeze_bn: bool = False,
        noisy_masked: NoisyMaskedAugment | None = None,
        joint_bn: bool = False,
        lr_fn=None,
        distributed: bool = True,
    ) -> None:
        self.model = model.to(device)
        # base lr of an iteration; default: the optimiser's (warm-up and) poly decay over
        # total_iterations (PTL passes its per-domain schedule, PTLConfig.lr_at)
        self.lr_fn = lr_fn
        self.device = device
        self.cfg = optim
        self.total = total_iterations
        self.seed = seed
        self.amp = amp
        self.freeze_bn = freeze_bn
        # several batches in one step (PTL's L_ada + L_src): one forward of their
        # concatenation (BatchNorm statistics of both) instead of one forward each
        self.joint_bn = joint_bn
        self.noisy_masked = noisy_masked
        # distributed=False: this process trains alone even under a launcher (PTL's main
        # process when the processes do not divide the batch)
        self.world = dist.world_size() if distributed else 1
        if self.world > 1:
            # every process starts from the main one's weights; BatchNorm sees the global batch
            dist.broadcast_module(self.model)
            self.model = dist.sync_batchnorm(self.model)
        self.model = channels_last(self.model, device)
        self.optimizer = build_optimizer(self.model, optim)

    def lr_at(self, it: int) -> float:
        """Base lr of iteration ``it`` (``lr_fn``, else :func:`poly_lr`)."""
        if self.lr_fn is not None:
            return float(self.lr_fn(it))
        return poly_lr(self.cfg, it, self.total)

    def _set_lr(self, it: int) -> float:
        lr = self.lr_at(it)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)
        return lr

    def step(self, it: int, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
        """One optimisation step at iteration ``it`` (0-based) on the sum of the batch losses.

        Several processes: ``batches`` are this process's slices of the global batches
        (:meth:`_step_sharded`)."""
        if self.world > 1:
            return self._step_sharded(it, batches)
        self.model.train()
        if self.freeze_bn:
            set_bn_eval(self.model)
        torch.manual_seed(step_seed(self.seed, it, 1))
        gen = seeded_generator(step_seed(self.seed, it, 2), self.device)
        lr = self._set_lr(it)
        self.optimizer.zero_grad(set_to_none=True)
        parts, n_aug = [], 0
        prepared = []
        fmt = memory_format(self.device)
        for images, labels in batches:
            images = images.to(self.device, non_blocking=True, memory_format=fmt)
            labels = labels.to(self.device, non_blocking=True)
            if self.noisy_masked is not None:
                images, labels, k = self.noisy_masked(images, labels, gen)
                n_aug += k
            prepared.append((images, labels))
        if self.joint_bn and len(prepared) > 1:
            # one forward of the concatenated batches: BatchNorm sees their joint statistics
            sizes = [x.shape[0] for x, _ in prepared]
            x_all = torch.cat([x for x, _ in prepared])
            with autocast(self.device, self.amp):
                logits = self.model(x_all)
            for lg, (_, labels) in zip(logits.split(sizes), prepared, strict=True):
                parts.append(ce_loss(lg, labels))
        else:
            for images, labels in prepared:
                with autocast(self.device, self.amp):
                    parts.append(seg_loss(self.model, images, labels))
        loss = torch.stack(parts).sum()
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss.item()} at iteration {it} (parts {[p.item() for p in parts]}); "
                "lower the learning rate or check the data; no checkpoint was written"
            )
        loss.backward()
        self.optimizer.step()
        return {
            "loss": loss.item(),
            "parts": [p.item() for p in parts],
            "lr": lr,
            "augmented": n_aug,
        }

    def _step_sharded(self, it: int, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
        """:meth:`step` on this process's slices of the global batches: the same random
        draws as one process (noisy-masked augmentation drawn for the global batch), each
        batch's cross-entropy summed locally and divided by its global count of labelled
        pixels, the gradients summed over processes."""
        self.model.train()
        if self.freeze_bn:
            set_bn_eval(self.model)
        rank = dist.rank()
        # dropout: a stream of its own per process (rank 0 keeps the one-process seed)
        s1 = step_seed(self.seed, it, 1)
        torch.manual_seed(s1 if rank == 0 else derive_seed(s1, rank))
        gen = seeded_generator(step_seed(self.seed, it, 2), self.device)
        lr = self._set_lr(it)
        self.optimizer.zero_grad(set_to_none=True)
        n_aug = 0
        prepared = []
        fmt = memory_format(self.device)
        for images, labels in batches:
            images = images.to(self.device, non_blocking=True, memory_format=fmt)
            labels = labels.to(self.device, non_blocking=True)
            if self.noisy_masked is not None:
                images, labels, k = _augment_slice(self.noisy_masked, images, labels, gen)
                n_aug += k
            prepared.append((images, labels))
        counts = dist.all_reduce_sum(
            torch.stack([(lb != 255).sum() for _, lb in prepared]).to(torch.float64)
        )
        if self.joint_bn and len(prepared) > 1:
            sizes = [x.shape[0] for x, _ in prepared]
            x_all = torch.cat([x for x, _ in prepared])
            with autocast(self.device, self.amp):
                logits_all = self.model(x_all)
            logits = list(logits_all.split(sizes))
        else:
            logits = []
            for images, _ in prepared:
                with autocast(self.device, self.amp):
                    logits.append(self.model(images))
        parts = [
            _ce_sum(lg, lb) / counts[i].to(torch.float32)
            for i, (lg, (_, lb)) in enumerate(zip(logits, prepared, strict=True))
        ]
        local = torch.stack(parts)
        glob = dist.all_reduce_sum(local.detach())
        loss = glob.sum()
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss.item()} at iteration {it} (parts {glob.tolist()}); "
                "lower the learning rate or check the data; no checkpoint was written"
            )
        local.sum().backward()
        dist.all_reduce_gradients(self.model.parameters())
        self.optimizer.step()
        return {"loss": loss.item(), "parts": glob.tolist(), "lr": lr, "augmented": n_aug}

    def save(self, path: Path, it: int, meta: dict | None = None) -> Path:
        m = dict(meta or {})
        m["iteration"] = it
        return save_checkpoint(path, {"model": self.model}, self.optimizer, m)

    def load(self, path: Path) -> int:
        meta = load_checkpoint(path, {"model": self.model}, self.optimizer, device=self.device)
        return int(meta["iteration"])


def _ce_sum(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255):
    """:func:`ce_loss` summed over the labelled pixels instead of averaged."""
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="sum")


def _augment_slice(nm: NoisyMaskedAugment, images, labels, gen):
    """The noisy-masked augmentation of this process's slice of a global batch, with the
    draws of the global batch: the slice sits at its place in a global-sized batch whose
    other samples are unlabelled (the augmentation skips them), so ``gen`` advances as in
    one process and every sample gets the noise, timestep and class it gets there."""
    b, world = images.shape[0], dist.world_size()
    off = dist.batch_offset(b)
    full_x = images.new_zeros((b * world, *images.shape[1:]))
    full_y = labels.new_full((b * world, *labels.shape[1:]), 255)
    full_x[off : off + b] = images
    full_y[off : off + b] = labels
    x, y, k = nm(full_x, full_y, gen)
    return x[off : off + b], y[off : off + b], k


def make_loader(
    dataset: FolderDataset,
    batch_size: int,
    seed: int,
    start: int,
    stop: int,
    num_workers: int,
    device: torch.device | None = None,
) -> torch.utils.data.DataLoader:
    """Batches ``start .. stop-1`` of the seeded stream; several processes: each gets its
    slice (``batch_size`` is the global batch, divisible by the number of processes).

    ``device``: where the batches go (:func:`~diffdass.utils.device.loader_options`: pinned
    memory and persistent workers for CUDA); default CUDA when available, else the CPU."""
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sampler = StreamBatchSampler(len(dataset), batch_size, seed, start, stop)
    if dist.launched():
        dist.local_batch_size(batch_size)
        sampler = dist.ShardedBatchSampler(sampler)
    return torch.utils.data.DataLoader(
        StreamDataset(dataset),
        batch_sampler=sampler,
        collate_fn=collate_items,  # keeps the per-item "skipped" lists (on_error="skip")
        **loader_options(device, num_workers),
    )


def segmenter_meta(cfg_model: SegModelConfig, num_classes: int, class_names) -> dict:
    return {"arch": cfg_model.arch, "num_classes": num_classes, "class_names": list(class_names)}


#: what a train-seg run may change when it is resumed (nothing that changes the weights)
RESUME_IGNORE = ("num_workers", "checkpoint_every", "logging")
ITERATIONS_HINT = {
    "iterations": "the poly learning-rate schedule depends on the total number of "
    "iterations, so a segmenter run can be neither shortened nor extended (its weights would "
    "differ from a run trained for the new total): resume it with its own --iterations, or "
    "train the new total into a new output directory"
}


def preflight(cfg: TrainSegConfig) -> SplitScan:
    """Everything :func:`train_segmenter` can check before it writes or trains: the config
    and every file of the source split (:func:`~diffdass.data.scan.scan_split`)."""
    validate_tree(cfg)
    return scan_split(cfg.source.root, cfg.source.split, "required", cfg.on_error)


def train_segmenter(cfg: TrainSegConfig, out: str | Path, progress: bool = True) -> dict:
    """Train on ``cfg.source``; resumes from ``out/checkpoints/last.safetensors``.

    Writes ``out/checkpoints/final.safetensors`` (weights only, with arch metadata) and
    ``out/metrics.json``; returns the metrics. The config and the data are checked before
    anything is written (docs/run_directories.md).
    """
    validate_tree(cfg)
    run = RunDir(out, "train-seg")
    run.check(cfg, RESUME_IGNORE, ITERATIONS_HINT)
    final = run.ckpt_dir / "final.safetensors"
    done = run.read_metrics()
    if final.is_file() and done and done.get("iterations") == cfg.iterations:
        with dist.main_open(run, cfg, RESUME_IGNORE, ITERATIONS_HINT):
            run.logger.info("already trained: %s", final)
        return done
    scan = preflight(cfg)
    dist.local_batch_size(cfg.batch_size)  # before anything is written
    with dist.main_open(run, cfg, RESUME_IGNORE, ITERATIONS_HINT):
        out = _train(cfg, run, scan, progress and dist.is_main())
    dist.barrier()  # the checkpoints exist for every process when this returns
    return out


def _train(cfg: TrainSegConfig, run: RunDir, scan: SplitScan, progress: bool) -> dict:
    final = run.ckpt_dir / "final.safetensors"
    device = dist.device(resolve_device(cfg.device))
    configure_backends(device)
    main = dist.is_main()
    torch.manual_seed(cfg.seed)
    tf = cfg.aug.transform()
    ds = scan.dataset(tf, seed=cfg.seed)
    model = build_segmenter(
        cfg.model.arch, ds.classes.num_classes, pretrained=pretrained_arg(cfg.model.pretrained)
    )
    nm = None
    if cfg.noisy_masked.prob > 0:
        nm = NoisyMaskedAugment(
            DDPMSchedule(), cfg.noisy_masked.prob, cfg.noisy_masked.max_timestep
        )
    trainer = SegTrainer(
        model, cfg.optim, cfg.iterations, device, cfg.seed, cfg.amp, cfg.model.freeze_bn, nm
    )
    meta = segmenter_meta(cfg.model, ds.classes.num_classes, ds.classes.names)

    def step(it: int, batch: dict) -> dict:
        ds.note_skipped(batch.get("skipped", ()))  # a worker's skips reach this process
        return trainer.step(it, [(batch["image"], batch["label"])])

    loop = TrainLoop(
        run,
        "train-seg",
        cfg.iterations,
        step,
        lambda start: make_loader(
            ds, cfg.batch_size, cfg.seed, start, cfg.iterations, cfg.num_workers, device
        ),
        save=lambda path, it: trainer.save(path, it, meta),
        load=trainer.load,
        checkpoint_every=cfg.checkpoint_every,
        progress=progress,
        images=lambda batch, _: batch["image"].shape[0],
        resume_hint=ITERATIONS_HINT["iterations"],
        tracking=cfg.logging,
    )
    history = loop().history
    skipped = ds.skipped
    if trainer.world > 1:
        skipped = list(dict.fromkeys(dist.gather_objects(list(ds.skipped))))
    if skipped and main:
        run.logger.warning("skipped %d bad samples: %s", len(skipped), skipped)
    if main:
        save_checkpoint(final, {"model": trainer.model}, None, meta | {"iteration": cfg.iterations})
    metrics = {
        "stage": "train-seg",
        "iterations": cfg.iterations,
        "arch": cfg.model.arch,
        **first_last(history, "loss"),
        "skipped_samples": skipped,
        "checkpoint": str(final),
        "device": str(device),
    }
    if trainer.world > 1:
        metrics["processes"] = trainer.world
    if main:
        run.write_metrics(metrics)
        run.logger.info("done: %s", metrics)
    return metrics


def poly_lr(optim, it: int, total: int) -> float:
    """Base lr of iteration ``it`` of ``total`` under an ``OptimConfig``: poly decay, times
    ``(it + 1) / warmup`` while warming up."""
    lr = optim.lr * (1 - min(it, total) / total) ** optim.poly_power
    if optim.warmup > 0 and it < optim.warmup:
        lr *= (it + 1) / optim.warmup
    return lr


def pretrained_arg(v: str) -> bool | str:
    """``model.pretrained``: none (or a YAML false) | imagenet (or a YAML true) | a file path."""
    if v.lower() in ("none", "", "false", "no", "off"):
        return False
    if v.lower() in ("imagenet", "true", "yes", "on"):
        return True
    return v
