"""diffdass: domain-adaptive semantic segmentation by label-guided diffusion translation.

Sub-packages, in dependency order (each only imports those listed before it):

- ``diffdass.utils``       run directories, configs, atomic I/O, seeding
- ``diffdass.data``        label sets and mappings, folder datasets, augmentation, benchmark
- ``diffdass.models``      segmenters (DeepLab-V2, FCN-8s, SegFormer/DAFormer) and DDPM UNets
- ``diffdass.evaluation``  confusion-matrix mIoU, evaluation loops, reports
- ``diffdass.diffusion``   DDPM schedule, translation sampler, semantic gradient guidance
- ``diffdass.adaptation``  source-only training, progressive translation learning
- ``diffdass.cli``         the ``diffdass`` command, which wires the stages together
"""

__version__ = "0.1.0"
