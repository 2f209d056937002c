"""Training of the unconditional target-domain DDPM (paper Sec. 3 and 4.4, Eq. 5).

``diffdass train-ddpm``: a diffusers ``UNet2DModel`` trained with the simple loss
``||eps_theta(x_t, t) - eps||^2`` on the (unlabeled) target images only, Adam with
lr 2e-5 and betas (0.9, 0.99) as in the paper, an EMA copy of the weights that is used for
all sampling and translation, bf16 autocast on GPU, periodic sample grids, safetensors
checkpoints and exact resume (batch order, augmentation and noise of iteration ``it``
depend only on ``(seed, it)``).

Several processes (``accelerate launch``): each trains on a contiguous slice of the same
global batch, with the timesteps and noise drawn for the global batch (so every image gets
what it gets in one process), its loss divided by the number of processes and the gradients
summed over processes before clipping: the one-process step up to floating-point summation
order. Checkpoints (global iteration, no process-dependent state), samples and metrics are
written by the main process; a run resumes with any number of processes.

On CUDA the UNet and its inputs are channels-last, the timesteps and noise of iteration
``it`` are drawn on the GPU (from a generator seeded with ``(seed, it)`` as on the CPU, where
they are drawn on the CPU and nothing of this applies) and the loader pins its batches.
Images are decoded, cropped and resized in the loader's workers (``num_workers``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from diffdass.data.folder import (
    DomainSpec,
    FolderDataset,
    StreamBatchSampler,
    StreamDataset,
    tensor_to_image,
)
from diffdass.data.scan import SplitScan, scan_split
from diffdass.data.transforms import Resize, train_transform
from diffdass.diffusion.moments import EpsMoments, estimate_eps_moments
from diffdass.diffusion.sampler import as_eps_fn, reverse, toolkit_options
from diffdass.diffusion.schedule import DDPMSchedule
from diffdass.models.ema import EMA
from diffdass.models.unet import build_unet
from diffdass.training import Hook, LoggingConfig, TrainLoop, first_last
from diffdass.utils import distributed as dist
from diffdass.utils.checkpoint import load_checkpoint, read_meta, save_checkpoint
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
from diffdass.utils.io import save_image
from diffdass.utils.rng import derive_seed, seeded_generator
from diffdass.utils.run import RunDir


@dataclass
class TrainDDPMConfig:
    """``diffdass train-ddpm``: unconditional DDPM on target images."""

    target: DomainSpec = field(default_factory=DomainSpec)
    unet: str = "small"  # preset of diffdass.models.unet (tiny | small | ddpm256)
    resize: list[int] | None = None  # [H, W] working resolution (default: the images' own)
    # [H, W] random training patches of the working resolution. The UNet is convolutional,
    # so a model trained on patches still translates full images (cheaper training on CPU).
    crop: list[int] | None = None
    hflip: bool = True
    iterations: int = 100000
    batch_size: int = 4
    lr: float = 2e-5
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    warmup: int = 0  # linear lr warm-up iterations
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    ema_warmup: bool = True  # decay min(ema_decay, (1+k)/(10+k)) after k updates
    num_timesteps: int = 1000
    sample_every: int = 5000
    sample_steps: int = 50  # respaced steps for the preview grids only
    n_samples: int = 8
    checkpoint_every: int = 1000
    # keep the EMA weights every this many iterations as checkpoints/snapshot_<it>.safetensors
    # (0: off), e.g. to measure when the sample distance stops improving
    # (studies/ddpm_convergence.py)
    snapshot_every: int = 0
    seed: int = 0
    device: str = "auto"
    amp: Amp = True  # bf16 autocast: true on CUDA only, bf16 also on the CPU, false never
    num_workers: int = 2
    logging: LoggingConfig = field(default_factory=LoggingConfig)  # curves: TensorBoard / W&B

    def validate(self) -> None:
        if not self.target.root:
            raise ConfigError("target.root: the (unlabeled) target dataset is required")
        if self.iterations < 1 or self.batch_size < 1:
            raise ConfigError("iterations and batch_size must be positive")
        if self.snapshot_every < 0:
            raise ConfigError("snapshot_every must be >= 0 (0: no snapshots)")
        if len(self.adam_betas) != 2:
            raise ConfigError("adam_betas must be two numbers")
        for key in ("checkpoint_every", "sample_every", "n_samples", "sample_steps"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        from diffdass.models.unet import UNET_PRESETS, unet_downsample_factor

        if self.unet not in UNET_PRESETS:
            raise ConfigError(
                f"unet: unknown preset {self.unet!r}; one of {', '.join(UNET_PRESETS)}"
            )
        f = unet_downsample_factor(self.unet)
        for key in ("resize", "crop"):
            size = getattr(self, key)
            if size is None:
                continue
            if len(size) != 2 or min(size) <= 0:
                raise ConfigError(f"{key}: expected [H, W] with positive sizes, got {size}")
            if size[0] % f or size[1] % f:
                raise ConfigError(
                    f"{key}: {size[0]}x{size[1]} must be divisible by {f}, the total "
                    f"down-sampling of the {self.unet!r} UNet"
                )
        if (
            self.crop
            and self.resize
            and (self.crop[0] > self.resize[0] or self.crop[1] > self.resize[1])
        ):
            raise ConfigError(
                f"crop {self.crop} is larger than resize {self.resize}: the patches would be "
                "padding, not image"
            )


MOMENT_IMAGES = 16  # target images for the eps moments of the analytic variance
MOMENT_TIMESTEPS = 25  # evenly spaced timesteps they are estimated at (interpolated between)


def ddpm_moments(meta: dict) -> EpsMoments | None:
    """The eps moments stored in a DDPM checkpoint's meta (None for checkpoints without)."""
    d = meta.get("eps_moments")
    return EpsMoments.from_dict(d) if d else None


