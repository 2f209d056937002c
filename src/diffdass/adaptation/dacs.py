"""DACS-style self-training (Tranheden et al., WACV 2021): the non-diffusion baseline of CICLD.

The same recipe as CICLD's adaptation phase (:mod:`diffdass.adaptation.cicld`), on a plain
segmenter from :func:`diffdass.models.factory.build_segmenter` and without any diffusion.
Each iteration:

1. pseudo-labels of the target batch from the EMA teacher (:func:`pseudo_labels`, pixels
   below ``pseudo_threshold`` ignored; 0 = none, as in our CICLD);
2. ClassMix of the source batch into the target batch (:func:`classmix`: half of the source
   classes, image and label alike, pasted over the target image and its pseudo-label), then
   brightness/contrast jitter of the mixed image (:func:`pixel_jitter`);
3. one forward of ``[source, mixed]`` and the Eq. 7 loss
   ``CE(g(x_s), y_s) + CE(g(x_mix), y_mix)`` (:func:`segmentation_loss`), one optimiser
   step (SGD or AdamW with poly decay, :func:`~diffdass.adaptation.seg_training.build_optimizer`);
4. the EMA update of the teacher (:class:`~diffdass.models.ema.EMA`, ``ema_decay``).

The trained model starts from ``init`` (a segmenter checkpoint, e.g. the pipeline's
source-only g_0: DACS on our benchmark starts where every other row starts) or, with
``init: ""``, from ``model`` (random or ``model.pretrained`` weights). The model used at test
time is the EMA teacher, written to ``checkpoints/final.safetensors`` as an ordinary
segmenter checkpoint (``diffdass evaluate`` and ``load_segmenter`` read it).

Differences to the DACS paper (chosen so that DACS and CICLD differ only in the network):
no confidence weighting of the mixed loss (DACS weights it by the share of pixels above
0.968), CICLD's pixel jitter instead of DACS's colour jitter + blur, one joint forward of
source and mixed images.

Reproducibility: batch order and augmentation of iteration ``it`` depend only on
``(seed, it)``, and every random draw of a step comes from generators seeded with
``(seed, it, stream)``; a resumed run ends with the same weights as an uninterrupted one
(bit for bit on CPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffdass.adaptation.config import AugConfig, OptimConfig, SegModelConfig
from diffdass.adaptation.mixing import (
    classmix,
    pixel_jitter,
    pseudo_labels,
    scan_domain_pair,
    segmentation_loss,
    stream_loader,
)
from diffdass.adaptation.seg_training import (
    build_optimizer,
    poly_lr,
    pretrained_arg,
    segmenter_meta,
    set_bn_eval,
    step_seed,
)
from diffdass.data.folder import DomainSpec
from diffdass.models.ema import EMA
from diffdass.models.factory import build_segmenter, load_segmenter
from diffdass.training import LoggingConfig, TrainLoop, first_last
from diffdass.utils.checkpoint import load_checkpoint, read_meta, save_checkpoint
from diffdass.utils.config import ConfigError, validate_tree
from diffdass.utils.device import (
    Amp,
    autocast,
    channels_last,
    configure_backends,
    memory_format,
    resolve_device,
)
from diffdass.utils.run import RunDir


@dataclass
class DACSConfig:
    """``train_dacs``: ClassMix + EMA-teacher self-training of a plain segmenter."""

    source: DomainSpec = field(default_factory=DomainSpec)  # labeled
    target: DomainSpec = field(default_factory=DomainSpec)  # unlabeled (labels not read)
    # the segmenter; with ``init`` set its ``arch`` must be the checkpoint's
    model: SegModelConfig = field(default_factory=SegModelConfig)
    init: str = ""  # segmenter checkpoint to start from (e.g. g_0); "" = build ``model``
    aug: AugConfig = field(default_factory=AugConfig)  # both domains
    optim: OptimConfig = field(default_factory=OptimConfig)
    iterations: int = 40000
    batch_size: int = 2  # per domain
    ema_decay: float = 0.99  # DACS's teacher decay
    pseudo_threshold: float = 0.0  # pseudo-labels below this confidence -> ignore
    mix_jitter: float = 0.1  # brightness/contrast jitter of the mixed image (0: off)
    seed: int = 0
    device: str = "auto"
    amp: Amp = True  # bf16 autocast: true on CUDA only, bf16 also on the CPU, false never
    num_workers: int = 0
    checkpoint_every: int = 1000
    on_error: str = "raise"
    logging: LoggingConfig = field(default_factory=LoggingConfig)  # curves: TensorBoard / W&B

    def validate(self) -> None:
        if not self.source.root or not self.target.root:
            raise ConfigError("source.root and target.root are required")
        if self.iterations < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ConfigError("iterations, batch_size and checkpoint_every must be positive")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ConfigError(f"ema_decay must lie in [0, 1], got {self.ema_decay}")
        if not 0.0 <= self.pseudo_threshold <= 1.0:
            raise ConfigError(f"pseudo_threshold must lie in [0, 1], got {self.pseudo_threshold}")
        if self.mix_jitter < 0:
            raise ConfigError(f"mix_jitter must be >= 0, got {self.mix_jitter}")
        if self.on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")


class DACSTrainer:
    """The trained segmenter (``model``), its EMA teacher (``ema_model``) and the optimiser;
    :meth:`step` runs iteration ``it``."""

    def __init__(self, cfg: DACSConfig, model: torch.nn.Module, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        # channels-last on CUDA (the EMA teacher copies the layout); unchanged on the CPU
        self.model = channels_last(model.to(device), device)
        self.optimizer = build_optimizer(self.model, cfg.optim)  # the source-only optimiser
        self.amp = cfg.amp
        self.ema = EMA(self.model, decay=cfg.ema_decay)
        self.ema_model = self.ema.module_copy(self.model).eval().requires_grad_(False)

    def lr_at(self, it: int) -> float:
        """Base lr of iteration ``it``: the source-only schedule (``OptimConfig``: poly decay
        over ``iterations``, times ``(it + 1) / warmup`` while warming up)."""
        return poly_lr(self.cfg.optim, it, self.cfg.iterations)

    def step(self, it: int, batch_s: dict, batch_t: dict) -> dict:
        """Iteration ``it`` (0-based) on a source and a target batch; returns its stats."""
        c = self.cfg
        torch.manual_seed(step_seed(c.seed, it, 1))
        gen = torch.Generator().manual_seed(step_seed(c.seed, it, 2))
        lr = self.lr_at(it)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)
        fmt = memory_format(self.device)
        x_s = batch_s["image"].to(self.device, memory_format=fmt)
        y_s = batch_s["label"].to(self.device)
        x_t = batch_t["image"].to(self.device, memory_format=fmt)
        with torch.no_grad(), autocast(self.device, self.amp):
            logits_t = self.ema_model.predict(x_t)
        y_t, conf = pseudo_labels(logits_t, c.pseudo_threshold)
        x_mix, y_mix, _ = classmix(x_s, y_s, x_t, y_t, gen)
        x_mix = pixel_jitter(x_mix, c.mix_jitter, gen)
        self.model.train()
        if c.model.freeze_bn:
            set_bn_eval(self.model)
        with autocast(self.device, self.amp):
            logits = self.model(torch.cat([x_s, x_mix]))
        b = x_s.shape[0]
        l_src = segmentation_loss(logits[:b], y_s)
        l_mix = segmentation_loss(logits[b:], y_mix)
        loss = l_src + l_mix
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss.item()} at iteration {it}; lower the learning rate"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.ema.update(self.model)
        self.ema.copy_to(self.ema_model)
        return {
            "loss": loss.item(),
            "src": l_src.item(),
            "mix": l_mix.item(),
            "pseudo_conf": conf.mean().item(),
            "lr": lr,
        }

    def save(self, path: Path, it: int, meta: dict) -> Path:
        """Everything a resume needs: both models, the optimiser and the EMA step."""
        modules = {"model": self.model, "ema": self.ema_model}
        return save_checkpoint(
            path, modules, self.optimizer, meta | {"iteration": it, "ema_step": self.ema.step}
        )

    def load(self, path: Path) -> int:
        modules = {"model": self.model, "ema": self.ema_model}
        meta = load_checkpoint(path, modules, self.optimizer, device=self.device)
        self.ema.load_state_dict({"shadow": self.ema_model.state_dict(), "step": meta["ema_step"]})
        return int(meta["iteration"])


def initial_model(cfg: DACSConfig, num_classes: int) -> torch.nn.Module:
    """The segmenter DACS starts from: ``cfg.init``'s weights, or ``cfg.model`` built fresh
    (``cfg.seed`` fixes a random initialisation)."""
    if cfg.init:
        model, _ = load_segmenter(cfg.init, "cpu")
        return model
    torch.manual_seed(cfg.seed)
    return build_segmenter(
        cfg.model.arch, num_classes, pretrained=pretrained_arg(cfg.model.pretrained)
    )


def check_init(cfg: DACSConfig, num_classes: int) -> None:
    """``cfg.init`` (when set) is a segmenter checkpoint of ``cfg.model.arch`` for
    ``num_classes`` classes (checked before anything is written)."""
    if not cfg.init:
        return
    path = Path(cfg.init)
    if not path.is_file():
        raise ConfigError(f"init: {path}: segmenter checkpoint not found")
    meta = read_meta(path)
    if meta.get("arch") != cfg.model.arch:
        raise ConfigError(
            f"init: {path} holds a {meta.get('arch')!r} segmenter, model.arch is "
            f"{cfg.model.arch!r}; set model.arch to the checkpoint's"
        )
    if int(meta.get("num_classes", -1)) != num_classes:
        raise ConfigError(
            f"init: {path} predicts {meta.get('num_classes')} classes, the data have {num_classes}"
        )


#: what a DACS run may change when it is resumed (nothing that changes the weights)
RESUME_IGNORE = ("num_workers", "checkpoint_every", "device", "logging")


def train_dacs(cfg: DACSConfig, out: str | Path, progress: bool = True) -> dict:
    """Train into run directory ``out``; resumes from ``out/checkpoints/last.safetensors``.

    Writes ``checkpoints/final.safetensors`` (the EMA teacher as a plain segmenter
    checkpoint), ``loss_history.json`` and ``metrics.json``; returns the metrics.
    """
    validate_tree(cfg)
    run = RunDir(out, "dacs")
    run.check(cfg, RESUME_IGNORE)
    final = run.ckpt_dir / "final.safetensors"
    done = run.read_metrics()
    if final.is_file() and done and done.get("iterations") == cfg.iterations:
        return done
    src, tgt = scan_domain_pair(cfg)
    check_init(cfg, src.classes.num_classes)
    with run.open(cfg, RESUME_IGNORE):
        return _train(cfg, run, src, tgt, progress)


def _train(cfg: DACSConfig, run: RunDir, src, tgt, progress: bool) -> dict:
    device = resolve_device(cfg.device)
    configure_backends(device)
    tf = cfg.aug.transform()
    ds_s = src.dataset(tf, seed=cfg.seed)
    ds_t = tgt.dataset(tf, seed=cfg.seed + 1)
    classes = ds_s.classes
    final = run.ckpt_dir / "final.safetensors"
    trainer = DACSTrainer(cfg, initial_model(cfg, classes.num_classes), device)
    meta = segmenter_meta(cfg.model, classes.num_classes, classes.names)
    n, w = cfg.iterations, cfg.num_workers

    def batches(start: int):
        return zip(  # both streams have n - start batches; the target has its own order
            stream_loader(ds_s, cfg.batch_size, cfg.seed, start, n, w, device),
            stream_loader(ds_t, cfg.batch_size, step_seed(cfg.seed, 0, 7), start, n, w, device),
            strict=True,
        )

    def step(it: int, pair) -> dict:
        bs, bt = pair
        ds_s.note_skipped(bs.get("skipped", ()))  # a worker's skips reach this process
        return trainer.step(it, bs, bt)

    result = TrainLoop(
        run,
        "dacs",
        n,
        step,
        batches,
        save=lambda path, it: trainer.save(path, it, meta),
        load=trainer.load,
        checkpoint_every=cfg.checkpoint_every,
        progress=progress,
        distributed=False,
        tracking=cfg.logging,
    )()
    save_checkpoint(final, {"model": trainer.ema_model}, None, meta | {"iteration": n})
    history = result.history
    metrics = {
        "stage": "dacs",
        "iterations": n,
        "arch": cfg.model.arch,
        "init": cfg.init or f"{cfg.model.arch}, pretrained: {cfg.model.pretrained}",
        **first_last(history, "loss"),
        **first_last(history, "src"),
        **first_last(history, "mix"),
        "skipped_samples": ds_s.skipped,
        "checkpoint": str(final),
        "checkpoint_kind": "last (EMA model)",
        "device": str(device),
        "seconds": result.seconds,
    }
    run.write_metrics(metrics)
    run.logger.info("done: %s", metrics)
    return metrics
