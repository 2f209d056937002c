"""Choosing the guidance strength for a new domain pair without target labels.

Guidance trades two things. Stronger guidance keeps more of the source label's semantics in
the translated image (label consistency), but past some strength it pushes the image away from
the target domain, or merely fools the guiding segmenter (an adversarial perturbation that
another model does not see). The calibration measures both along a sweep of strengths and
picks the knee:

1. translate ``images`` fixed source images at depth ``n`` (the deepest PTL domain) with the
   run's sampler, guided by g_0 at every strength of the sweep (strength 0 = unguided; the
   same noise for every strength, so differences come from the guidance alone);
2. **label consistency** of each set, judged by an **independent** source-only model (the
   *judge*: trained on the source labels with another seed, never guiding): its mIoU against
   the source labels. The guiding model's own consistency is recorded too (for the
   adversarial check), and a target oracle's when one exists (evidence only, never used to
   choose);
3. **distance to the target**: patch SWD (:mod:`diffdass.evaluation.distance`) to unlabeled
   target train images;
4. the **knee** (:func:`knee`): the distance stays nearly flat for weak guidance and then
   climbs; the knee is where it leaves a band of ``tolerance`` (default 20%) above the unguided
   distance. Among the strengths inside the band, the one the judge finds most consistent is
   chosen (ties: the weaker); if none raises the judge's consistency, guidance is switched off
   (strength 0). The rule does not depend on how far the sweep extends, and it stops the sweep
   after ``stop_after`` consecutive strengths outside the band (the distance only grows with
   the strength). With ``refine`` (default), one more strength, the geometric mean of the
   chosen one and the next one tried, is measured and the choice made again among all points:
   the doubling sweep is cheap, and the refinement halves its step where it matters.

No target label is read. The result (``calibration.json``, and ``curve.png`` in a run) holds
every point of the sweep, so the choice can be checked and overridden by hand.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from diffdass.adaptation.translation import GuidanceConfig, SamplerConfig
from diffdass.utils.config import ConfigError
from diffdass.utils.io import save_image, write_json

__all__ = ["CalibrationSpec", "calibrate_guidance", "knee", "sweep_strengths"]


@dataclass
class CalibrationSpec:
    """How ``guidance.scale: auto`` is resolved (``calibration`` block of a run config)."""

    # strengths tried (0 = unguided is always added); the classifier scale of guidance.reduction
    strengths: list[float] = field(
        default_factory=lambda: [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64]
    )
    images: int = 24  # source images translated per strength
    target_images: int = 100  # unlabeled target train images the distance is measured to
    n: int | None = None  # depth (default: the deepest PTL domain)
    # the band: a strength may raise the SWD to the target by at most this fraction
    tolerance: float = 0.2
    # stop after this many consecutive strengths outside the band (0: always the whole sweep)
    stop_after: int = 2
    # the judge: g_0's recipe with this seed offset and (if set) this many iterations
    # after the sweep, try one more strength halfway (geometric mean) between the chosen one
    # and the next one tried, and choose again among all points
    refine: bool = True
    judge_seed_offset: int = 1000
    judge_iterations: int | None = None

    def validate(self) -> None:
        if not self.strengths or min(self.strengths) < 0:
            raise ConfigError("calibration.strengths: a non-empty list of numbers >= 0")
        if self.images < 2 or self.target_images < 2:
            raise ConfigError("calibration.images and target_images must be >= 2")
        if not 0 < self.tolerance:
            raise ConfigError("calibration.tolerance must be > 0")
        if self.stop_after < 0:
            raise ConfigError("calibration.stop_after must be >= 0")
        if self.n is not None and self.n < 1:
            raise ConfigError("calibration.n must be >= 1 (or null for the deepest domain)")
        if self.judge_iterations is not None and self.judge_iterations < 1:
            raise ConfigError("calibration.judge_iterations must be >= 1 (or null)")

    def sweep(self) -> list[float]:
        """The strengths in increasing order, 0 included once."""
        return sorted({0.0, *(float(s) for s in self.strengths)})


def knee(
    strengths: list[float], consistency: list[float], distance: list[float], tolerance: float
) -> int:
    """Index of the chosen strength (see the module docstring): the most consistent strength
    whose distance is within ``(1 + tolerance)`` of the unguided one, the weaker on ties, 0
    when none is more consistent than unguided. ``strengths[0]`` must be 0 (the reference)."""
    if not (len(strengths) == len(consistency) == len(distance)) or not strengths:
        raise ValueError("strengths, consistency and distance must have the same, non-zero length")
    if strengths[0] != 0:
        raise ValueError("the first strength must be 0 (the unguided reference)")
    band = (1.0 + tolerance) * distance[0]
    inside = [i for i, d in enumerate(distance) if d <= band]
    best = max(consistency[i] for i in inside)
    if best <= consistency[0]:
        return 0
    return next(i for i in inside if consistency[i] >= best)


def calibrate_guidance(
    *,
    source: tuple[str, str],
    target: tuple[str, str],
    ddpm: str | Path,
    guide: str | Path,
    judge: str | Path,
    guidance: GuidanceConfig,
    sampler: SamplerConfig,
    n: int,
    respace_steps: int | None,
    spec: CalibrationSpec,
    out: str | Path,
    oracle: str | Path | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict:
    """Run the sweep, choose the knee, write ``out/calibration.json``; returns the result.

    ``guide`` is g_0 (the model that guides PTL's first domain), ``judge`` an independent
    source-only model, ``oracle`` an optional target-trained model (reported, never used)."""
    from diffdass.adaptation.ddpm_training import ddpm_moments, load_ddpm
    from diffdass.adaptation.stage_metrics import (
        oracle_consistency,
        stack_images,
        translate_images,
    )
    from diffdass.data.folder import FolderDataset
    from diffdass.data.transforms import Resize
    from diffdass.diffusion.schedule import DDPMSchedule
    from diffdass.evaluation.distance import image_set_distance
    from diffdass.models.factory import load_segmenter
    from diffdass.utils.progress import Progress

    spec.validate()
    if guidance.kind == "none":
        raise ConfigError("guidance.kind is 'none': there is no strength to calibrate")
    t0 = time.perf_counter()
    unet, meta = load_ddpm(ddpm, device)
    moments = ddpm_moments(meta)
    schedule = DDPMSchedule(num_timesteps=int(meta.get("num_timesteps", 1000)))
    if not 1 <= n <= schedule.num_timesteps:
        raise ConfigError(f"calibration depth n = {n} outside 1..{schedule.num_timesteps}")
    tf = Resize(*tuple(meta["sample_size"]))
    src_ds = FolderDataset(source[0], source[1], "required", transform=tf)
    xs, ys = stack_images(src_ds, spec.images, with_labels=True)
    tgt_ds = FolderDataset(target[0], target[1], "none", transform=tf)
    xt, _ = stack_images(tgt_ds, spec.target_images)
    classes = src_ds.classes
    g0 = load_segmenter(guide, device)[0].eval()
    models = {"judge": load_segmenter(judge, device)[0].eval(), "guide": g0}
    if oracle:
        models["oracle"] = load_segmenter(oracle, device)[0].eval()

    def scores(x: torch.Tensor) -> dict:
        row = {"distance": float(image_set_distance(x, xt, seed=seed)["swd"])}
        for name, model in models.items():
            row[f"{name}_consistency"] = oracle_consistency(model, x, ys, classes, device)
        return row

    pictures = {}  # the sheet: source, then every strength, for 4 images
    x_ref = None

    def measure(s: float) -> dict:
        nonlocal x_ref
        g = replace(guidance, kind="none") if s == 0 else replace(guidance, scale=float(s))
        x = translate_images(
            xs, ys, n, unet, schedule, g0, g, sampler, moments, respace_steps, seed, device
        )
        point = {"strength": s, **scores(x), "rms_change_vs_unguided": None}
        if s == 0:
            x_ref = x
        else:
            point["rms_change_vs_unguided"] = float((x - x_ref).pow(2).mean().sqrt())
        pictures[s] = x[:4]
        return point

    bar = Progress(
        len(spec.sweep()) + int(spec.refine),
        0,
        "calibrate guidance",
        enabled=progress,
        unit="strength",
    )
    points, i = sweep_strengths(spec, measure, lambda s: bar.update(1, strength=s))
    bar.close()
    tried = [p["strength"] for p in points]
    source = scores(xs)  # the untranslated images: distance and every model's consistency
    result = {
        "chosen_strength": tried[i],
        "rule": (
            f"the judge's most consistent strength whose SWD to the target is within "
            f"{100 * spec.tolerance:g}% of the unguided one"
        ),
        "tolerance": spec.tolerance,
        "reduction": guidance.reduction,
        "kind": guidance.kind,
        "n": n,
        "reverse_steps": respace_steps,
        "images": len(xs),
        "target_images": len(xt),
        "source_consistency": {k: v for k, v in source.items() if k != "distance"},
        "source_distance": source["distance"],
        "points": points,
        "judge": str(judge),
        "guide": str(guide),
        "oracle": str(oracle) if oracle else None,
        "seconds": time.perf_counter() - t0,
        "note": "no target label was read to choose; the oracle column is evidence only",
    }
    write_json(Path(out) / "calibration.json", result)
    save_image(Path(out) / "translations.png", _sheet([xs[:4], *(pictures[t] for t in tried)]))
    return result


def sweep_strengths(spec: CalibrationSpec, measure, done=lambda s: None) -> tuple[list, int]:
    """The sweep and the choice, given ``measure(strength) -> {"judge_consistency",
    "distance", ...}``: every strength of ``spec.sweep()`` in increasing order until
    ``spec.stop_after`` consecutive ones leave the band, then (``spec.refine``) the geometric
    mean of the chosen strength and the next one tried. Returns the points (increasing
    strength; a refined one has ``"refined": True``) and the chosen index."""
    points: list[dict] = []
    outside = 0
    for s in spec.sweep():
        if spec.stop_after and outside >= spec.stop_after:
            break  # the distance only grows with the strength
        points.append(measure(s))
        band = (1.0 + spec.tolerance) * points[0]["distance"]
        outside = outside + 1 if points[-1]["distance"] > band else 0
        done(s)
    i = knee(*_curve(points), spec.tolerance)
    if spec.refine and 0 < i < len(points) - 1:
        # one more point halfway (geometrically) to the next strength tried
        mid = float(f"{(points[i]['strength'] * points[i + 1]['strength']) ** 0.5:.3g}")
        points.insert(i + 1, {**measure(mid), "refined": True})
        done(mid)
        i = knee(*_curve(points), spec.tolerance)
    return points, i


def _curve(points: list[dict]) -> tuple[list[float], list[float], list[float]]:
    """(strengths, judge consistency, distance) of the points, for :func:`knee`."""
    return (
        [p["strength"] for p in points],
        [p["judge_consistency"] for p in points],
        [p["distance"] for p in points],
    )


def _sheet(columns: list[torch.Tensor]):
    """Rows = images, columns = the source then the translation at every strength tried."""
    from diffdass.adaptation.translation import preview_sheet
    from diffdass.data.folder import tensor_to_image

    return preview_sheet(
        [[tensor_to_image(col[r]) for col in columns] for r in range(len(columns[0]))]
    )


def won_back(result: dict, judge: str = "judge") -> float | None:
    """Share of the label consistency that unguided translation loses, won back at the
    chosen strength, under ``judge`` (``judge`` or ``oracle``); None when nothing is lost."""
    pts = {p["strength"]: p for p in result["points"]}
    key = f"{judge}_consistency"
    src = result["source_consistency"].get(key)
    base, chosen = pts[0.0].get(key), pts[result["chosen_strength"]].get(key)
    if src is None or base is None or chosen is None or src - base <= 0:
        return None
    share = (chosen - base) / (src - base)
    return share if math.isfinite(share) else None