def estimate_moments(unet, dataset, schedule: DDPMSchedule, device, seed: int) -> EpsMoments:
    """Noise-prediction error of ``unet`` on up to MOMENT_IMAGES images of ``dataset``."""
    n = min(MOMENT_IMAGES, len(dataset))
    x = torch.stack([dataset[i]["image"] for i in range(n)]).to(device)
    g = torch.Generator().manual_seed(derive_seed(seed, 77))
    eps_fn = as_eps_fn(unet)
    batches = [x[i : i + 16] for i in range(0, n, 16)]
    return estimate_eps_moments(eps_fn, schedule, batches, MOMENT_TIMESTEPS, g)


def read_ddpm_meta(path: str | Path) -> dict:
    """The meta of a ``train-ddpm`` checkpoint, after checking the file exists and is one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: DDPM checkpoint not found")
    meta = read_meta(path)
    if "unet" not in meta or "sample_size" not in meta:
        raise ValueError(f"{path}: not a diffdass DDPM checkpoint")
    return meta


def load_ddpm(path: str | Path, device="cpu", use_ema: bool = True):
    """(UNet with EMA weights, meta) from a ``train-ddpm`` checkpoint, in eval mode on
    ``device`` (channels-last there when it is CUDA).

    ``meta["eps_moments"]`` (when present) holds the moments of the analytic reverse variance;
    :func:`ddpm_moments` turns it into an :class:`EpsMoments`.
    """
    path = Path(path)
    meta = read_ddpm_meta(path)
    unet = build_unet(meta["unet"], sample_size=tuple(meta["sample_size"]))
    load_checkpoint(path, {"ema" if use_ema else "unet": unet})
    return channels_last(unet.to(device).eval(), torch.device(device)), meta


@torch.no_grad()
def sample_images(
    unet,
    schedule: DDPMSchedule,
    n: int,
    size,
    steps: int,
    seed: int,
    device,
    moments: EpsMoments,
    batch_size: int = 16,
) -> torch.Tensor:
    """``n`` unconditional samples in [-1, 1], ``steps`` respaced ancestral steps with the
    analytic variance and x_0 clipping (the translation sampler, started from pure noise).
    The noise is drawn on ``device`` when it is CUDA, else on the CPU (seeded_generator)."""
    sched = schedule.respace(min(steps, schedule.num_timesteps))
    opts = toolkit_options(moments)
    g = seeded_generator(seed, device)
    out = []
    for s in range(0, n, batch_size):
        x = torch.randn((min(batch_size, n - s), 3, *size), generator=g, device=g.device)
        x = x.to(device)
        x = reverse(x, sched.num_timesteps, as_eps_fn(unet), sched, generator=g, options=opts)
        out.append(x.float().clamp(-1, 1).cpu())
    return torch.cat(out)


@torch.no_grad()
def sample_grid(
    unet, schedule: DDPMSchedule, n: int, size, steps: int, seed: int, device, moments: EpsMoments
) -> np.ndarray:
    """``n`` unconditional samples (see :func:`sample_images`) tiled into one uint8 image."""
    x = sample_images(unet, schedule, n, size, steps, seed, device, moments)
    imgs = [tensor_to_image(xi) for xi in x]
    cols = min(4, n)
    rows = math.ceil(n / cols)
    h, w = size
    grid = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i, im in enumerate(imgs):
        r, c = divmod(i, cols)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = im
    return grid


#: what a DDPM run may change when resumed; ``iterations`` may grow (the lr is constant after
#: warm-up, so an extended run equals a straight one), never shrink below what was trained
RESUME_IGNORE = (
    "iterations",
    "num_workers",
    "checkpoint_every",
    "sample_every",
    "snapshot_every",
    "logging",
)


def preflight(cfg: TrainDDPMConfig) -> SplitScan:
    """The config and every image of the target split, checked before anything is written."""
    validate_tree(cfg)
    scan = scan_split(cfg.target.root, cfg.target.split, "none")
    if cfg.crop and not cfg.resize and scan.samples:
        first = scan.dataset()[0]
        h, w = first["image"].shape[-2:]
        if cfg.crop[0] > h or cfg.crop[1] > w:
            raise ConfigError(
                f"crop {cfg.crop} is larger than the images ({first['stem']}: {h}x{w}): the "
                "patches would be mostly padding -- lower crop or set resize"
            )
    return scan


def trained_iterations(run_path: str | Path) -> int:
    """Iterations a DDPM run directory has trained (0 without a checkpoint)."""
    last = Path(run_path) / "checkpoints" / "last.safetensors"
    return int(read_meta(last).get("iteration", 0)) if last.is_file() else 0


def train_ddpm(cfg: TrainDDPMConfig, out: str | Path, progress: bool = True) -> dict:
    """Train (or resume, or extend) the target DDPM; writes ``checkpoints/final.safetensors``."""
    validate_tree(cfg)
    run = RunDir(out, "train-ddpm")
    run.check(cfg, RESUME_IGNORE)
    trained = trained_iterations(run.path)
    if trained > cfg.iterations:
        raise ConfigError(
            f"{run.path}: this DDPM has trained {trained} iterations; iterations={cfg.iterations} "
            "would shrink it, and its checkpoints would be mislabelled -- keep "
            f"--iterations {trained} (or more, to extend it), use one of its snapshots "
            "(snapshot_every), or train the shorter run into a new output directory"
        )
    final = run.ckpt_dir / "final.safetensors"
    done = run.read_metrics()
    if final.is_file() and done and done.get("iterations") == cfg.iterations:
        with dist.main_open(run, cfg, RESUME_IGNORE):
            if dist.is_main() and read_meta(final).get("eps_moments") is None:  # older version
                _add_moments(cfg, final, run)
            run.logger.info("already trained: %s", final)
        dist.barrier()
        return done
    scan = preflight(cfg)
    dist.local_batch_size(cfg.batch_size)  # before anything is written
    with dist.main_open(run, cfg, RESUME_IGNORE):
        out = _train(cfg, run, scan, progress and dist.is_main())
    dist.barrier()  # the checkpoints exist for every process when this returns
    return out


def _sharded_loss(schedule: DDPMSchedule, eps_fn, x0: torch.Tensor, gen, world: int):
    """This process's share of :meth:`DDPMSchedule.training_loss` of the global batch: the
    timesteps and noise are drawn for the global batch in the same order (so ``gen`` advances
    as in one process), this slice's are used; the slice's mean divided by ``world``, so that
    the sum over processes is the global batch's mean (equal slices)."""
    b = x0.shape[0]
    off = dist.batch_offset(b)
    gdev = gen.device
    t = torch.randint(0, schedule.num_timesteps, (b * world,), generator=gen, device=gdev)
    noise = torch.randn((b * world, *x0.shape[1:]), generator=gen, device=gdev, dtype=x0.dtype)
    t, noise = t[off : off + b].to(x0.device), noise[off : off + b].to(x0.device)
    x_t = schedule.q_sample(x0, t, noise)
    pred = eps_fn(x_t, schedule.model_timestep(t))
    if hasattr(pred, "sample"):
        pred = pred.sample
    return torch.nn.functional.mse_loss(pred.float(), noise.float()) / world


