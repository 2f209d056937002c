"""Shared fixtures: tiny folder datasets written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from diffdass.data.folder import ClassInfo
from diffdass.utils.io import save_image

torch.set_num_threads(2)


def write_folder_dataset(
    root: Path,
    split: str = "train",
    n: int = 6,
    size: tuple[int, int] = (32, 48),
    num_classes: int = 4,
    labels: bool = True,
    seed: int = 0,
) -> Path:
    """A tiny labeled dataset whose class is readable from the colour (learnable)."""
    rng = np.random.default_rng(seed)
    if not (root / "classes.yaml").is_file():
        ClassInfo.create([f"class{i}" for i in range(num_classes)]).save(root)
    colours = np.linspace(0, 255, num_classes).astype(np.uint8)
    for i in range(n):
        h, w = size
        lbl = np.zeros((h, w), np.uint8)
        # vertical bands of classes, random widths
        cuts = np.sort(rng.integers(1, w, size=num_classes - 1))
        for c, (a, b) in enumerate(zip(np.r_[0, cuts], np.r_[cuts, w], strict=True)):
            lbl[:, a:b] = c
        lbl[0, 0] = 255
        img = np.stack(
            [
                colours[lbl % num_classes],
                255 - colours[lbl % num_classes],
                rng.integers(0, 40, (h, w)),
            ],
            -1,
        )
        img = img.astype(np.uint8)
        save_image(root / split / "images" / f"img{i:03d}.png", img)
        if labels:
            save_image(root / split / "labels" / f"img{i:03d}.png", lbl)
    return root


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    return write_folder_dataset(tmp_path / "ds")


@pytest.fixture
def one_thread():
    """One intra-op torch thread for tests of tiny tensors: two threads on a busy 2-core
    machine make every small conv wait on the other thread (~100x slower). Restored after
    the test. Use it module-wide with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def weight_fingerprint(path: Path) -> tuple[float, float]:
    """Two numbers that move when any weight of a checkpoint moves, for pinning a seeded run's
    result: the projection of all floating-point weights on a fixed random direction and
    their sum of squares (float64). Unlike a plain sum, the projection is not dominated by
    constant parameters (BatchNorm weights at 1), so a changed update moves it by percents
    where float noise moves it by about 1e-6."""
    from diffdass.utils.io import load_tensors

    gen = torch.Generator().manual_seed(0)
    projection = squares = 0.0
    for _, t in sorted(load_tensors(path).items()):
        if t.is_floating_point():
            t = t.double().flatten()
            direction = torch.randn(t.numel(), generator=gen, dtype=torch.float64)
            projection += float((t * direction).sum())
            squares += float((t * t).sum())
    return projection, squares


def check_pinned(out: Path, summary: dict, miou: dict, weights: dict, noisy: tuple = ()) -> None:
    """A tiny run's pinned values: ``miou`` {method: mIoU} (abs. 1e-4; 0.05 for the ``noisy``
    methods, whose argmax-driven training amplifies float noise) and ``weights`` {stage:
    (weight_fingerprint, relative tolerance)} of ``out/<stage>/checkpoints/final``."""
    for name, value in miou.items():
        tol = 0.05 if name in noisy else 1e-4
        assert summary["miou"][name] == pytest.approx(value, abs=tol), name
    for name, (pinned, rel) in weights.items():
        got = weight_fingerprint(out / name / "checkpoints" / "final.safetensors")
        assert got == pytest.approx(pinned, rel=rel), name


def _event_accumulator(logdir: Path):
    """TensorBoard's own reader of the event files of ``logdir``, loaded in full."""
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(logdir), size_guidance={ea.SCALARS: 0, ea.IMAGES: 0})
    return acc.Reload()


def read_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of the event files of ``logdir`` as TensorBoard reads
    them (a resumed writer's restart marker drops the earlier points at its step or later)."""
    acc = _event_accumulator(logdir)
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def read_images(logdir: Path) -> dict[str, list[tuple[int, tuple[int, int]]]]:
    """``{tag: [(step, (height, width)), ...]}`` of the images of ``logdir``."""
    acc = _event_accumulator(logdir)
    return {t: [(e.step, (e.height, e.width)) for e in acc.Images(t)] for t in acc.Tags()["images"]}


def event_files(logdir: Path) -> list[Path]:
    """The event files of ``logdir``, in name order (the order TensorBoard reads them)."""
    return sorted(Path(logdir).glob("events.out.tfevents.*"))
