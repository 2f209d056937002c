"""``diffdass estimate CONFIG``: how long a pipeline config takes, per stage, here and on N
processes.

Each long stage is built as the config says (architectures, batch sizes, crops, UNet preset,
reverse steps, guidance) on random inputs of the config's sizes -- speed does not depend on
the weights or the pixel values -- and a few warm steps of it are timed on this machine:

==================  ==============================================================
stage               timed unit
==================  ==============================================================
source-only         one training iteration of ``source_only`` (also the oracle's)
ddpm                one DDPM training iteration (forward, backward, clip, Adam, EMA)
ptl translation     one guided reverse call on a batch of ``ptl.translate_batch_size``
ptl fine-tuning     one fine-tuning iteration (L_ada + L_src batches)
evaluation          one validation image (forward, upsampling, arg-max)
==================  ==============================================================

The whole run's work is then counted from the config (iterations, translation batches times
reverse calls of every domain, validation images times the evaluations the pipeline runs)
and multiplied out. The N-process column is a **projection**: it assumes linear scaling
(each process computes 1/N of every global batch and of the evaluation images in the same
time per sample, communication free); translation is shared out by whole batches, so a
domain takes ceil(batches / N) batch times. Not counted: benchmark generation, the AdaBN
statistics pass, stage metrics, the report, process start-up and data loading.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffdass.pipeline.config import load_pipeline_config

ASSUMPTION = (
    "projection for N processes: linear scaling (each process computes 1/N of every global "
    "batch and of the evaluation images at the measured time per sample; communication and "
    "start-up not counted); translation is shared out by whole batches (ceil(batches/N) per "
    "domain)"
)
NOT_COUNTED = "benchmark generation, AdaBN statistics, stage metrics, report, data loading"


@dataclass
class Row:
    """One stage of the projection."""

    stage: str
    unit: str
    seconds_per_unit: float
    units: int  # in the whole run, one process
    units_per_process: float  # the N-process projection's units on each process
    hours: float = field(init=False)
    hours_n: float = field(init=False)

    def __post_init__(self) -> None:
        self.hours = self.seconds_per_unit * self.units / 3600.0
        self.hours_n = self.seconds_per_unit * self.units_per_process / 3600.0


# ------------------------------------------------------------------------- the config


def _image_size(cfg) -> tuple[int, int]:
    """The size of the validation (and, uncropped, training) images."""
    if cfg.benchmark.enabled:
        return (cfg.benchmark.height, cfg.benchmark.width)
    from PIL import Image

    for spec in (cfg.val, cfg.source):
        imgs = Path(spec.root or ".") / spec.split / "images"
        first = next(iter(sorted(imgs.glob("*"))), None) if imgs.is_dir() else None
        if first is not None:
            with Image.open(first) as im:
                return (im.height, im.width)
    from diffdass.utils.config import ConfigError

    raise ConfigError(
        "estimate: cannot tell the image size: no benchmark and no image under "
        f"{cfg.val.root}/{cfg.val.split}/images or {cfg.source.root}/{cfg.source.split}/images"
    )


def _val_images(cfg) -> int:
    if cfg.benchmark.enabled:
        return int(cfg.benchmark.n_target_val)
    imgs = Path(cfg.val.root or ".") / cfg.val.split / "images"
    return sum(1 for _ in imgs.glob("*")) if imgs.is_dir() else 0


def _num_classes(cfg) -> int:
    if not cfg.benchmark.enabled and cfg.source.root:
        from diffdass.data.folder import ClassInfo

        try:
            return ClassInfo.load(cfg.source.root).num_classes
        except Exception:
            pass
    return 19


def _train_size(aug, full: tuple[int, int]) -> tuple[int, int]:
    if aug.crop:
        return tuple(aug.crop)
    if aug.resize:
        return tuple(aug.resize)
    return full


def evaluations(cfg) -> int:
    """Validation passes of ``diffdass run``: g_0, AdaBN, the oracle, g_N and PTL's
    intermediate ones (``eval_every``)."""
    n = 2 + (cfg.oracle is not None)
    if cfg.ptl is not None:
        k = len(cfg.ptl.levels())
        n += 1
        if cfg.ptl.eval_every:
            n += sum(1 for i in range(k) if (i + 1) % cfg.ptl.eval_every == 0 and i + 1 < k)
    return n


# ------------------------------------------------------------------------ measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device, steps: int, warmup: int = 1) -> float:
    """Mean seconds of ``fn()`` over ``steps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / steps