def _train(cfg: TrainDDPMConfig, run: RunDir, scan: SplitScan, progress: bool) -> dict:
    final = run.ckpt_dir / "final.safetensors"
    device = dist.device(resolve_device(cfg.device))
    configure_backends(device)
    world, main = dist.world_size(), dist.is_main()
    tf = train_transform(
        crop=tuple(cfg.crop) if cfg.crop else None,
        resize=tuple(cfg.resize) if cfg.resize else None,
        scale=None,
        hflip=cfg.hflip,
    )
    ds = scan.dataset(tf, seed=cfg.seed)
    # the resolution translation runs at and preview grids are drawn at
    full = scan.dataset()
    size = tuple(cfg.resize) if cfg.resize else tuple(full[0]["image"].shape[-2:])
    full_sized = scan.dataset(Resize(*size))
    torch.manual_seed(cfg.seed)
    unet = build_unet(cfg.unet, sample_size=size).to(device)
    dist.broadcast_module(unet)  # several processes: the main one's initial weights
    channels_last(unet, device)
    ema = EMA(unet, decay=cfg.ema_decay, warmup=cfg.ema_warmup)
    opt = torch.optim.Adam(unet.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas))
    schedule = DDPMSchedule(num_timesteps=cfg.num_timesteps)
    eps_fn = as_eps_fn(unet)
    meta = {"unet": cfg.unet, "sample_size": list(size), "num_timesteps": cfg.num_timesteps}
    state = {"ema": ema}

    def load(path: Path) -> int:
        m = load_checkpoint(path, {"unet": unet}, opt, device=device)
        ema_unet = build_unet(cfg.unet, sample_size=size)
        load_checkpoint(path, {"ema": ema_unet}, device="cpu")
        ema_unet = channels_last(ema_unet.to(device), device)  # the layout of the shadow
        state["ema"] = EMA(ema_unet, decay=cfg.ema_decay, warmup=cfg.ema_warmup)
        state["ema"].step = int(m["ema_updates"])
        return int(m["iteration"])

    def save(path: Path, it: int) -> None:
        ema = state["ema"]
        save_checkpoint(
            path,
            {"unet": unet, "ema": ema.shadow_state_dict()},
            opt,
            meta | {"iteration": it, "ema_updates": ema.step},
        )

    def step(it: int, batch: dict) -> dict:
        unet.train()
        lr = cfg.lr * min(1.0, (it + 1) / cfg.warmup) if cfg.warmup else cfg.lr
        for g in opt.param_groups:
            g["lr"] = lr
        gen = seeded_generator(derive_seed(cfg.seed, 3, it), device)
        x0 = batch["image"].to(device, non_blocking=True, memory_format=memory_format(device))
        with autocast(device, cfg.amp):
            if world == 1:
                loss = schedule.training_loss(eps_fn, x0, gen)
            else:
                local = _sharded_loss(schedule, eps_fn, x0, gen, world)
                loss = dist.all_reduce_sum(local.detach())
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"DDPM loss is {loss.item()} at iteration {it}; no checkpoint was written"
            )
        opt.zero_grad(set_to_none=True)
        if world == 1:
            loss.backward()
        else:
            local.backward()
            dist.all_reduce_gradients(unet.parameters())
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
        opt.step()
        state["ema"].update(unet)
        return {"loss": loss.item(), "lr": lr}

    def batches(start: int):
        return torch.utils.data.DataLoader(
            StreamDataset(ds),
            batch_sampler=dist.loader_batch_sampler(
                StreamBatchSampler(len(ds), cfg.batch_size, cfg.seed, start, cfg.iterations)
            ),
            **loader_options(device, cfg.num_workers),
        )

    previews = _Previews(cfg, state, unet, schedule, full_sized, size, meta, device, run)
    result = TrainLoop(
        run,
        "train-ddpm",
        cfg.iterations,
        step,
        batches,
        save,
        load,
        checkpoint_every=cfg.checkpoint_every,
        progress=progress,
        images=lambda batch, _: batch["image"].shape[0],
        hooks=[previews],
        tracking=cfg.logging,
    )()
    ema = state["ema"]
    if main:
        moments = estimate_moments(
            ema.module_copy(unet).eval(), full_sized, schedule, device, cfg.seed
        )
        save_checkpoint(
            final,
            {"ema": ema.shadow_state_dict()},
            None,
            meta | {"iteration": cfg.iterations, "eps_moments": moments.to_dict()},
        )
    losses = result.history
    metrics = {
        "stage": "train-ddpm",
        "iterations": cfg.iterations,
        "unet": cfg.unet,
        "sample_size": list(size),
        **first_last(losses, "loss"),
        "images_per_second": result.images_per_second,
        "checkpoint": str(final),
        "device": str(device),
    }
    if world > 1:
        metrics["processes"] = world
    if main:
        run.write_metrics(metrics)
    return metrics


