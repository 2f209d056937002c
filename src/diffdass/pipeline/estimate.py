"""``diffdass estimate CONFIG``: how long a pipeline config takes, per stage, on one device
and on N processes, with no data on disk.

The work of every stage is counted in FLOPs by the cost model (:mod:`diffdass.pipeline.cost`).
Time comes from one of two rates:

- ``--gpu h100|h200|a100|cpu``: a named device's bf16 peak times the fraction of it a run
  reaches (:data:`diffdass.pipeline.cost.DEVICES`); nothing is built or timed.
- otherwise, measured here: each long stage is built as the config says (architectures, batch
  sizes, crops, UNet preset, reverse steps, guidance) on random inputs of the config's sizes
  -- speed does not depend on the weights or the pixel values -- and a few warm steps of it
  are timed on this machine, which gives this machine's FLOP rate per kind of work:

==================  ==========================================  ==========================
timed unit          rate used for                               how
==================  ==========================================  ==========================
training iteration  source-only, oracle, judge training         ``source_only``'s step
DDPM iteration      DDPM training                               forward, backward, Adam, EMA
reverse call        PTL translation, calibration, stage metrics an even number of L/G
                                                                steps after one L and one
                                                                G warm-up step
fine-tuning step    PTL fine-tuning                             L_ada (+ L_src) batches
validation image    evaluation, AdaBN statistics                forward, upsampling, arg-max
image decode        data loading (a row of its own)             PNG of the config's size,
                                                                decoded and resized
==================  ==========================================  ==========================

The N-process column divides only the stages that accept N processes at this config
(:mod:`diffdass.pipeline.cost`: training stages whose global batch N divides, translation by
whole batches, evaluation by images); the others stay at their one-process time.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import time
from pathlib import Path

import torch

from diffdass.pipeline.config import load_pipeline_config

NOT_COUNTED = (
    "benchmark generation, the report, element-wise work (norms, activations, the optimiser)"
)


# ------------------------------------------------------------------------- the config


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

    size = train_size_of(aug, full)
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
    from diffdass.pipeline.cost import data_sizes

    torch.manual_seed(0)
    sizes = data_sizes(cfg)
    full, nc = sizes.image, sizes.num_classes
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
    from diffdass.utils.device import autocast

    size = tuple(dcfg.resize) if dcfg.resize else full
    crop = tuple(dcfg.crop) if dcfg.crop else size
    unet = build_unet(dcfg.unet, sample_size=size).to(device)
    ema = EMA(unet, decay=dcfg.ema_decay, warmup=dcfg.ema_warmup)
    opt = torch.optim.Adam(unet.parameters(), lr=dcfg.lr, betas=tuple(dcfg.adam_betas))
    schedule = DDPMSchedule(num_timesteps=dcfg.num_timesteps)
    eps_fn = as_eps_fn(unet)
    x0 = (torch.rand(dcfg.batch_size, 3, *crop) * 2 - 1).to(device)
    gen = torch.Generator().manual_seed(0)

    def step():
        unet.train()
        with autocast(device, dcfg.amp):
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
    tsize = tuple(p.translate_size) if p.translate_size else train_size_of(p.aug, full)
    unet = build_unet(d.unet, sample_size=size).to(device).eval()
    seg = build_segmenter(cfg.source_only.model.arch, nc, pretrained=False).to(device).eval()
    schedule = DDPMSchedule(num_timesteps=d.num_timesteps)
    n = min(p.n_max, schedule.num_timesteps)
    # an even number of calls: as many LCG as GSG steps of an alternating SGG
    calls = min(timed_calls(cfg, steps), n)
    t_max = schedule.num_timesteps - 1
    moments = EpsMoments((0, t_max), (0.05, 0.95))  # any values: the cost is the same
    x0 = (torch.rand(p.translate_batch_size, 3, *tsize) * 2 - 1).to(device)
    y = block_labels(p.translate_batch_size, tsize, nc, cfg.estimate.classes_present)
    y = y.to(device)
    # the cost does not depend on the strength: `scale: auto` is timed at the default value
    guide = (
        dataclasses.replace(p.guidance, scale=DEFAULT_SCALE) if p.guidance.is_auto else p.guidance
    )

    def run(k: int):
        g = torch.Generator().manual_seed(0)
        translate_batch(
            x0, y, n, unet, schedule, seg, guide, g, k, 0, p.sampler, moments
        )  # fmt: skip

    run(min(2, n))  # warm-up: one LCG and one GSG step
    return _time(lambda: run(calls), device, 1, warmup=0) / calls


def _eval_image_time(cfg, full, nc, device, steps: int) -> float:
    from diffdass.evaluation.evaluate import predict
    from diffdass.models.factory import build_segmenter

    model = build_segmenter(cfg.source_only.model.arch, nc, pretrained=False).to(device).eval()
    size = cfg.evaluation.input_size
    img = (torch.rand(1, 3, *full) * 2 - 1).to(device)
    return _time(lambda: predict(model, img, full, size).argmax(1), device, max(steps, 3))


# ------------------------------------------------------------------------ projecting

#: which measured rate times each stage of the cost model (see the module doc)
RATE_OF = {
    "source-only training": "source_only",
    "oracle training": "source_only",
    "judge training": "source_only",
    "DDPM training": "ddpm",
    "guidance calibration": "ptl_translation",
    "PTL translation": "ptl_translation",
    "stage metrics": "ptl_translation",
    "PTL fine-tuning": "ptl_finetune",
    "evaluation": "evaluation",
    "AdaBN statistics": "evaluation",
}


def unit_flops(cfg) -> dict[str, float]:
    """FLOPs of each timed unit of :func:`measure` (to turn its seconds into FLOP rates)."""
    from diffdass.pipeline.cost import FlopCounts, data_sizes, train_size, translation_flops

    sizes = data_sizes(cfg)
    so, d, p = cfg.source_only, cfg.ddpm, cfg.ptl
    ddpm_size = tuple(d.resize) if d.resize else sizes.image
    counts = FlopCounts(so.model.arch, sizes.num_classes, d.unet, ddpm_size)
    out = {"source_only": so.batch_size * counts.seg_train(train_size(so.aug, sizes.image))}
    out["evaluation"] = counts.seg_forward(tuple(cfg.evaluation.input_size or sizes.image))
    if p is not None:
        out["ddpm"] = d.batch_size * counts.unet_train(tuple(d.crop) if d.crop else ddpm_size)
        tsize = tuple(p.translate_size) if p.translate_size else train_size(p.aug, sizes.image)
        calls = timed_calls(cfg, 2)
        per_image = translation_flops(counts, p.guidance, calls, tsize, sizes.classes_present)
        out["ptl_translation"] = p.translate_batch_size * per_image / calls
        crop = train_size(p.aug, sizes.image)
        ada = counts.seg_train(tsize if p.translate_size else crop)
        out["ptl_finetune"] = p.batch_size * (ada + (counts.seg_train(crop) if p.loss_src else 0))
    return out


def timed_calls(cfg, steps: int) -> int:
    """Reverse calls timed per translation: even (as many LCG as GSG steps), at least 2."""
    return 2 * max(1, math.ceil(steps / 2))


def decode_seconds(size: tuple[int, int], train: tuple[int, int], repeats: int = 3) -> float:
    """Seconds to decode one PNG of ``size`` and resize it to ``train`` (one thread)."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, format="PNG")
    data = buf.getvalue()
    t0 = time.perf_counter()
    for _ in range(repeats):
        with Image.open(io.BytesIO(data)) as im:
            im.convert("RGB").resize((train[1], train[0]), Image.BILINEAR)
    return (time.perf_counter() - t0) / repeats


