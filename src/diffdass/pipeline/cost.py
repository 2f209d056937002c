"""The cost model of a pipeline config: floating-point operations per stage, counted without
data, weights or an accelerator (``diffdass estimate CONFIG --gpu NAME``).

Every network the run evaluates is built on PyTorch's ``meta`` device (shapes only, no
memory, no arithmetic) and one call of it on one image is run under
:class:`torch.utils.flop_counter.FlopCounterMode`, which counts the multiply-adds of
convolutions, matrix products and attention (2 FLOP each) forward and backward; element-wise
work (norms, activations, interpolation, the optimiser) is not counted. A stage's FLOPs are
these per-image counts times the number of calls the config implies:

=====================  =====================================================================
stage                  FLOPs
=====================  =====================================================================
source-only, oracle,   iterations x batch x T_seg(train size); T = forward + backward with
judge                  weight gradients
DDPM training          iterations x batch x T_unet(crop)
calibration            (strengths + 1) x images x translation(n_cal) (an upper bound: the
                       sweep may stop early) + the judge's forward per translated image
PTL translation        sum over domains of translated images x translation(n_k)
PTL fine-tuning        domains x iterations x batch x (T_seg(L_ada size) + T_seg(crop) if L_src)
evaluation             evaluations x val images x F_seg(input size)
AdaBN                  (1 + AdaBN on top) x target images x F_seg(train size)
stage metrics          levels x images x (2 unguided + 1 guided translations) + 50-step DDPM
                       samples
=====================  =====================================================================

``translation(n) = calls(n) x F_unet + (guided steps) x passes x G_seg`` at the translation
size, with ``calls(n)`` the reverse calls (``reverse_steps`` of a spread schedule, else n),
``G_seg`` a segmenter forward plus its input gradient (weights frozen), and passes per step:
GSG 1, LCG one per class present in the label (``estimate.classes_present``, street scenes
show about 12 of 19) in the ``batched`` and ``loop`` modes or 1 in ``single_pass``; SGG
alternates them (ceil(calls/2) LCG steps). Guidance at ``input: x0_unet`` also
back-propagates through the UNet (counted as 2 more UNet forwards per guided step).

Hours = FLOPs / (peak x fraction) of a named device (:data:`DEVICES`): its dense bf16 peak and
the fraction of it an eager PyTorch run reaches, stated per device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from diffdass.utils.config import ConfigError


@dataclass(frozen=True)
class Device:
    """A device of the cost model: its dense bf16 peak and the fraction of it a run reaches."""

    name: str
    peak_flops: float  # dense bf16, FLOP/s
    fraction: float  # of the peak an eager run of this toolkit reaches
    basis: str  # where the fraction comes from

    @property
    def flops_per_second(self) -> float:
        return self.peak_flops * self.fraction


#: named devices of ``diffdass estimate --gpu``. GPU fractions are assumptions until a GPU
#: check measures them (docs/performance.md); the CPU's is measured.
DEVICES: dict[str, Device] = {
    "h100": Device(
        "NVIDIA H100 SXM", 989e12, 0.3, "assumed: 30% of the bf16 peak (eager, convnets)"
    ),
    "h200": Device("NVIDIA H200", 989e12, 0.3, "assumed: 30% of the bf16 peak (eager, convnets)"),
    "a100": Device(
        "NVIDIA A100 SXM", 312e12, 0.3, "assumed: 30% of the bf16 peak (eager, convnets)"
    ),
    "cpu": Device(
        "2-core AMD EPYC (avx512_bf16), this project's CI machine",
        415e9,
        0.26,
        "measured: the built-in `diffdass run`'s counted FLOPs over its stage times "
        "(docs/performance.md)",
    ),
}


@dataclass
class Sizes:
    """The data sizes a run's cost depends on."""

    image: tuple[int, int]  # [H, W] of the validation images (and uncropped training images)
    val_images: int
    target_images: int
    num_classes: int
    classes_present: int