def block_labels(b: int, hw, num_classes: int, present: int = 12) -> torch.Tensor:
    """Labels with ``present`` class blocks per image (street scenes show about 12-14 of
    the 19 classes; LCG's cost grows with the classes present)."""
    h, w = hw
    present = max(1, min(present, num_classes))
    rows = 3 if present >= 3 else 1
    cols = math.ceil(present / rows)
    y = torch.zeros((b, h, w), dtype=torch.long)
    bh, bw = max(1, h // rows), max(1, w // cols)
    for i in range(b):
        for k in range(present):
            r, c = divmod(k, cols)
            y[i, r * bh : (r + 1) * bh, c * bw : (c + 1) * bw] = (k + i) % num_classes
    return y


def _seg_step_time(
    scfg, optim, aug, nm_cfg, batches: int, bs: int, full, nc, device, steps, bn: str = ""
):
    from diffdass.adaptation.augment import NoisyMaskedAugment
    from diffdass.adaptation.seg_training import SegTrainer
    from diffdass.diffusion.schedule import DDPMSchedule
    from diffdass.models.factory import build_segmenter

    size = _train_size(aug, full)
    model = build_segmenter(scfg.arch, nc, pretrained=False)
    nm = None
    if nm_cfg.prob > 0:
        sched = DDPMSchedule()
        nm = NoisyMaskedAugment(sched, nm_cfg.prob, min(nm_cfg.max_timestep, sched.num_timesteps))
    trainer = SegTrainer(
        model,
        optim,
        1000,
        device,
        0,
        True,
        freeze_bn=scfg.freeze_bn or bn == "frozen",
        noisy_masked=nm,
        joint_bn=bn == "joint",
    )
    x = torch.rand(bs, 3, *size) * 2 - 1
    y = block_labels(bs, size, nc)
    it = iter(range(10**9))
    return _time(lambda: trainer.step(next(it), [(x, y)] * batches), device, steps)


def measure(cfg, steps: int = 3, device: torch.device | None = None) -> dict[str, float]:
    """Seconds per unit of every stage of ``cfg`` on this machine (see the module doc)."""
    from diffdass.utils.device import resolve_device

    device = device or resolve_device(cfg.device)
    torch.manual_seed(0)
    full = _image_size(cfg)
    nc = _num_classes(cfg)
    so = cfg.source_only
    out: dict[str, float] = {}
    out["source_only"] = _seg_step_time(
        so.model, so.optim, so.aug, so.noisy_masked, 1, so.batch_size, full, nc, device, steps
    )
    if cfg.ptl is not None:
        out["ddpm"] = _ddpm_step_time(cfg.ddpm, full, device, steps)
        out["ptl_translation"] = _translate_call_time(cfg, full, nc, device, steps)
        p = cfg.ptl
        out["ptl_finetune"] = _seg_step_time(
            so.model,
            p.optim,
            p.aug,
            p.noisy_masked,
            2 if p.loss_src else 1,
            p.batch_size,
            full,
            nc,
            device,
            steps,
            bn=p.bn,
        )
    out["evaluation"] = _eval_image_time(cfg, full, nc, device, steps)
    return out


def _ddpm_step_time(dcfg, full, device, steps: int) -> float:
    from diffdass.diffusion.sampler import as_eps_fn
    from diffdass.diffusion.schedule import DDPMSchedule
    from diffdass.models.ema import EMA
    from diffdass.models.unet import build_unet

    size = tuple(dcfg.resize) if dcfg.resize else full
    crop = tuple(dcfg.crop) if dcfg.crop else size
    unet = build_unet(dcfg.unet, sample_size=size).to(device)
    ema = EMA(unet, decay=dcfg.ema_decay, warmup=dcfg.ema_warmup)
    opt = torch.optim.Adam(unet.parameters(), lr=dcfg.lr, betas=tuple(dcfg.adam_betas))
    schedule = DDPMSchedule(num_timesteps=dcfg.num_timesteps)
    eps_fn = as_eps_fn(unet)
    x0 = (torch.rand(dcfg.batch_size, 3, *crop) * 2 - 1).to(device)
    gen = torch.Generator().manual_seed(0)
    amp = dcfg.amp and device.type == "cuda"

    def step():
        unet.train()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = schedule.training_loss(eps_fn, x0, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if dcfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(unet.parameters(), dcfg.grad_clip)
        opt.step()
        ema.update(unet)

    return _time(step, device, steps)


def _translate_call_time(cfg, full, nc, device, steps: int) -> float:
    """Seconds per reverse call of one guided translation batch (depth n_max)."""
    from diffdass.adaptation.translation import translate_batch
    from diffdass.diffusion.guidance import DEFAULT_SCALE
    from diffdass.diffusion.moments import EpsMoments
    from diffdass.diffusion.schedule import DDPMSchedule
    from diffdass.models.factory import build_segmenter
    from diffdass.models.unet import build_unet

    p, d = cfg.ptl, cfg.ddpm
    size = tuple(d.resize) if d.resize else full
    tsize = tuple(p.translate_size) if p.translate_size else _train_size(p.aug, full)
    unet = build_unet(d.unet, sample_size=size).to(device).eval()
    seg = build_segmenter(cfg.source_only.model.arch, nc, pretrained=False).to(device).eval()
    schedule = DDPMSchedule(num_timesteps=d.num_timesteps)
    n = min(p.n_max, schedule.num_timesteps)
    calls = max(1, min(p.reverse_calls(n) if p.domains == "spread" else n, max(2, steps)))
    t_max = schedule.num_timesteps - 1
    moments = EpsMoments((0, t_max), (0.05, 0.95))  # any values: the cost is the same
    x0 = (torch.rand(p.translate_batch_size, 3, *tsize) * 2 - 1).to(device)
    y = block_labels(p.translate_batch_size, tsize, nc).to(device)
    # the cost does not depend on the strength: `scale: auto` is timed at the default value
    guide = (
        dataclasses.replace(p.guidance, scale=DEFAULT_SCALE) if p.guidance.is_auto else p.guidance
    )

    def run(k: int):
        g = torch.Generator().manual_seed(0)
        translate_batch(
            x0, y, n, unet, schedule, seg, guide, g, k, 0, p.sampler, moments
        )  # fmt: skip

    run(1)  # warm-up
    return _time(lambda: run(calls), device, 1, warmup=0) / calls


def _eval_image_time(cfg, full, nc, device, steps: int) -> float:
    from diffdass.evaluation.evaluate import predict
    from diffdass.models.factory import build_segmenter

    model = build_segmenter(cfg.source_only.model.arch, nc, pretrained=False).to(device).eval()
    size = cfg.evaluation.input_size
    img = (torch.rand(1, 3, *full) * 2 - 1).to(device)
    return _time(lambda: predict(model, img, full, size).argmax(1), device, max(steps, 3))


# ------------------------------------------------------------------------ projecting


def project(cfg, measured: dict[str, float], processes: int = 1) -> list[Row]:
    """The rows of the table: ``measured`` seconds per unit times the config's units."""
    w = max(1, int(processes))
    rows = []
    so = cfg.source_only
    rows.append(
        Row(
            "source-only training",
            f"iteration (batch {so.batch_size})",
            measured["source_only"],
            so.iterations,
            so.iterations / w,
        )
    )
    if cfg.oracle is not None:
        rows.append(
            Row(
                "oracle training",
                f"iteration (batch {so.batch_size})",
                measured["source_only"],
                so.iterations,
                so.iterations / w,
            )
        )
    if cfg.ptl is not None:
        d, p = cfg.ddpm, cfg.ptl
        rows.append(
            Row(
                "DDPM training",
                f"iteration (batch {d.batch_size})",
                measured["ddpm"],
                d.iterations,
                d.iterations / w,
            )
        )
        per_domain = p.translated_per_domain()
        nb = math.ceil(per_domain / p.translate_batch_size)
        calls = [p.reverse_calls(n) if p.domains == "spread" else n for n in p.levels()]
        rows.append(
            Row(
                "PTL translation",
                f"reverse call (batch {p.translate_batch_size})",
                measured["ptl_translation"],
                nb * sum(calls),
                math.ceil(nb / w) * sum(calls),
            )
        )
        ft = len(p.levels()) * p.iterations_per_domain
        rows.append(
            Row(
                "PTL fine-tuning",
                f"iteration (batch {p.batch_size}{' x 2' if p.loss_src else ''})",
                measured["ptl_finetune"],
                ft,
                ft / w,
            )
        )
    n_eval = _val_images(cfg) * evaluations(cfg)
    rows.append(
        Row(
            "evaluation",
            f"image ({evaluations(cfg)} passes of {_val_images(cfg)})",
            measured["evaluation"],
            n_eval,
            math.ceil(_val_images(cfg) / w) * evaluations(cfg),
        )
    )
    return rows


def format_table(rows: list[Row], processes: int, meta: dict) -> str:
    n = processes
    lines = [
        f"estimate of {meta['config']} on {meta['device']} (torch {meta['torch']}, "
        f"{meta['threads']} threads; {meta['steps']} timed steps per stage)",
        "",
        f"| stage | unit | s/unit | units | hours, 1 process | hours, {n} processes (projection) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.stage} | {r.unit} | {r.seconds_per_unit:.4g} | {r.units} | "
            f"{r.hours:.3f} | {r.hours_n:.3f} |"
        )
    t1, tn = sum(r.hours for r in rows), sum(r.hours_n for r in rows)
    lines.append(f"| **total** | | | | **{t1:.3f}** | **{tn:.3f}** |")
    lines += ["", ASSUMPTION + ".", f"not counted: {NOT_COUNTED}."]
    for note in meta.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def divisibility_notes(cfg, processes: int) -> list[str]:
    """Batch sizes a run on ``processes`` processes would refuse (not divisible)."""
    out = []
    checks = [("source_only.batch_size", cfg.source_only.batch_size)]
    if cfg.ptl is not None:
        checks += [("ddpm.batch_size", cfg.ddpm.batch_size), ("ptl.batch_size", cfg.ptl.batch_size)]
    for name, bs in checks:
        if processes > 1 and bs % processes:
            out.append(f"{name}={bs} is not divisible by {processes}: such a run is refused")
    return out


def run_estimate(
    config: Path | None,
    sets: list[str] | None = None,
    processes: int = 8,
    steps: int = 3,
    json_path: Path | None = None,
    device: str | None = None,
    echo=print,
    measure_fn=None,
) -> dict:
    """Measure, project, print the table; ``json_path``: also write everything as JSON."""
    from diffdass.utils.config import ConfigError
    from diffdass.utils.device import resolve_device
    from diffdass.utils.io import write_json

    if processes < 1 or steps < 1:
        raise ConfigError("--processes and --steps must be >= 1")
    cfg = load_pipeline_config(config, sets, device=device)
    dev = resolve_device(cfg.device)
    measured = (measure_fn or measure)(cfg, steps, dev)
    rows = project(cfg, measured, processes)
    meta = {
        "config": str(config) if config else "the built-in benchmark config",
        "device": str(dev) if dev.type != "cuda" else f"{dev} ({torch.cuda.get_device_name(dev)})",
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "steps": steps,
        "processes": processes,
        "notes": divisibility_notes(cfg, processes),
    }
    echo(format_table(rows, processes, meta))
    doc = {
        "meta": meta,
        "seconds_per_unit": measured,
        "rows": [r.__dict__ for r in rows],
        "total_hours": sum(r.hours for r in rows),
        "total_hours_n": sum(r.hours_n for r in rows),
        "assumption": ASSUMPTION,
        "not_counted": NOT_COUNTED,
    }
    if json_path is not None:
        write_json(Path(json_path), doc)
    return doc