def images_read(cfg) -> int:
    """Images the run decodes: training batches, PTL's source images and validation passes."""
    from diffdass.pipeline.cost import data_sizes

    so, p, d = cfg.source_only, cfg.ptl, cfg.ddpm
    n = so.iterations * so.batch_size * (1 + (cfg.oracle is not None))
    if p is not None:
        n += d.iterations * d.batch_size
        n += len(p.levels()) * (
            p.translated_per_domain()
            + (p.iterations_per_domain * p.batch_size if p.loss_src else 0)
        )
    return n + evaluations(cfg) * data_sizes(cfg).val_images


def table(cfg, processes: int, rate: dict[str, float] | float, decode: float | None) -> list[dict]:
    """The rows: per stage FLOPs, hours on one device and on ``processes``. ``rate``: one FLOP
    rate for every stage (a named device) or the measured rate per timed unit."""
    from diffdass.pipeline.cost import stage_costs

    rows = []
    for c in stage_costs(cfg, processes):
        r = rate if isinstance(rate, float) else rate[RATE_OF[c.stage]]
        h = c.flops / r / 3600.0
        rows.append(
            {
                "stage": c.stage,
                "unit": c.unit,
                "units": c.units,
                "flops": c.flops,
                "tflop_per_s": r / 1e12,
                "hours": h,
                "hours_n": h * c.share,
                "note": c.note,
            }
        )
    if decode is not None:
        n = images_read(cfg)
        h = decode * n / 3600.0
        rows.append(
            {
                "stage": "data loading",
                "unit": f"image decoded ({n} in all)",
                "units": n,
                "flops": 0.0,
                "tflop_per_s": None,
                "hours": h,
                "hours_n": h / processes,
                "note": "one thread; DataLoader workers overlap it with compute",
            }
        )
    return rows