def data_sizes(cfg) -> Sizes:
    """Sizes from the config's ``estimate`` section, else the built-in benchmark, else the data
    on disk; a :class:`ConfigError` names the keys to set when none of them says."""
    e = cfg.estimate
    image, val, tgt = e.image_size, e.val_images, e.target_images
    if cfg.benchmark.enabled:
        b = cfg.benchmark
        image = image or [b.height, b.width]
        val = val if val is not None else b.n_target_val
        tgt = tgt if tgt is not None else b.n_target_train
    image = image or _first_image_size(cfg)
    val = val if val is not None else _count_images(cfg.val)
    tgt = tgt if tgt is not None else _count_images(cfg.target)
    missing = [
        k
        for k, v in (("image_size", image), ("val_images", val), ("target_images", tgt))
        if v is None
    ]
    if missing:
        raise ConfigError(
            "estimate: the data is not on disk and the config does not say "
            + ", ".join(f"estimate.{k}" for k in missing)
            + " (set them, e.g. --set estimate.image_size=[1024,2048] --set "
            "estimate.val_images=500 --set estimate.target_images=2975)"
        )
    if len(image) != 2 or min(image) <= 0:
        raise ConfigError(f"estimate.image_size: expected [H, W], got {image}")
    return Sizes(tuple(int(v) for v in image), int(val), int(tgt), 19, int(e.classes_present))


def _images_dir(spec) -> Path | None:
    d = Path(spec.root or ".") / spec.split / "images"
    return d if spec.root and d.is_dir() else None


def _first_image_size(cfg) -> list[int] | None:
    from PIL import Image

    for spec in (cfg.val, cfg.source):
        d = _images_dir(spec)
        first = next(iter(sorted(d.glob("*"))), None) if d else None
        if first is not None:
            with Image.open(first) as im:
                return [im.height, im.width]
    return None


def _count_images(spec) -> int | None:
    d = _images_dir(spec)
    return sum(1 for _ in d.glob("*")) if d else None


# --------------------------------------------------------------------- counting one call


def _on_meta(build, *args, **kwargs) -> torch.nn.Module:
    """The model ``build`` makes, on the meta device: built there directly (no memory), or,
    for a model whose constructor reads values (e.g. ``.item()`` of drop-path rates), built
    on the CPU and moved."""
    try:
        with torch.device("meta"):
            return build(*args, **kwargs)
    except (RuntimeError, NotImplementedError):
        return build(*args, **kwargs).to("meta")


class FlopCounts:
    """Per-image FLOPs of the networks of a config, counted once each on the meta device."""

    def __init__(self, seg_arch: str, num_classes: int, unet: str, unet_size) -> None:
        self.seg_arch, self.num_classes = seg_arch, num_classes
        self.unet_preset, self.unet_size = unet, tuple(unet_size)
        self._cache: dict[tuple, int] = {}
        self._seg = self._unet = None

    def _segmenter(self):
        if self._seg is None:
            from diffdass.models.factory import build_segmenter

            self._seg = _on_meta(build_segmenter, self.seg_arch, self.num_classes, False)
        return self._seg

    def _unet_model(self):
        if self._unet is None:
            from diffdass.models.unet import build_unet

            self._unet = _on_meta(build_unet, self.unet_preset, sample_size=self.unet_size)
        return self._unet

    def _count(self, key: tuple, fn) -> int:
        if key not in self._cache:
            counter = FlopCounterMode(display=False)
            with counter:
                fn()
            self._cache[key] = int(counter.get_total_flops())
        return self._cache[key]

    def seg_forward(self, size) -> int:
        """One image through the segmenter, no gradient (evaluation, AdaBN, judging)."""
        from diffdass.utils.modules import output_logits

        def run():
            m = self._segmenter().eval()
            with torch.no_grad():
                output_logits(m(torch.empty(1, 3, *size, device="meta")))

        return self._count(("seg_fwd", tuple(size)), run)

    def seg_train(self, size) -> int:
        """One image of a training step: forward, cross-entropy, backward with weight grads."""
        from diffdass.utils.modules import output_logits

        def run():
            m = self._segmenter().train()
            for p in m.parameters():
                p.requires_grad_(True)
            logits = output_logits(m(torch.empty(1, 3, *size, device="meta")))
            y = torch.zeros((1, *logits.shape[-2:]), dtype=torch.long, device="meta")
            F.cross_entropy(logits, y).backward()

        return self._count(("seg_train", tuple(size)), run)

    def seg_input_grad(self, size) -> int:
        """One guidance pass: forward and the gradient with respect to the input only."""
        from diffdass.utils.modules import output_logits

        def run():
            m = self._segmenter().eval()
            for p in m.parameters():
                p.requires_grad_(False)
            x = torch.empty(1, 3, *size, device="meta", requires_grad=True)
            logits = output_logits(m(x))
            y = torch.zeros((1, *logits.shape[-2:]), dtype=torch.long, device="meta")
            F.cross_entropy(logits, y).backward()  # only x needs a gradient

        return self._count(("seg_grad", tuple(size)), run)

    def unet_forward(self, size) -> int:
        def run():
            u = self._unet_model().eval()
            with torch.no_grad():
                u(torch.empty(1, 3, *size, device="meta"), torch.zeros(1, device="meta").long())

        return self._count(("unet_fwd", tuple(size)), run)

    def unet_train(self, size) -> int:
        def run():
            u = self._unet_model().train()
            x = torch.empty(1, 3, *size, device="meta")
            out = u(x, torch.zeros(1, device="meta").long()).sample
            F.mse_loss(out, x).backward()

        return self._count(("unet_train", tuple(size)), run)


