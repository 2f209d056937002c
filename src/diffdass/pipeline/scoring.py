"""Scoring a run's models on the labeled target split: any checkpoint (a segmenter or CICLD),
and the AdaBN baseline (a checkpoint with target BatchNorm statistics)."""

from __future__ import annotations

from pathlib import Path

from diffdass.data.folder import DomainSpec
from diffdass.pipeline.config import EvalSpec, PipelineConfig
from diffdass.utils.io import read_json, write_json


def load_for_evaluation(ckpt: Path, device):
    """The inference model of a checkpoint: a CICLD model (:func:`load_cicld`) or a plain
    segmenter (:func:`load_segmenter`), told apart by the ``arch`` of its metadata."""
    from diffdass.models.factory import load_segmenter
    from diffdass.utils.checkpoint import read_meta

    if read_meta(ckpt).get("arch") == "cicld":
        from diffdass.adaptation.cicld import load_cicld

        return load_cicld(ckpt, device)[0]
    return load_segmenter(ckpt, device)[0]


def evaluate_checkpoint(ckpt: Path, val: DomainSpec, ev: EvalSpec, out: Path, device: str) -> dict:
    """Score a segmenter (or CICLD) checkpoint on the labeled target split (cached in
    out/metrics.json)."""
    from diffdass.evaluation.evaluate import evaluate
    from diffdass.utils.device import resolve_device

    mpath = out / "metrics.json"
    if mpath.is_file() and mpath.stat().st_mtime >= ckpt.stat().st_mtime:
        return read_json(mpath)
    dev = resolve_device(device)
    model = load_for_evaluation(ckpt, dev)
    from diffdass.data.scan import scan_split

    ds = scan_split(val.root, val.split, "required").dataset()
    res = evaluate(
        model,
        ds,
        ev.class_sets,
        dev,
        ev.input_size,
        out / "predictions",
        ev.save_predictions,
        progress=False,
    )
    res |= {
        "checkpoint": str(ckpt),
        "checkpoint_kind": "last",
        "dataset": f"{val.root}:{val.split}",
    }
    write_json(mpath, res)
    return res


def adabn_baseline(cfg: PipelineConfig, g0: Path, out: Path, echo=print) -> dict | None:
    """AdaBN (no training): g_0 (or any segmenter checkpoint, e.g. g_N for AdaBN on top) with
    BatchNorm statistics re-estimated on the unlabeled target train images, scored like every
    other row. Cached: reruns only when the checkpoint changed. None for a segmenter without
    BatchNorm (nothing to re-estimate)."""
    import torch

    from diffdass.adaptation.adabn import adabn, batchnorm_layers
    from diffdass.data.transforms import Resize
    from diffdass.models.factory import load_segmenter
    from diffdass.utils.checkpoint import read_meta, save_checkpoint
    from diffdass.utils.device import resolve_device

    ckpt = out / "checkpoints" / "final.safetensors"
    if not ckpt.is_file() or ckpt.stat().st_mtime < g0.stat().st_mtime:
        dev = resolve_device(cfg.device)
        model, _ = load_segmenter(g0, dev)
        if not batchnorm_layers(model):
            echo("AdaBN: the segmenter has no BatchNorm layer; baseline not applicable")
            return None
        size = cfg.evaluation.input_size
        tf = Resize(*size) if size else None
        from diffdass.data.scan import scan_split

        ds = scan_split(cfg.target.root, cfg.target.split, "none").dataset(tf)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=max(2, cfg.source_only.batch_size), shuffle=False
        )
        info = adabn(model, loader, dev)
        echo(f"AdaBN: {info['layers']} BatchNorm layers re-estimated on {info['images']} images")
        save_checkpoint(ckpt, {"model": model}, None, read_meta(g0) | {"adabn": info})
    return evaluate_checkpoint(ckpt, cfg.val, cfg.evaluation, out / "eval", cfg.device)


def adapt_batchnorm(model, images, device, what: str = "AdaBN", batch_size: int = 16) -> dict:
    """Re-estimate ``model``'s BatchNorm statistics on the dataset ``images`` (in place):
    :func:`~diffdass.adaptation.adabn.adabn` over batches of ``batch_size``. Raises a
    :class:`ConfigError` naming ``what`` for a model without BatchNorm."""
    import torch

    from diffdass.adaptation.adabn import adabn, batchnorm_layers
    from diffdass.utils.config import ConfigError

    if not batchnorm_layers(model):
        raise ConfigError(f"{what}: the model has no BatchNorm layer; nothing to re-estimate")
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=False)
    return adabn(model, loader, device)


def evaluate_stage(cfg: PipelineConfig, out: Path, name: str) -> dict:
    """Score stage ``name``'s final checkpoint on target val into ``out/<name>/eval``."""
    ckpt = out / name / "checkpoints" / "final.safetensors"
    return evaluate_checkpoint(ckpt, cfg.val, cfg.evaluation, out / name / "eval", cfg.device)


#: target-val images the CICLD probes read (the first ones of the split)
PROBE_IMAGES = 100


def cicld_probes(cfg: PipelineConfig, out: Path) -> dict:
    """The two shares that say what CICLD's diffusion path carries, measured on the first
    :data:`PROBE_IMAGES` labeled target images and cached in ``out/cicld_probes/probes.json``:
    ``cicld_noise_probe`` (pixels whose class changes when the denoised latent is replaced by
    noise) and ``cicld_condition_probe`` (pixels whose class changes when the ground-truth
    label conditions the denoiser instead of no condition; ``None`` without conditioning).
    The labels only feed the probe; no model or setting is chosen by it."""
    from diffdass.adaptation.cicld import load_cicld
    from diffdass.data.scan import scan_split
    from diffdass.evaluation.cicld_probe import noise_probe, probe_condition
    from diffdass.utils.device import resolve_device

    ckpt = out / "cicld" / "checkpoints" / "final.safetensors"
    path = out / "cicld_probes" / "probes.json"
    if path.is_file() and path.stat().st_mtime >= ckpt.stat().st_mtime:
        return read_json(path)
    seg, _ = load_cicld(ckpt, resolve_device(cfg.device))
    ds = scan_split(cfg.val.root, cfg.val.split, "required").dataset()
    cond = probe_condition(seg.net, ds, PROBE_IMAGES, seg.t_start, seg.steps)
    res = {
        "cicld_noise_probe": noise_probe(seg, ds, PROBE_IMAGES),
        "cicld_condition_probe": cond["argmax_changed_pct"] / 100 if cond else None,
        "images": min(PROBE_IMAGES, len(ds)),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, res)
    return res
