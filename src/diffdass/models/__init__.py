"""Networks: segmenters (DeepLab-V2, FCN-8s, SegFormer/DAFormer), DDPM UNets, EMA, and
CICLD's latent-diffusion segmenter (with its LPIPS-style perceptual loss).

Segmenters take ``[-1, 1]`` images ``(B, 3, H, W)`` and return logits at their native
output stride (see :mod:`diffdass.models.segmenter`). They correspond to the three
segmenters of Peng et al. (ICCV 2023), Table 1: "Res" = DeepLab-V2/ResNet-101, "Vgg" =
FCN-8s/VGG-16, "Seg" = SegFormer MiT-B5 with the DAFormer head.

Attributes are imported lazily, so ``import diffdass.models`` does not load torchvision,
segmentation-models-pytorch or diffusers until a name that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    # segmenter.py
    "Segmenter": "segmenter",
    "LoadReport": "segmenter",
    "IMAGENET_MEAN": "segmenter",
    "IMAGENET_STD": "segmenter",
    # deeplabv2.py
    "DeepLabV2": "deeplabv2",
    "ASPPV2": "deeplabv2",
    "deeplabv2_r101": "deeplabv2",
    "deeplabv2_tiny": "deeplabv2",
    # fcn8s.py
    "FCN8s": "fcn8s",
    "fcn8s_vgg16": "fcn8s",
    "fcn8s_tiny": "fcn8s",
    # segformer.py
    "SegFormer": "segformer",
    "DAFormerHead": "segformer",
    "segformer_b5": "segformer",
    "segformer_tiny": "segformer",
    # factory.py
    "ARCHS": "factory",
    "ARCH_DESCRIPTIONS": "factory",
    "build_segmenter": "factory",
    "read_state_dict": "factory",
    # unet.py
    "UNET_PRESETS": "unet",
    "UNET_PARAM_COUNTS": "unet",
    "build_unet": "unet",
    "unet_param_count": "unet",
    "unet_downsample_factor": "unet",
    # ema.py
    "EMA": "ema",
    # cicld.py (the latent-diffusion segmenter of Yu, Sun, Luo)
    "CICLDModelConfig": "cicld",
    "CICLDNet": "cicld",
    "CICLDSegmenter": "cicld",
    # perceptual.py
    "VGGPerceptual": "perceptual",
    "build_perceptual": "perceptual",
}

__all__ = [
    "ARCHS",
    "ARCH_DESCRIPTIONS",
    "ASPPV2",
    "CICLDModelConfig",
    "CICLDNet",
    "CICLDSegmenter",
    "DAFormerHead",
    "DeepLabV2",
    "EMA",
    "FCN8s",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LoadReport",
    "SegFormer",
    "Segmenter",
    "UNET_PARAM_COUNTS",
    "UNET_PRESETS",
    "VGGPerceptual",
    "build_perceptual",
    "build_segmenter",
    "build_unet",
    "deeplabv2_r101",
    "deeplabv2_tiny",
    "fcn8s_tiny",
    "fcn8s_vgg16",
    "read_state_dict",
    "segformer_b5",
    "segformer_tiny",
    "unet_downsample_factor",
    "unet_param_count",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for static analysis only
    from .cicld import CICLDModelConfig, CICLDNet, CICLDSegmenter
    from .deeplabv2 import ASPPV2, DeepLabV2, deeplabv2_r101, deeplabv2_tiny
    from .ema import EMA
    from .factory import ARCH_DESCRIPTIONS, ARCHS, build_segmenter, read_state_dict
    from .fcn8s import FCN8s, fcn8s_tiny, fcn8s_vgg16
    from .perceptual import VGGPerceptual, build_perceptual
    from .segformer import DAFormerHead, SegFormer, segformer_b5, segformer_tiny
    from .segmenter import IMAGENET_MEAN, IMAGENET_STD, LoadReport, Segmenter
    from .unet import (
        UNET_PARAM_COUNTS,
        UNET_PRESETS,
        build_unet,
        unet_downsample_factor,
        unet_param_count,
    )
