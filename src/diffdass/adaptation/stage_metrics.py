"""Measure each stage of the method, not only the end: DDPM samples and translations along n.

``measure_stages`` scores, against the labeled target split (the same one the segmenters are
evaluated on):

- the **floor** and **ceiling** of the distance: target train vs target val (two samples of
  the target) and untranslated source vs target val;
- the **DDPM**: its unconditional samples (pure noise, 50 respaced analytic steps), and its
  **round trip at each depth n**: target train images diffused to t = n and denoised with the
  translation's own sampler, unguided. Translation only ever evaluates the UNet at t < n, so
  this is the DDPM check that matters for PTL: a DDPM that is accurate over [0, n) returns
  target images that are as close to target val as the originals (the floor), whatever its
  unconditional samples from t = T look like;
- the **translations** phi^n of a fixed subset of source images at every PTL depth n, unguided
  (the baseline) and guided by g_0 with the run's guidance: their distance to the target and,
  when a target oracle is given, their **label consistency** (the oracle's mIoU against the
  source labels: did the translation keep the label's semantics?).

The distance is the patch sliced Wasserstein distance of :mod:`diffdass.evaluation.distance`
(x1e3): it needs no downloaded weights and sees colour and texture statistics at patch scale,
which is what a translation should change. It does not see semantics: that is what label
consistency is for. A picture (source | translations along n | guided at N | a target image)
goes with the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffdass.adaptation.translation import GuidanceConfig, SamplerConfig, translate_batch
from diffdass.data.folder import FolderDataset, tensor_to_image
from diffdass.data.transforms import Resize
from diffdass.diffusion.schedule import DDPMSchedule
from diffdass.evaluation.distance import image_set_distance
from diffdass.evaluation.evaluate import evaluate, resolve_class_sets
from diffdass.utils.io import save_image, write_json

__all__ = [
    "StageMetricsSpec",
    "measure_stages",
    "oracle_consistency",
    "stack_images",
    "translate_images",
]


@dataclass
class StageMetricsSpec:
    """What ``diffdass run`` measures per stage (``stage_metrics`` block of its config)."""

    enabled: bool = True
    images: int = 48  # source images translated per setting (and DDPM samples drawn)
    levels: list[int] | None = None  # depths n (default: the PTL domains)
    guided: bool = True  # also translate guided by g_0 (the guidance of the PTL config)


def stack_images(ds: FolderDataset, n: int, with_labels: bool = False):
    """The first ``n`` images of ``ds`` as one tensor (and their labels, or None)."""
    items = [ds[i] for i in range(min(n, len(ds)))]
    x = torch.stack([it["image"] for it in items])
    y = torch.stack([it["label"] for it in items]) if with_labels else None
    return x, y


def oracle_consistency(oracle, x: torch.Tensor, y: torch.Tensor, classes, device) -> float:
    """The oracle's mIoU (%) on translated images ``x`` against the source labels ``y``."""

    class _Mem(torch.utils.data.Dataset):
        has_labels = True
        root = Path("<translated images>")

        def __init__(self):
            self.classes = classes

        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return {"image": x[i], "label": y[i], "stem": f"{i:05d}", "index": i}

    sets = ["19"] if classes.num_classes == 19 else ["all"]
    resolve_class_sets(sets, classes.num_classes)
    res = evaluate(oracle, _Mem(), sets, device, progress=False)
    return float(next(iter(res["miou"].values())))


@torch.no_grad()
def translate_images(x, y, n, unet, schedule, seg, guidance, sampler, moments, steps, seed, device):
    """Translate ``x`` (labels ``y``) with ``n`` noising steps in batches of 16, ``steps``
    respaced reverse steps, guided by ``seg`` unless ``guidance.kind == 'none'``; on CPU."""
    out = []
    for b in range(0, len(x), 16):
        g = torch.Generator().manual_seed(seed * 7919 + b)
        xb = x[b : b + 16].to(device)
        yb = y[b : b + 16].to(device)
        with torch.enable_grad():
            out.append(
                translate_batch(
                    xb, yb, n, unet, schedule, seg, guidance, g, steps, seed, sampler, moments
                ).cpu()
            )
    return torch.cat(out)


