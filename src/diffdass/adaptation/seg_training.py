"""Segmenter training: the source-only stage (``diffdass train-seg``) and the shared
training step that PTL fine-tuning reuses.

Reproducibility: the batch order and augmentation of iteration ``it`` depend only on
``(seed, it)`` (see :class:`~diffdass.data.folder.StreamBatchSampler`), and the torch RNG
is re-seeded from ``(seed, it)`` before every step (dropout, noisy-masked augmentation).
A run resumed from its checkpoint therefore ends with the same weights as an
uninterrupted one (bit for bit on CPU).
"""

from __future__ import annotations

import logging
import math
import time
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
from diffdass.utils.checkpoint import load_checkpoint, save_checkpoint
from diffdass.utils.config import ConfigError, validate_tree
from diffdass.utils.device import resolve_device
from diffdass.utils.progress import Progress
from diffdass.utils.rng import derive_seed
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
    amp: bool = True  # bf16 autocast, CUDA only
    num_workers: int = 2
    checkpoint_every: int = 1000
    on_error: str = "raise"  # or "skip": log and skip bad samples

    def validate(self) -> None:
        if not self.source.root:
            raise ConfigError("source.root: a labeled source dataset is required")
        if self.iterations < 1 or self.batch_size < 1:
            raise ConfigError("iterations and batch_size must be positive")
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
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optim: OptimConfig,
        total_iterations: int,
        device: torch.device,
        seed: int = 0,
        amp: bool = True,
        freeze_bn: bool = False,
        noisy_masked: NoisyMaskedAugment | None = None,
        joint_bn: bool = False,
    ) -> None:
        self.model = model.to(device)
        self.device = device
        self.cfg = optim
        self.total = total_iterations
        self.seed = seed
        self.amp = amp and device.type == "cuda"
        self.freeze_bn = freeze_bn
        # several batches in one step (PTL's L_ada + L_src): one forward of their
        # concatenation (BatchNorm statistics of both) instead of one forward each
        self.joint_bn = joint_bn
        self.noisy_masked = noisy_masked
        self.optimizer = build_optimizer(model, optim)

    def lr_at(self, it: int) -> float:
        """Base lr of iteration ``it``: poly decay, times ``(it + 1) / warmup`` while warming up."""
        lr = self.cfg.lr * (1 - min(it, self.total) / self.total) ** self.cfg.poly_power
        if self.cfg.warmup > 0 and it < self.cfg.warmup:
            lr *= (it + 1) / self.cfg.warmup
        return lr

    def _set_lr(self, it: int) -> float:
        lr = self.lr_at(it)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)
        return lr

    def step(self, it: int, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
        """One optimisation step at iteration ``it`` (0-based) on the sum of the batch losses."""
        self.model.train()
        if self.freeze_bn:
            set_bn_eval(self.model)
        torch.manual_seed(step_seed(self.seed, it, 1))
        gen = torch.Generator().manual_seed(step_seed(self.seed, it, 2))
        lr = self._set_lr(it)
        self.optimizer.zero_grad(set_to_none=True)
        parts, n_aug = [], 0
        prepared = []
        for images, labels in batches:
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            if self.noisy_masked is not None:
                images, labels, k = self.noisy_masked(images, labels, gen)
                n_aug += k
            prepared.append((images, labels))
        if self.joint_bn and len(prepared) > 1:
            # one forward of the concatenated batches: BatchNorm sees their joint statistics
            sizes = [x.shape[0] for x, _ in prepared]
            x_all = torch.cat([x for x, _ in prepared])
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
                logits = self.model(x_all)
            for lg, (_, labels) in zip(logits.split(sizes), prepared, strict=True):
                parts.append(ce_loss(lg, labels))
        else:
            for images, labels in prepared:
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
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

    def save(self, path: Path, it: int, meta: dict | None = None) -> Path:
        m = dict(meta or {})
        m["iteration"] = it
        return save_checkpoint(path, {"model": self.model}, self.optimizer, m)

    def load(self, path: Path) -> int:
        meta = load_checkpoint(path, {"model": self.model}, self.optimizer, device=self.device)
        return int(meta["iteration"])


def make_loader(
    dataset: FolderDataset, batch_size: int, seed: int, start: int, stop: int, num_workers: int
) -> torch.utils.data.DataLoader:
    sampler = StreamBatchSampler(len(dataset), batch_size, seed, start, stop)
    return torch.utils.data.DataLoader(
        StreamDataset(dataset),
        batch_sampler=sampler,
        collate_fn=collate_items,  # keeps the per-item "skipped" lists (on_error="skip")
        num_workers=num_workers,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )


def segmenter_meta(cfg_model: SegModelConfig, num_classes: int, class_names) -> dict:
    return {"arch": cfg_model.arch, "num_classes": num_classes, "class_names": list(class_names)}


#: what a train-seg run may change when it is resumed (nothing that changes the weights)
RESUME_IGNORE = ("num_workers", "checkpoint_every")
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
        with run.open(cfg, RESUME_IGNORE, ITERATIONS_HINT):
            run.logger.info("already trained: %s", final)
        return done
    scan = preflight(cfg)
    with run.open(cfg, RESUME_IGNORE, ITERATIONS_HINT):
        return _train(cfg, run, scan, progress)


def _train(cfg: TrainSegConfig, run: RunDir, scan: SplitScan, progress: bool) -> dict:
    final = run.ckpt_dir / "final.safetensors"
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    tf = cfg.aug.transform()
    ds = scan.dataset(tf, seed=cfg.seed)
    model = build_segmenter(
        cfg.model.arch, ds.classes.num_classes, pretrained=_pretrained(cfg.model.pretrained)
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
    last = run.ckpt_dir / "last.safetensors"
    start = trainer.load(last) if last.is_file() else 0
    if start > cfg.iterations:  # a run of an older version, which did not record this
        raise ConfigError(
            f"{run.path}: has trained {start} iterations, more than iterations={cfg.iterations}; "
            + ITERATIONS_HINT["iterations"]
        )
    if start:
        run.logger.info("resuming from iteration %d", start)
        run.resume_point = f"the checkpoint at iteration {start}"
    run.start()
    history = _load_history(run.path)[:start]
    loader = make_loader(ds, cfg.batch_size, cfg.seed, start, cfg.iterations, cfg.num_workers)
    bar = Progress(cfg.iterations, start, "train-seg", enabled=progress, logger=run.logger, run=run)
    t0, seen = time.perf_counter(), 0
    it = start
    for it, batch in enumerate(loader, start=start):
        ds.note_skipped(batch.get("skipped", ()))  # a worker's skips reach this process
        stats = trainer.step(it, [(batch["image"], batch["label"])])
        seen += batch["image"].shape[0]
        ips = seen / max(time.perf_counter() - t0, 1e-9)
        history.append((it, stats["loss"]))
        if (it + 1) % cfg.checkpoint_every == 0 and it + 1 < cfg.iterations:
            trainer.save(last, it + 1, meta)
            _save_history(run.path, history)
            run.resume_point = f"the checkpoint at iteration {it + 1}"
        bar.update(1, loss=stats["loss"], lr=stats["lr"], img_s=ips)
    bar.close()
    if ds.skipped:
        run.logger.warning("skipped %d bad samples: %s", len(ds.skipped), ds.skipped)
    save_checkpoint(final, {"model": trainer.model}, None, meta | {"iteration": cfg.iterations})
    trainer.save(last, cfg.iterations, meta)
    _save_history(run.path, history)
    losses = [loss for _, loss in history]
    k = max(1, len(losses) // 10)
    metrics = {
        "stage": "train-seg",
        "iterations": cfg.iterations,
        "arch": cfg.model.arch,
        "loss_first": float(sum(losses[:k]) / k) if losses else math.nan,
        "loss_last": float(sum(losses[-k:]) / k) if losses else math.nan,
        "skipped_samples": ds.skipped,
        "checkpoint": str(final),
        "device": str(device),
    }
    run.write_metrics(metrics)
    run.logger.info("done: %s", metrics)
    return metrics


def _pretrained(v: str) -> bool | str:
    """``model.pretrained``: none (or a YAML false) | imagenet (or a YAML true) | a file path."""
    if v.lower() in ("none", "", "false", "no", "off"):
        return False
    if v.lower() in ("imagenet", "true", "yes", "on"):
        return True
    return v


def _load_history(path: Path) -> list[tuple[int, float]]:
    f = path / "loss_history.json"
    if not f.is_file():
        return []
    from diffdass.utils.io import read_json

    return [tuple(x) for x in read_json(f)]


def _save_history(path: Path, history) -> None:
    from diffdass.utils.io import write_json

    write_json(path / "loss_history.json", [list(h) for h in history])
