"""The shape domain pair: classes defined by silhouette alone, two looks, deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from diffdass.data.folder import FolderDataset
from diffdass.data.shapes import SHAPES, generate_shapes, render_scene, shape_mask


def test_every_shape_has_its_own_silhouette():
    masks = [shape_mask(name, 64, 32, 32, 12, 0.1) for name in SHAPES]
    assert all(m.sum() > 60 for m in masks)
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            iou = (masks[i] & masks[j]).sum() / (masks[i] | masks[j]).sum()
            assert iou < 0.85, (SHAPES[i], SHAPES[j], iou)
    with pytest.raises(ValueError, match="unknown shape"):
        shape_mask("blob", 64, 32, 32, 12, 0.0)


def test_colour_does_not_tell_the_class():
    """Across many scenes the mean colour of a class's pixels is the same for every class
    (colour is drawn independently of the shape)."""
    rng = np.random.default_rng(0)
    sums = np.zeros((len(SHAPES) + 1, 3))
    counts = np.zeros(len(SHAPES) + 1)
    for _ in range(600):
        img, lbl = render_scene(rng, 64, "source")
        for c in range(1, len(SHAPES) + 1):
            m = lbl == c
            sums[c] += img[m].sum(0)
            counts[c] += m.sum()
    means = sums[1:] / counts[1:, None]
    # of 255: no class owns a colour (about 180 objects per class, so sampling noise of a
    # class mean is ~6; a class with a colour of its own would differ by ~100)
    assert np.ptp(means, axis=0).max() < 30


def test_generate_shapes_folder_format_and_determinism(tmp_path):
    root = generate_shapes(tmp_path / "a", n_source=3, n_target_train=2, n_target_val=2, size=32)
    src = FolderDataset(root / "source", "train", "required")
    val = FolderDataset(root / "target", "val", "required")
    assert len(src) == 3 and len(val) == 2
    assert list(src.classes.names) == ["background", *SHAPES]
    item = src[0]
    assert item["image"].shape == (3, 32, 32) and int(item["label"].max()) <= len(SHAPES)
    again = generate_shapes(tmp_path / "b", n_source=3, n_target_train=2, n_target_val=2, size=32)
    for rel in ("source/train/images/00000.png", "target/val/labels/00001.png"):
        assert (root / rel).read_bytes() == (again / rel).read_bytes()
    with pytest.raises(ValueError, match="domain"):
        render_scene(np.random.default_rng(0), 32, "other")


def test_target_look_differs_from_source():
    """Same layout statistics, another look: the target's objects are textured (more
    variation inside an object) and its background is not flat."""
    rng_s, rng_t = np.random.default_rng(1), np.random.default_rng(1)
    inner_s, inner_t, bg_s, bg_t = [], [], [], []
    for _ in range(20):
        (xs, ys), (xt, yt) = render_scene(rng_s, 64, "source"), render_scene(rng_t, 64, "target")
        for x, y, inner, bg in ((xs, ys, inner_s, bg_s), (xt, yt, inner_t, bg_t)):
            for c in np.unique(y[y > 0]):
                inner.append(x[y == c].astype(float).std(0).mean())
            bg.append(x[y == 0].astype(float).std(0).mean())
    assert np.median(inner_t) > np.median(inner_s) + 5
    assert np.median(bg_t) > np.median(bg_s) + 3