# --------------------------------------------------------------------------- the stages


@dataclass
class StageCost:
    """One stage of the model: its FLOPs, and whether it runs on N processes."""

    stage: str
    unit: str
    flops_per_unit: float
    units: int
    # the share of the one-process time each of N processes spends (1: the stage refuses
    # several processes at this config, or is not split)
    share: float = 1.0
    note: str = ""

    @property
    def flops(self) -> float:
        return self.flops_per_unit * self.units


def train_size(aug, full) -> tuple[int, int]:
    if aug.crop:
        return tuple(aug.crop)
    if aug.resize:
        return tuple(aug.resize)
    return tuple(full)


def guided_steps(guidance, calls: int) -> tuple[int, int]:
    """(LCG steps, GSG steps) of a chain of ``calls`` guided reverse steps."""
    if guidance.kind == "none":
        return 0, 0
    if guidance.kind == "lcg":
        return calls, 0
    if guidance.kind == "gsg":
        return 0, calls
    n_lcg = math.ceil(calls / 2)
    return n_lcg, calls - n_lcg


def translation_flops(counts: FlopCounts, guidance, calls: int, size, classes: int) -> int:
    """One image translated with ``calls`` reverse steps at ``size`` (see the module doc)."""
    n_lcg, n_gsg = guided_steps(guidance, calls)
    lcg_passes = 1 if guidance.lcg_mode == "single_pass" else classes
    passes = n_lcg * lcg_passes + n_gsg
    total = calls * counts.unet_forward(size) + passes * counts.seg_input_grad(size)
    if guidance.input == "x0_unet":
        total += 2 * (n_lcg + n_gsg) * counts.unet_forward(size)
    return total


def batch_processes(batch: int, processes: int) -> int:
    """The processes a training stage runs on out of ``processes``: the largest count that
    divides its global batch (what ``diffdass launch-plan`` launches it on)."""
    return max(d for d in range(1, processes + 1) if batch % d == 0)


def _batch_share(batch: int, processes: int) -> float:
    return 1.0 / batch_processes(batch, processes)


def _item_share(items: int, processes: int) -> float:
    """Work shared out by whole items (translation batches, evaluation images)."""
    return math.ceil(items / processes) / items if items else 1.0