class _Previews(Hook):
    """Sample grids every ``sample_every`` steps (and at the end) and EMA snapshots every
    ``snapshot_every`` steps (main process, before the step's checkpoint)."""

    def __init__(self, cfg, state, unet, schedule, full_sized, size, meta, device, run):
        self.cfg, self.state, self.unet, self.schedule = cfg, state, unet, schedule
        self.full_sized, self.size, self.meta, self.device = full_sized, size, meta, device
        self.run = run

    def after_step(self, loop, it: int, stats: dict) -> None:
        cfg, step = self.cfg, it + 1
        ema = self.state["ema"]
        if step % cfg.sample_every == 0 or step == cfg.iterations:
            ema_model = ema.module_copy(self.unet).eval()
            moments = estimate_moments(
                ema_model, self.full_sized, self.schedule, self.device, cfg.seed
            )
            grid = sample_grid(
                ema_model,
                self.schedule,
                cfg.n_samples,
                self.size,
                cfg.sample_steps,
                cfg.seed,
                self.device,
                moments,
            )
            save_image(self.run.path / "samples" / f"samples_{step:07d}.png", grid)
            loop.tracker.image("samples", grid, step)
        if cfg.snapshot_every and step % cfg.snapshot_every == 0:
            save_checkpoint(
                self.run.ckpt_dir / f"snapshot_{step:07d}.safetensors",
                {"ema": ema.shadow_state_dict()},
                None,
                self.meta | {"iteration": step},
            )


def _add_moments(cfg: TrainDDPMConfig, final: Path, run) -> None:
    """Estimate the eps moments of a finished checkpoint that lacks them; rewrite it atomically."""
    device = resolve_device(cfg.device)
    configure_backends(device)
    unet, meta = load_ddpm(final, device)
    size = tuple(meta["sample_size"])
    ds = FolderDataset(cfg.target.root, cfg.target.split, labels="none", transform=Resize(*size))
    schedule = DDPMSchedule(num_timesteps=int(meta.get("num_timesteps", 1000)))
    moments = estimate_moments(unet, ds, schedule, device, cfg.seed)
    save_checkpoint(final, {"ema": unet}, None, meta | {"eps_moments": moments.to_dict()})
    run.logger.info("added eps moments (analytic reverse variance) to %s", final)