def measure_stages(
    *,
    source: tuple[str, str],
    target_train: tuple[str, str],
    val: tuple[str, str],
    ddpm: str | Path,
    g0: str | Path,
    oracle: str | Path | None,
    levels: list[int],
    respace_steps: int | None,
    guidance: GuidanceConfig,
    sampler: SamplerConfig,
    out: str | Path,
    images: int = 48,
    guided: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
    judge: str | Path | None = None,
) -> dict:
    """Score DDPM samples and translations along ``levels``; writes ``out/stage_metrics.json``
    and ``out/translations.png``. Returns the metrics.

    ``judge``: an independent source-only model (the calibration's): its label consistency is
    reported beside the oracle's as ``*_judge_consistency``."""
    from diffdass.adaptation.ddpm_training import ddpm_moments, load_ddpm, sample_images
    from diffdass.models.factory import load_segmenter

    out = Path(out)
    unet, meta = load_ddpm(ddpm, device)
    moments = ddpm_moments(meta)
    schedule = DDPMSchedule(num_timesteps=int(meta.get("num_timesteps", 1000)))
    size = tuple(meta["sample_size"])
    tf = Resize(*size)
    src_ds = FolderDataset(source[0], source[1], "required", transform=tf)
    xs, ys = stack_images(src_ds, images, with_labels=True)
    xt, _ = stack_images(
        FolderDataset(target_train[0], target_train[1], "none", transform=tf), images
    )
    val_ds = FolderDataset(val[0], val[1], "none", transform=tf)
    xv, _ = stack_images(val_ds, len(val_ds))
    yt = torch.zeros((len(xt), *xt.shape[2:]), dtype=torch.long)  # unused: unguided
    classes = src_ds.classes
    oracle_model = load_segmenter(oracle, device)[0] if oracle else None
    seg = load_segmenter(g0, device)[0].eval() if guided and guidance.kind != "none" else None

    def dist(x: torch.Tensor) -> float:
        return float(image_set_distance(x, xv, seed=seed)["swd"])

    judge_model = load_segmenter(judge, device)[0] if judge else None

    def cons(x: torch.Tensor) -> float | None:
        return oracle_consistency(oracle_model, x, ys, classes, device) if oracle_model else None

    def jcons(x: torch.Tensor) -> dict:
        if judge_model is None:
            return {}
        return {"judge_consistency": oracle_consistency(judge_model, x, ys, classes, device)}

    metrics: dict = {
        "distance": "patch SWD x1e3 to target val (diffdass.evaluation.distance)",
        "images": len(xs),
        "floor_target_train": dist(xt),
        "ceiling_source": dist(xs),
        "source_consistency": cons(xs),
        **{f"source_{k}": v for k, v in jcons(xs).items()},
    }
    samples = sample_images(unet, schedule, len(xs), size, 50, seed, device, moments)
    metrics["ddpm_samples"] = dist(samples)
    rows, pics = [], {0: xs}
    none = GuidanceConfig(kind="none")
    for n in levels:
        base = translate_images(
            xs, ys, n, unet, schedule, None, none, sampler, moments, respace_steps, seed, device
        )
        pics[n] = base
        row = {"n": n, "baseline_distance": dist(base), "baseline_consistency": cons(base)}
        row |= {f"baseline_{k}": v for k, v in jcons(base).items()}
        back = translate_images(
            xt, yt, n, unet, schedule, None, none, sampler, moments, respace_steps, seed, device
        )
        row["target_roundtrip_distance"] = dist(back)
        if seg is not None:
            gd = translate_images(
                xs,
                ys,
                n,
                unet,
                schedule,
                seg,
                guidance,
                sampler,
                moments,
                respace_steps,
                seed,
                device,
            )
            row |= {"guided_distance": dist(gd), "guided_consistency": cons(gd)}
            row |= {f"guided_{k}": v for k, v in jcons(gd).items()}
            pics[-1] = gd
        rows.append(row)
    metrics["along_n"] = rows
    write_json(out / "stage_metrics.json", metrics)
    save_image(out / "translations.png", _sheet(pics, xt, samples))
    return metrics


def _sheet(
    pics: dict[int, torch.Tensor], target: torch.Tensor, samples: torch.Tensor
) -> np.ndarray:
    """Rows of 4 images: source, unguided phi^n along n, guided at N (if any), a target image,
    a DDPM sample."""
    keys = sorted(k for k in pics if k >= 0) + ([-1] if -1 in pics else [])
    rows = []
    for i in range(min(4, len(target), len(pics[0]))):
        row = [tensor_to_image(pics[k][i]) for k in keys]
        row += [tensor_to_image(target[i]), tensor_to_image(samples[i])]
        rows.append(row)
    h, w = rows[0][0].shape[:2]
    sheet = np.full((len(rows) * (h + 2), len(rows[0]) * (w + 2), 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            sheet[r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = im
    return sheet