def stage_costs(cfg, processes: int = 1) -> list[StageCost]:
    """The FLOPs of every stage ``diffdass run`` runs for ``cfg`` (module doc)."""
    from diffdass.pipeline.estimate import evaluations
    from diffdass.pipeline.guidance import calibration_depth, judge_config, needs_calibration

    sizes = data_sizes(cfg)
    so, p, d = cfg.source_only, cfg.ptl, cfg.ddpm
    ddpm_size = tuple(d.resize) if d.resize else sizes.image
    counts = FlopCounts(so.model.arch, sizes.num_classes, d.unet, ddpm_size)
    g0_size = train_size(so.aug, sizes.image)
    g0_it = counts.seg_train(g0_size)
    w = processes
    rows = [
        StageCost(
            "source-only training",
            f"iteration (batch {so.batch_size})",
            so.batch_size * g0_it,
            so.iterations,
            _batch_share(so.batch_size, w),
        )
    ]
    if cfg.oracle is not None:
        rows.append(
            StageCost(
                "oracle training",
                f"iteration (batch {so.batch_size})",
                so.batch_size * g0_it,
                so.iterations,
                _batch_share(so.batch_size, w),
            )
        )
    eval_size = tuple(cfg.evaluation.input_size or sizes.image)
    if p is not None:
        tsize = tuple(p.translate_size) if p.translate_size else train_size(p.aug, sizes.image)
        crop = tuple(d.crop) if d.crop else ddpm_size
        rows.append(
            StageCost(
                "DDPM training",
                f"iteration (batch {d.batch_size})",
                d.batch_size * counts.unet_train(crop),
                d.iterations,
                _batch_share(d.batch_size, w),
            )
        )
        spread = p.domains == "spread"
        if needs_calibration(cfg):
            judge = judge_config(cfg)
            rows.append(
                StageCost(
                    "judge training",
                    f"iteration (batch {judge.batch_size})",
                    judge.batch_size * g0_it,
                    judge.iterations,
                    _batch_share(judge.batch_size, w),
                )
            )
            c = cfg.calibration
            n_cal = calibration_depth(cfg)
            per_image = translation_flops(
                counts,
                p.guidance,
                p.reverse_calls(n_cal) if spread else n_cal,
                tsize,
                sizes.classes_present,
            ) + counts.seg_forward(tsize)
            rows.append(
                StageCost(
                    "guidance calibration",
                    f"image translated at n={n_cal} and judged",
                    per_image,
                    (len(c.strengths) + 1) * c.images,
                    1.0,
                    "upper bound: the sweep may stop early",
                )
            )
        per_domain = p.translated_per_domain()
        flops = sum(
            per_domain
            * translation_flops(
                counts,
                p.guidance,
                p.reverse_calls(n) if spread else n,
                tsize,
                sizes.classes_present,
            )
            for n in p.levels()
        )
        images = per_domain * len(p.levels())
        rows.append(
            StageCost(
                "PTL translation",
                f"image translated ({len(p.levels())} domains x {per_domain})",
                flops / images,
                images,
                _item_share(math.ceil(per_domain / p.translate_batch_size), w),
            )
        )
        ada = counts.seg_train(tsize if p.translate_size else train_size(p.aug, sizes.image))
        src = counts.seg_train(train_size(p.aug, sizes.image)) if p.loss_src else 0
        ft = len(p.levels()) * p.iterations_per_domain
        rows.append(
            StageCost(
                "PTL fine-tuning",
                f"iteration (batch {p.batch_size}{' x 2' if p.loss_src else ''})",
                p.batch_size * (ada + src),
                ft,
                # PTL runs on all N (translation); its fine-tuning is data-parallel only if N
                # divides the batch, else the main process fine-tunes alone
                1.0 / w if p.batch_size % w == 0 else 1.0,
                "" if p.batch_size % w == 0 else "the main process fine-tunes alone",
            )
        )
        sm = cfg.stage_metrics
        if sm.enabled:
            levels = sm.levels or p.levels()
            unguided = dict(kind="none")
            per_level = 0
            for n in levels:
                calls = p.reverse_calls(n) if spread else n
                plain = translation_flops(
                    counts,
                    _Guidance(**unguided),
                    calls,
                    tsize,
                    sizes.classes_present,
                )
                guided = (
                    translation_flops(counts, p.guidance, calls, tsize, sizes.classes_present)
                    if sm.guided
                    else 0
                )
                per_level += 2 * plain + guided
            samples = 50 * counts.unet_forward(ddpm_size)
            rows.append(
                StageCost(
                    "stage metrics",
                    f"image ({len(levels)} depths, translated 3x; DDPM samples)",
                    per_level + samples,
                    sm.images,
                    1.0,
                )
            )
    n_eval = evaluations(cfg)
    rows.append(
        StageCost(
            "evaluation",
            f"image ({n_eval} passes of {sizes.val_images})",
            counts.seg_forward(eval_size),
            n_eval * sizes.val_images,
            _item_share(sizes.val_images, w),
        )
    )
    adabn_passes = 1 + bool(cfg.evaluation.adabn_on_top and p is not None)
    rows.append(
        StageCost(
            "AdaBN statistics",
            f"target image ({adabn_passes} passes of {sizes.target_images})",
            counts.seg_forward(g0_size),
            adabn_passes * sizes.target_images,
            1.0,
        )
    )
    return rows


@dataclass
class _Guidance:
    """The guidance keys :func:`translation_flops` reads (for the unguided translations)."""

    kind: str = "none"
    lcg_mode: str = "batched"
    input: str = "x_t"


def hours(rows: list[StageCost], device: Device) -> list[dict]:
    """Per stage: FLOPs, hours on one ``device`` and on the N processes ``rows`` were counted
    for (stages that refuse several processes stay at one)."""
    out = []
    for r in rows:
        h = r.flops / device.flops_per_second / 3600.0
        out.append(
            {
                "stage": r.stage,
                "unit": r.unit,
                "flops_per_unit": r.flops_per_unit,
                "units": r.units,
                "flops": r.flops,
                "hours": h,
                "hours_n": h * r.share,
                "note": r.note,
            }
        )
    return out
