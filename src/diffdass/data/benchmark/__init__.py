"""The built-in benchmark: a procedural synthetic -> "real" street-scene adaptation task.

``generate_benchmark(root)`` writes, deterministically from a seed and with no network::

    ROOT/benchmark.json                      # config, generator version, content hash, stats
    ROOT/source/classes.yaml                 # the 19 Cityscapes classes and palette
    ROOT/source/train/{images,labels}/*.png  # labeled "synthetic" source domain
    ROOT/target/classes.yaml
    ROOT/target/train/images/*.png           # unlabeled "real" target domain (labels withheld)
    ROOT/target/train_oracle/{images,labels} # the SAME images as target/train, WITH labels
    ROOT/target/val/{images,labels}/*.png    # labeled target validation split

``target/train_oracle`` exists only to train the *target-oracle* upper bound that puts the
adaptation results to scale. An adaptation method must never read it: it sees
``source/train`` (images + labels) and ``target/train`` (images only), and is scored on
``target/val``.

How it is made, one module per step (read them in this order):

* :mod:`.common` -- class ids and the *part* codes (window, tyre, face orientation, skin,
  lamp, road marking, ...) that a layout stores next to the label of every pixel.
* :mod:`.camera` -- the pinhole dashcam and the rasteriser of projected 3-D primitives.
* :mod:`.scene` -- the street-scene grammar (road, sidewalks, facades, poles, people,
  vehicles, ...), drawn far to near.
* :mod:`.layout` -- :func:`sample_layout`: one random camera + scene -> label map and
  instance/part map. Both domains draw their layouts here, so they share the label
  distribution and differ only in appearance.
* :mod:`.procedural` -- tileable noise and pattern primitives for the source's textures.
* :mod:`.source` -- :func:`render_source`, the "synthetic" look of a game engine
  (procedural materials, sun and ambient shading, hard shadows, no noise, no blur).
* :mod:`.target` -- :func:`render_target`, the "real" look (photo textures bundled with
  scikit-image, lighting, blur, sensor noise).
* :mod:`.writer` -- :func:`make_sample` (one image), :func:`generate_benchmark` (the folder
  format, atomically, with a content hash), :func:`preview_figure` and the command line.

Determinism: image ``index`` of stream ``domain_id`` (0 source/train, 1 target/train,
2 target/val) draws its layout from ``np.random.default_rng([seed, domain_id, index, 0])``
and its appearance from ``[seed, domain_id, index, 1]``, so any single image can be
regenerated on its own and the output is byte-identical across runs, processes and worker
counts. Bump :data:`GENERATOR_VERSION` whenever the output changes (version 3: the game-engine
source renderer, calibrated against the target as described in ``docs/benchmark.md``).

Cost at 64x128 (median, one core): about 10 ms of CPU for a layout, 5 ms for a source
rendering and 6 ms for a target rendering, plus PNG encoding (the default 900 images take
about 13 s over two spawned worker processes); at 256x512 about 15 ms + 70 ms per image.

Command line: ``python -m diffdass.data.benchmark ROOT [--height 256 --width 512]
[--preview out.png]``.
"""

from __future__ import annotations

from . import writer
from .layout import Layout, sample_layout
from .source import SOURCE_PALETTE, render_source
from .target import TARGET_PALETTE, TEXTURE_SOURCES, load_texture, render_target
from .writer import (
    GENERATOR_VERSION,
    SPLITS,
    BenchmarkConfig,
    content_hash,
    generate_benchmark,
    make_sample,
    preview_figure,
)

__all__ = [
    "GENERATOR_VERSION",
    "SOURCE_PALETTE",
    "SPLITS",
    "TARGET_PALETTE",
    "TEXTURE_SOURCES",
    "BenchmarkConfig",
    "Layout",
    "content_hash",
    "generate_benchmark",
    "load_texture",
    "make_sample",
    "preview_figure",
    "render_source",
    "render_target",
    "sample_layout",
    "writer",
]
