"""Evaluate a segmenter on a labeled split: confusion-matrix mIoU, per-class IoU table,
colourised predictions.

Protocol (the papers' and the Cityscapes benchmark's): the image may be fed at a reduced ``input_size``
(Cityscapes: 1024x512), and the logits are upsampled bilinearly to the full label
resolution before the arg-max. Every metrics file states which checkpoint was scored;
we always score the *last* checkpoint of a run, never the best one on target val.
The result also holds ``inference_ms_per_image``: the mean wall time of the forward pass
(plus upsampling and arg-max) per image, batch 1, first image excluded (the paper's Table 4).

Several processes (``accelerate launch``): each scores every ``processes``-th image and the
confusion matrices are summed over processes, so the metrics equal the one-process ones
exactly (integer pixel counts); each process saves the predictions of its own images.

Images are decoded by ``num_workers`` loader workers (0: in this process) while the model
runs; on CUDA they arrive in pinned memory, the forward runs under bf16 autocast unless
``amp=False``, and the backends are tuned (:func:`~diffdass.utils.device.configure_backends`).
On the CPU none of this changes a number.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffdass.data.folder import FolderDataset
from diffdass.data.labels import CLASS_SETS, colorize
from diffdass.evaluation.metrics import ConfusionMatrix
from diffdass.utils import distributed as dist
from diffdass.utils.device import configure_backends, loader_options
from diffdass.utils.io import save_image
from diffdass.utils.progress import Progress


def resolve_class_sets(
    names: list[str] | tuple[str, ...], num_classes: int
) -> dict[str, tuple[int, ...]]:
    """``"all"`` -> every class; ``"19"``/``"16"``/``"13"`` -> the Cityscapes subsets."""
    out = {}
    for name in names:
        if name == "all":
            out[f"all{num_classes}"] = tuple(range(num_classes))
            continue
        if name not in CLASS_SETS:
            raise ValueError(
                f"unknown class set {name!r}; use 'all' or one of {sorted(CLASS_SETS)}"
            )
        ids = CLASS_SETS[name]
        if max(ids) >= num_classes:
            raise ValueError(
                f"class set {name} needs the 19 Cityscapes classes but the dataset has "
                f"{num_classes}; score every class of your dataset with --class-sets all "
                "(config: evaluation.class_sets: [all])"
            )
        out[name] = ids
    return out


@torch.no_grad()
def predict(
    model: torch.nn.Module, images: torch.Tensor, out_size, input_size=None, amp: bool = False
):
    """Logits upsampled to ``out_size`` (H, W); images optionally resized to ``input_size`` first."""
    if input_size is not None and tuple(images.shape[-2:]) != tuple(input_size):
        images = F.interpolate(images, size=tuple(input_size), mode="bilinear", align_corners=False)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and images.is_cuda):
        logits = model(images)
    return F.interpolate(logits.float(), size=tuple(out_size), mode="bilinear", align_corners=False)


def evaluate(
    model: torch.nn.Module,
    dataset: FolderDataset,
    class_sets=("19",),
    device: torch.device | str = "cpu",
    input_size=None,
    pred_dir: str | Path | None = None,
    n_save: int = 16,
    progress: bool = True,
    amp: bool | None = None,
    num_workers: int = 0,
) -> dict:
    """Score ``model`` on ``dataset`` (which must be labeled, without augmentation).

    ``amp``: bf16 autocast of the forward on CUDA (None: on for CUDA); never on the CPU.
    ``num_workers``: loader processes decoding the images (0: this process; the items and
    their order are the same either way)."""
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    nc = dataset.classes.num_classes
    model_nc = getattr(model, "num_classes", nc)
    if model_nc != nc:
        raise ValueError(
            f"wrong class count: the model predicts {model_nc} classes, the dataset "
            f"{dataset.root} has {nc} (classes.yaml)"
        )
    if not dataset.has_labels:
        raise ValueError(f"{dataset.root / dataset.split}: evaluation needs labels for every image")
    sets = resolve_class_sets(list(class_sets), nc)
    device = dist.device(torch.device(device))  # several processes: this process's GPU
    configure_backends(device)
    if amp is None:
        amp = device.type == "cuda"
    model = model.to(device).eval()
    cm = ConfusionMatrix(nc, dataset.classes.ignore_index)
    saved = 0
    t0 = time.perf_counter()
    fwd_seconds: list[float] = []  # model forward + upsampling per image (Table 4)
    world = dist.world_size()
    # several processes: every world-th image from this rank's; `saved` counts globally
    indices = range(len(dataset)) if world == 1 else dist.shard(range(len(dataset)))
    bar = Progress(len(indices), 0, "evaluate", enabled=progress and dist.is_main(), unit="image")
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,  # dataset[i] itself, one item at a time
        sampler=list(indices),
        collate_fn=_item,
        **loader_options(device, num_workers),
    )
    for i, item in zip(indices, loader, strict=True):
        img = item["image"][None].to(device, non_blocking=True)
        lbl = item["label"]
        _sync(device)
        tf = time.perf_counter()
        logits = predict(model, img, lbl.shape[-2:], input_size, amp)
        pred = logits.argmax(1)[0]
        _sync(device)
        fwd_seconds.append(time.perf_counter() - tf)
        pred = pred.cpu()
        cm.update(pred, lbl)
        if world > 1:
            saved = i  # the images before i (of every process) come first
        if pred_dir is not None and (n_save < 0 or saved < n_save):
            save_image(
                Path(pred_dir) / f"{item['stem']}.png",
                colorize(pred.numpy().astype(np.uint8), dataset.classes.palette),
            )
            saved += 1
        bar.update(1)
    bar.close()
    if world > 1:
        total = dist.all_reduce_sum(torch.from_numpy(cm.matrix).to(device))
        cm = ConfusionMatrix.from_matrix(total.cpu().numpy(), dataset.classes.ignore_index)
        # the first image of every process pays for its lazy initialisation
        per_rank = dist.gather_objects([fwd_seconds])
        fwd_seconds = [t for ts in per_rank for t in ts[1:]] or [t for ts in per_rank for t in ts]
    iou = cm.iou() * 100
    out = {
        "miou": {name: float(cm.miou(ids)) * 100 for name, ids in sets.items()},
        "per_class_iou": {
            n: (None if np.isnan(iou[c]) else float(iou[c]))
            for c, n in enumerate(dataset.classes.names)
        },
        "pixel_accuracy": float(cm.pixel_accuracy()) * 100,
        "class_sets": {name: list(ids) for name, ids in sets.items()},
    }
    out["images"] = len(dataset)
    out["seconds"] = time.perf_counter() - t0
    # the first image pays for lazy initialisation (cuDNN autotuning, allocator): skip it
    timed = fwd_seconds[1:] if len(fwd_seconds) > 1 and world == 1 else fwd_seconds
    out["inference_ms_per_image"] = 1000.0 * float(np.mean(timed))
    out["table"] = format_iou_table(cm, dataset.classes.names, sets)
    return out


def _item(item: dict) -> dict:
    """The loader's collate function: the dataset item unchanged."""
    return item


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def format_iou_table(cm: ConfusionMatrix, names, sets: dict[str, tuple[int, ...]]) -> str:
    """Markdown table of per-class IoU (%) and the mIoU of each class set."""
    iou = cm.iou() * 100
    rows = ["| class | IoU |", "|---|---:|"]
    for c, n in enumerate(names):
        rows.append(f"| {n} | {'n/a' if np.isnan(iou[c]) else f'{iou[c]:.1f}'} |")
    for name, ids in sets.items():
        rows.append(
            f"| **mIoU{'' if name.startswith('all') else name}** | **{cm.miou(ids) * 100:.1f}** |"
        )
    return "\n".join(rows)