def format_table(rows: list[dict], processes: int, meta: dict) -> str:
    n = processes
    lines = [
        f"estimate of {meta['config']} on {meta['device']} ({meta['basis']})",
        "",
        f"| stage | unit | units | TFLOP | TFLOP/s | hours, 1 process | hours, {n} processes |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        rate = f"{r['tflop_per_s']:.3g}" if r["tflop_per_s"] else ""
        note = f" ({r['note']})" if r["note"] else ""
        lines.append(
            f"| {r['stage']} | {r['unit']}{note} | {r['units']} | {r['flops'] / 1e12:.4g} | "
            f"{rate} | {r['hours']:.3f} | {r['hours_n']:.3f} |"
        )
    t1, tn = sum(r["hours"] for r in rows), sum(r["hours_n"] for r in rows)
    lines.append(f"| **total** | | | | | **{t1:.3f}** | **{tn:.3f}** |")
    lines += ["", f"not counted: {NOT_COUNTED}."]
    for note in meta.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def divisibility_notes(cfg, processes: int) -> list[str]:
    """Batch sizes a run on ``processes`` processes would refuse (not divisible)."""
    out = []
    checks = [("source_only.batch_size", cfg.source_only.batch_size)]
    if cfg.ptl is not None:
        checks += [("ddpm.batch_size", cfg.ddpm.batch_size)]
    from diffdass.pipeline.cost import batch_processes

    for name, bs in checks:
        if processes > 1 and bs % processes:
            out.append(
                f"{name}={bs} is not divisible by {processes}: that stage runs on "
                f"{batch_processes(bs, processes)} processes (the global batch stays {bs})"
            )
    return out


def run_estimate(
    config: Path | None,
    sets: list[str] | None = None,
    processes: int = 8,
    steps: int = 4,
    json_path: Path | None = None,
    flags: dict | None = None,
    echo=print,
    measure_fn=None,
    gpu: str | None = None,
) -> dict:
    """Count, time (unless ``gpu`` names a device), print the table; ``json_path``: also write
    it as JSON (``total_hours``: one device, the whole pipeline)."""
    from diffdass.pipeline.cost import DEVICES, data_sizes
    from diffdass.utils.config import ConfigError
    from diffdass.utils.device import resolve_device
    from diffdass.utils.io import write_json

    if processes < 1 or steps < 1:
        raise ConfigError("--processes and --steps must be >= 1")
    cfg = load_pipeline_config(config, sets, **(flags or {}))
    sizes = data_sizes(cfg)
    meta = {
        "config": str(config) if config else "the built-in benchmark config",
        "torch": torch.__version__,
        "processes": processes,
        "image_size": list(sizes.image),
        "val_images": sizes.val_images,
        "target_images": sizes.target_images,
        "notes": divisibility_notes(cfg, processes),
    }
    if gpu is not None:
        if gpu not in DEVICES:
            raise ConfigError(f"--gpu {gpu}: expected one of {', '.join(DEVICES)}")
        dev = DEVICES[gpu]
        meta |= {
            "device": dev.name,
            "basis": f"{dev.fraction:.0%} of {dev.peak_flops / 1e12:g} TFLOP/s bf16: {dev.basis}",
        }
        rows = table(cfg, processes, dev.flops_per_second, None)
        measured = None
    else:
        dev = resolve_device(cfg.device)
        measured = (measure_fn or measure)(cfg, steps, dev)
        flops = unit_flops(cfg)
        rate = {k: flops[k] / measured[k] for k in measured}
        so = cfg.source_only
        decode = decode_seconds(sizes.image, train_size_of(so.aug, sizes.image))
        name = str(dev) if dev.type != "cuda" else f"{dev} ({torch.cuda.get_device_name(dev)})"
        meta |= {
            "device": name,
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "steps": steps,
            "basis": f"rates measured here, {steps} timed steps per unit",
        }
        rows = table(cfg, processes, rate, decode)
    echo(format_table(rows, processes, meta))
    doc = {
        "meta": meta,
        "seconds_per_unit": measured,
        "stages": rows,
        "total_hours": sum(r["hours"] for r in rows),
        "total_hours_n": sum(r["hours_n"] for r in rows),
        "total_flops": sum(r["flops"] for r in rows),
        "not_counted": NOT_COUNTED,
    }
    if json_path is not None:
        write_json(Path(json_path), doc)
    return doc


def train_size_of(aug, full) -> tuple[int, int]:
    from diffdass.pipeline.cost import train_size

    return train_size(aug, full)
