"""The own-domain template's segmenter recipe learns classes defined by shape.

configs/custom_small.yaml is what a user copies for their own pair. Its source-only recipe
(architecture, optimiser, augmentation) must fit a pair whose classes differ only by
silhouette; the recipe it replaced (unet_small, AdamW 3e-3 with warm-up and poly decay,
scale augmentation) stays above 0.7 on the same tiny set and budget.
"""

from __future__ import annotations

import json
from pathlib import Path

from diffdass.adaptation.seg_training import train_segmenter
from diffdass.data.folder import DomainSpec
from diffdass.data.shapes import generate_shapes
from diffdass.pipeline.config import PipelineConfig
from diffdass.utils.config import load_config

TEMPLATE = Path(__file__).resolve().parents[1] / "configs" / "custom_small.yaml"
SIZE, IMAGES, ITERATIONS, BATCH = 32, 16, 150, 8


def test_template_segmenter_fits_a_tiny_shape_set(tmp_path):
    root = generate_shapes(
        tmp_path / "shapes", n_source=IMAGES, n_target_train=1, n_target_val=1, size=SIZE
    )
    cfg = load_config(PipelineConfig, TEMPLATE, {"source.root": "unused"}, validate=False)
    seg = cfg.source_only
    seg.source = DomainSpec(str(root / "source"), "train")
    seg.aug.resize = [SIZE, SIZE]  # the template's working size, scaled to the tiny set
    if seg.aug.crop is not None:
        seg.aug.crop = [SIZE, SIZE]
    seg.iterations, seg.batch_size, seg.checkpoint_every = ITERATIONS, BATCH, ITERATIONS
    seg.device, seg.num_workers = "cpu", 0
    train_segmenter(seg, tmp_path / "run", progress=False)
    history = json.loads((tmp_path / "run" / "loss_history.json").read_text())
    assert len(history) == ITERATIONS
    last = [row["loss"] for row in history[-10:]]
    # measured: 0.34 with the template's recipe, 0.72 with the replaced one
    assert sum(last) / len(last) < 0.5
