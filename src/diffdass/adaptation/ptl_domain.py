"""One domain of Progressive Translation Learning: translate the source images domain k
consumes to X^n (guided by the frozen g_{k-1}), then fine-tune g on them (Eq. 11-12); and the
strips of a few fixed images across the domains (Fig. 4). :mod:`.ptl` walks the domains.

Several processes: translation batch j runs on process j mod processes (its noise and
guidance depend only on (seed, k, j)) and all processes gather every translation. Fine-tuning
is data-parallel when the processes divide the batch (:func:`sharded_finetuning`), else the
main process fine-tunes alone and sends its weights to the others.

The source images a domain consumes are decoded and augmented by ``cfg.num_workers`` loader
workers (0: in this process), in the same order and with the same augmentation either way;
on CUDA the translation noise is drawn on the GPU (:func:`batch_generator`)."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch

from diffdass.adaptation.seg_training import SegTrainer
from diffdass.adaptation.translation import (
    batch_generator,
    resize_pair,
    translate_batch,
)
from diffdass.data.folder import (
    StreamBatchSampler,
    StreamDataset,
    tensor_to_image,
)
from diffdass.utils import distributed as dist
from diffdass.utils.io import save_image
from diffdass.utils.rng import derive_seed


def domain_seed(seed: int, k: int, stream: int) -> int:
    return derive_seed(seed, 5151, stream, k, high=2**31 - 1)


def translate_for_domain(cfg, x0, y, n, unet, schedule, guide, generator, seed, moments):
    """translate_batch at ``cfg.translate_size`` (if set): returns the translations and their
    labels, both at the translation size (labels nearest-resized; no resize back)."""
    if cfg.translate_size and tuple(cfg.translate_size) != tuple(x0.shape[-2:]):
        x0, y = resize_pair(x0, y, tuple(cfg.translate_size))
    xg = translate_batch(
        x0,
        y,
        n,
        unet,
        schedule,
        guide,
        cfg.guidance,
        generator,
        cfg.reverse_steps if cfg.domains == "spread" else None,
        seed=seed,
        sampler=cfg.sampler,
        moments=moments,
    )
    return xg, y


def run_domain(cfg, k, n, ds, trainer: SegTrainer, unet, schedule, device, moments) -> dict:
    """Translate the images domain k consumes (guided by the frozen g_{k-1}), then fine-tune.

    On several processes translation batch j runs on process j mod processes and every
    process gathers all translations before data-parallel fine-tuning on its slice of each
    global batch; on one process the same code translates every batch and trains on whole
    batches, so the result does not depend on the process count (tests/test_distributed.py).
    """
    t0 = time.perf_counter()
    iters, bs = cfg.iterations_per_domain, cfg.batch_size
    first_it = k * iters
    sampler = StreamBatchSampler(len(ds), bs, cfg.seed, first_it, first_it + iters)
    keys = [key for batch in sampler for key in batch][: cfg.translated_per_domain()]
    stream = StreamDataset(ds)
    guide = copy.deepcopy(trainer.model).eval()
    for p in guide.parameters():
        p.requires_grad_(False)
    tb = cfg.translate_batch_size
    starts = list(range(0, len(keys), tb))
    mine = set(dist.shard(range(len(starts))))
    src_imgs, labels, done = [], [], []  # done: (batch j, translations, their labels)
    for j, items in enumerate(source_batches(stream, keys, tb, cfg.num_workers)):
        x0 = torch.stack([it["image"] for it in items])
        y = torch.stack([it["label"] for it in items])
        src_imgs.append(x0.half())
        labels.append(y)
        if j not in mine:
            continue
        xg, yg = translate_for_domain(
            cfg,
            x0.to(device),
            y.to(device),
            n,
            unet,
            schedule,
            guide,
            batch_generator(domain_seed(cfg.seed, k, 0), j, device),
            domain_seed(cfg.seed, k, 1) + j,
            moments,
        )
        done.append((j, (xg.cpu().half(), yg.cpu())))
    del guide
    gathered = dict(dist.gather_objects(done))
    translated = [gathered[j][0] for j in range(len(starts))]
    yn = torch.cat([gathered[j][1] for j in range(len(starts))])  # at the translation size
    t_tr = time.perf_counter() - t0
    xs, ys, xn = torch.cat(src_imgs), torch.cat(labels), torch.cat(translated)
    order = pool_order(len(keys), iters * bs, domain_seed(cfg.seed, k, 2))
    if trainer.world > 1:  # sharded: this process's slice of every global batch
        b = dist.local_batch_size(bs)
        off = dist.batch_offset(b)
    else:  # one process, or the main one alone (the processes do not divide the batch)
        b, off = bs, 0
    losses, parts, lrs = [], [], []
    if trainer.world > 1 or dist.is_main():
        for i in range(iters):
            sl = order[i * bs : (i + 1) * bs][off : off + b]
            batches = [(xn[sl].float(), yn[sl])]
            if cfg.loss_src:
                batches.append((xs[sl].float(), ys[sl]))
            st = trainer.step(first_it + i, batches)
            losses.append(st["loss"])
            parts.append(st["parts"])
            lrs.append(st["lr"])
    if trainer.world == 1 and dist.world_size() > 1:
        # the main process fine-tuned alone: every process takes its weights (the next
        # domain's guide) and its statistics
        dist.broadcast_module(trainer.model)
        losses, parts, lrs = dist.gather_objects([(losses, parts, lrs)])[0]
    pa = np.asarray(parts)
    return {
        "domain": k + 1,
        "n": n,
        "reverse_steps": cfg.reverse_calls(n) if cfg.domains == "spread" else n,
        "translated_images": len(keys),
        "loss": float(np.mean(losses)),
        "loss_ada": float(pa[:, 0].mean()),
        "loss_src": float(pa[:, 1].mean()) if cfg.loss_src else None,
        "lr_first": lrs[0],
        "lr_last": lrs[-1],
        "translate_seconds": t_tr,
        "seconds": time.perf_counter() - t0,
    }


def source_batches(stream: StreamDataset, keys: list[int], size: int, num_workers: int):
    """The lists ``[stream[key] for key in keys[s : s + size]]`` for ``s = 0, size, ...``,
    decoded and augmented by ``num_workers`` loader workers ahead of their use (0: in this
    process when asked for). The items are the same either way: an item's augmentation
    depends only on its key."""
    return torch.utils.data.DataLoader(
        stream,
        batch_sampler=[keys[s : s + size] for s in range(0, len(keys), size)],
        collate_fn=list,
        num_workers=num_workers,
    )


def sharded_finetuning(batch_size: int) -> bool:
    """Whether PTL's fine-tuning is data-parallel: the processes divide ``batch_size`` (one
    process: trivially). Otherwise the main process fine-tunes alone."""
    return batch_size % dist.world_size() == 0


def pool_order(pool: int, needed: int, seed: int) -> torch.Tensor:
    """Indices into a pool of ``pool`` translations for ``needed`` samples: ``0..needed-1`` when
    the pool holds them all, else seeded permutations of the pool, concatenated."""
    if pool >= needed:
        return torch.arange(needed)
    g = torch.Generator().manual_seed(seed)
    reps = -(-needed // pool)
    return torch.cat([torch.randperm(pool, generator=g) for _ in range(reps)])[:needed]


def save_strip(
    cfg, k, n, strip_ds, idx, model, unet, schedule, device, run_path: Path, moments
) -> np.ndarray:
    """Translate a few fixed source images at this domain's n (Fig. 4 strips); returns them
    as one picture, a row per image: the source beside its translation."""
    items = [strip_ds[i] for i in idx]
    x0 = torch.stack([it["image"] for it in items]).to(device)
    y = torch.stack([it["label"] for it in items]).to(device)
    was_training = model.training
    model.eval()
    xg, _ = translate_for_domain(
        cfg,
        x0,
        y,
        n,
        unet,
        schedule,
        model,
        batch_generator(domain_seed(cfg.seed, 0, 9), 0),
        cfg.seed,
        moments,
    )
    model.train(was_training)
    rows = []
    for it, x in zip(items, xg, strict=True):
        translated, source = tensor_to_image(x), tensor_to_image(it["image"])
        save_image(run_path / "strips" / it["stem"] / f"n{n:04d}.png", translated)
        src = run_path / "strips" / it["stem"] / "n0000.png"
        if not src.is_file():
            save_image(src, source)
        rows.append(np.concatenate([source, translated], axis=1))
    return np.concatenate(rows, axis=0)
