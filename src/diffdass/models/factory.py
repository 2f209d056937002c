"""Build segmenters by name, optionally with ImageNet or local pre-trained backbone weights.

Architectures (Peng et al., ICCV 2023, Table 1: "Res", "Vgg", "Seg"; ``*_tiny`` for CPU)::

    deeplabv2_r101  DeepLab-V2, dilated ResNet-101, ASPP-V2 classifier, output stride 8
    deeplabv2_tiny  same code on ResNet(Bottleneck, [1, 1, 1, 1]), narrow; output stride 8
    fcn8s_vgg16     FCN-8s on VGG-16, learnable 2x/2x/8x upsampling; output stride 1
    fcn8s_tiny      same code on a narrow 5-stage VGG; output stride 1
    segformer_b5    SegFormer MiT-B5 encoder + DAFormer fusion head; output stride 4
    segformer_tiny  MiT-B0 encoder + DAFormer head of width 64; output stride 4
    unet_small      small U-Net (0.48M parameters) for CPU scale from random init; stride 1
    unet_w<W>_d<D>[_nearest]  the U-Net family: width W at full resolution, D down-samplings,
                    transposed-conv (default) or nearest up-sampling; stride 1

``pretrained``:

* ``False`` -- random initialisation;
* ``True`` -- ImageNet weights from the library (torchvision weight enums for ResNet-101 and
  VGG-16, segmentation-models-pytorch's ``imagenet`` weights for MiT-B5). When they cannot
  be obtained (e.g. no internet) a ``RuntimeError`` is raised -- the model is never
  silently left randomly initialised. Tiny variants and ``unet_small`` have no such weights
  (``ValueError``);
* a path to a ``.pth``/``.pt``/``.bin`` or ``.safetensors`` file -- a backbone state dict with
  torchvision/timm-style keys (e.g. ``layer1.0.conv1.weight``), or a full diffdass model
  state dict (``backbone.*``/``head.*``; everything whose shape matches is loaded). Missing
  and unexpected keys are logged and kept on ``model.pretrained_report``; a file of which
  nothing matches raises ``ValueError``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .segmenter import Segmenter

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _ArchSpec:
    description: str
    builder: str  # "module:function" inside diffdass.models
    torchvision_weights: str | None = None  # e.g. "ResNet101_Weights.IMAGENET1K_V1"
    smp_encoder: str | None = None  # e.g. "mit_b5"
    # why there are no ImageNet weights (architectures with neither of the two above)
    no_imagenet: str = "it is a small test architecture"


_SPECS: dict[str, _ArchSpec] = {
    "deeplabv2_r101": _ArchSpec(
        "DeepLab-V2: dilated ResNet-101 + ASPP-V2 (sum of 4 dilated 3x3 convs), stride 8",
        "deeplabv2:deeplabv2_r101",
        torchvision_weights="ResNet101_Weights.IMAGENET1K_V1",
    ),
    "deeplabv2_tiny": _ArchSpec(
        "DeepLab-V2 code on a narrow ResNet(Bottleneck, [1,1,1,1]) for CPU tests, stride 8",
        "deeplabv2:deeplabv2_tiny",
    ),
    "fcn8s_vgg16": _ArchSpec(
        "FCN-8s: VGG-16 + conv fc6/fc7, skip fusion at pool4/pool3, stride 1",
        "fcn8s:fcn8s_vgg16",
        torchvision_weights="VGG16_Weights.IMAGENET1K_V1",
    ),
    "fcn8s_tiny": _ArchSpec(
        "FCN-8s code on a narrow 5-stage VGG for CPU tests, stride 1",
        "fcn8s:fcn8s_tiny",
    ),
    "segformer_b5": _ArchSpec(
        "SegFormer MiT-B5 encoder + DAFormer context-aware fusion head, stride 4",
        "segformer:segformer_b5",
        smp_encoder="mit_b5",
    ),
    "segformer_tiny": _ArchSpec(
        "MiT-B0 encoder + DAFormer head of width 64 for CPU tests, stride 4",
        "segformer:segformer_tiny",
    ),
    "unet_small": _ArchSpec(
        "U-Net 16-128 wide, 0.48M params, for CPU scale from random init (AdamW), stride 1",
        "unet_seg:unet_small",
        no_imagenet="it is designed to be trained from random initialisation",
    ),
}

#: the U-Net family (``unet_w32_d2_nearest``, ...), built by ``unet_seg.unet_family``
UNET_FAMILY_SPEC = _ArchSpec(
    "U-Net family: width W at full resolution, D down-samplings, [nearest] up-sampling; "
    "stride 1, for CPU scale from random init",
    "unet_seg:unet_family",
    no_imagenet="it is designed to be trained from random initialisation",
)
#: Names accepted by :func:`build_segmenter` (and ``unet_w<W>_d<D>[_nearest]``).
ARCHS: tuple[str, ...] = tuple(_SPECS)
#: One-line description of each architecture.
ARCH_DESCRIPTIONS: dict[str, str] = {name: spec.description for name, spec in _SPECS.items()} | {
    "unet_w<W>_d<D>[_nearest]": UNET_FAMILY_SPEC.description
}


def _spec(arch: str) -> _ArchSpec | None:
    from .unet_seg import UNET_FAMILY

    if arch in _SPECS:
        return _SPECS[arch]
    return UNET_FAMILY_SPEC if UNET_FAMILY.fullmatch(arch) else None


def _builder(spec: _ArchSpec) -> Callable[[int], Segmenter]:
    import importlib

    module, func = spec.builder.split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), func)


def build_segmenter(
    arch: str, num_classes: int, pretrained: bool | str | os.PathLike = False
) -> Segmenter:
    """Build the segmenter ``arch`` with ``num_classes`` outputs.

    Args:
        arch: one of :data:`ARCHS`.
        num_classes: number of classes (19 for Cityscapes, 16/13 for SYNTHIA protocols).
        pretrained: ``False``, ``True`` (library ImageNet weights) or a local weight file.

    Raises:
        ValueError: unknown ``arch``; ``pretrained=True`` for a tiny variant or ``unet_small``;
            a local file none of whose tensors matches the model.
        RuntimeError: ImageNet weights requested but not obtainable (no internet, ...).
        FileNotFoundError: ``pretrained`` names a file that does not exist.
    """
    spec = _spec(arch)
    if spec is None:
        valid = "\n".join(f"  {n:15s} {d}" for n, d in ARCH_DESCRIPTIONS.items())
        raise ValueError(f"unknown segmenter arch {arch!r}; valid ones are:\n{valid}")
    state: Mapping[str, torch.Tensor] | None = None
    source = ""
    # fetch the weights first: a failed download costs no model construction
    if pretrained is True:
        state, source = _imagenet_state_dict(arch, spec)
    elif isinstance(pretrained, (str, os.PathLike)):
        source = os.fspath(pretrained)
        state = read_state_dict(source)
    elif pretrained is not False and pretrained is not None:
        raise TypeError(f"pretrained must be a bool or a file path, got {type(pretrained)}")

    model = (
        _builder(spec)(arch, num_classes)
        if spec is UNET_FAMILY_SPEC
        else _builder(spec)(num_classes)
    )
    if state is not None:
        report = model.load_pretrained_state_dict(state, source=source)
        model.pretrained_report = report
        logger.info("%s pretrained weights: %s", arch, report.summary())
        if report.missing:
            logger.warning(
                "%s: %d backbone tensors were not in %s and stay randomly initialised: %s",
                arch,
                len(report.missing),
                source,
                report.missing[:10],
            )
    return model


# ----------------------------------------------------------------- weight files
_CONTAINER_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "module", "net")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a flat ``{name: tensor}`` dict from ``.safetensors`` or a torch pickle.

    Torch files are read with ``weights_only=True``; one level of common containers
    (``{"state_dict": ...}``, ``{"model": ...}``, ...) is unwrapped. Non-tensor entries are
    dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pretrained weight file not found")
    if path.suffix == ".safetensors":
        from diffdass.utils.io import load_tensors

        obj: object = load_tensors(path)
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"{path}: not a readable torch state dict ({exc})") from exc
    for _ in range(2):
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is not None:
                obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _no_weights_message(arch: str, what: str, exc: BaseException) -> str:
    return (
        f"could not obtain the ImageNet weights of {arch} ({what}): {type(exc).__name__}: {exc}. "
        "Downloading needs internet access, which this machine may not have. Download the "
        "file elsewhere and pass it as a local file instead, e.g. "
        f"build_segmenter({arch!r}, num_classes, pretrained='/path/to/weights.pth') "
        "(or pretrained: /path/to/weights.pth in the config). The model was not built with "
        "random weights in its place."
    )


def _imagenet_state_dict(arch: str, spec: _ArchSpec) -> tuple[dict[str, torch.Tensor], str]:
    if spec.torchvision_weights is not None:
        from torchvision.models import get_weight

        weights = get_weight(spec.torchvision_weights)
        try:
            state = weights.get_state_dict(progress=True, check_hash=True)
        except Exception as exc:
            raise RuntimeError(
                _no_weights_message(arch, f"torchvision {spec.torchvision_weights}", exc)
            ) from exc
        return dict(state), f"torchvision:{spec.torchvision_weights}"
    if spec.smp_encoder is not None:
        return _smp_imagenet_state_dict(arch, spec.smp_encoder), f"smp:{spec.smp_encoder}.imagenet"
    raise ValueError(
        f"{arch} has no ImageNet weights ({spec.no_imagenet}); use `--pretrained none` "
        "(config: pretrained: none; pretrained=False from Python) or a local weight file"
    )


def _smp_imagenet_state_dict(arch: str, encoder: str) -> dict[str, torch.Tensor]:
    """segmentation-models-pytorch's ``imagenet`` weights of ``encoder`` (Hub or URL)."""
    from segmentation_models_pytorch.encoders import encoders

    settings = encoders[encoder]["pretrained_settings"]["imagenet"]
    what = f"segmentation-models-pytorch {encoder} 'imagenet'"
    try:
        if "repo_id" in settings:  # smp >= 0.5: Hugging Face Hub
            import huggingface_hub
            from safetensors.torch import load_file

            path = huggingface_hub.hf_hub_download(
                settings["repo_id"], filename="model.safetensors", revision=settings.get("revision")
            )
            state = load_file(path, device="cpu")
        else:  # older smp: plain URL
            state = torch.hub.load_state_dict_from_url(settings["url"], map_location="cpu")
    except Exception as exc:
        raise RuntimeError(_no_weights_message(arch, what, exc)) from exc
    return dict(state)


def load_segmenter(path: str | Path, device: str | torch.device = "cpu", name: str = "model"):
    """A segmenter rebuilt from a diffdass checkpoint (its ``arch`` and ``num_classes`` are in
    the metadata; random init, then the weights of ``path``) and the metadata."""
    from diffdass.utils.checkpoint import load_checkpoint, read_meta

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: segmenter checkpoint not found")
    meta = read_meta(path)
    for key in ("arch", "num_classes"):
        if key not in meta:
            raise ValueError(
                f"{path}: not a diffdass segmenter checkpoint (no '{key}' in metadata)"
            )
    model = build_segmenter(meta["arch"], int(meta["num_classes"]), pretrained=False)
    load_checkpoint(path, {name: model}, device="cpu")
    return model.to(device).eval(), meta
