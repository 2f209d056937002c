"""Base class shared by every segmentation network of the project.

Conventions (the same for DeepLab-V2, FCN-8s and SegFormer/DAFormer):

* **Input**: float images in ``[-1, 1]``, shape ``(B, 3, H, W)`` -- the range the DDPM works
  in, so translated images can be fed to the segmenter (and differentiated through, for
  semantic gradient guidance) without any conversion by the caller. The segmenter maps
  them to ImageNet normalisation internally: ``((x + 1) / 2 - mean) / std``.
* **Output**: logits ``(B, num_classes, h, w)`` at the network's *native* output stride
  (``self.output_stride``: 8 for DeepLab-V2, 1 for FCN-8s, 4 for SegFormer). Use
  :meth:`Segmenter.predict` to get logits at a given resolution.
* Every segmenter has exactly two sub-modules holding parameters: ``backbone`` (ImageNet
  pre-trainable) and ``head`` (newly initialised). :meth:`Segmenter.param_groups` gives the
  head a 10x learning rate, the DeepLab / AdaptSegNet convention.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Prefixes stripped from checkpoint keys before matching (DataParallel, other code bases).
_STRIP_PREFIXES: tuple[str, ...] = ("module.",)
#: Prefixes renamed before matching: smp models call their backbone ``encoder``.
_RENAME_PREFIXES: dict[str, str] = {"encoder.": "backbone."}


@dataclass
class LoadReport:
    """What :meth:`Segmenter.load_pretrained_state_dict` did with a checkpoint.

    Attributes:
        source: where the weights came from (a path, or a library weight name).
        loaded: model keys that received a tensor.
        missing: *backbone* keys of the model that the checkpoint did not provide.
        unexpected: checkpoint keys that match no model key (e.g. an ImageNet ``fc`` layer).
        mismatched: keys present on both sides with different shapes (not loaded).
    """

    source: str = ""
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def summary(self) -> str:
        def _few(keys: list[str]) -> str:
            head = ", ".join(keys[:5])
            return head + (f", ... (+{len(keys) - 5})" if len(keys) > 5 else "")

        parts = [f"{self.source}: loaded {len(self.loaded)} tensors"]
        if self.missing:
            parts.append(f"missing backbone keys {len(self.missing)} [{_few(self.missing)}]")
        if self.unexpected:
            parts.append(f"unexpected keys {len(self.unexpected)} [{_few(self.unexpected)}]")
        if self.mismatched:
            parts.append(f"shape mismatches {len(self.mismatched)} [{_few(self.mismatched)}]")
        return "; ".join(parts)


class Segmenter(nn.Module, ABC):
    """Abstract semantic segmenter: ``[-1, 1]`` images -> logits at the native stride.

    Subclasses set ``self.backbone`` and ``self.head`` and implement
    :meth:`forward_normalized`; they may override :meth:`convert_pretrained_keys` to map
    foreign checkpoint layouts (e.g. VGG's fully connected classifier) onto their own.

    Attributes:
        num_classes: number of output channels of the logits.
        arch: architecture name as known to :func:`diffdass.models.build_segmenter`.
        output_stride: ratio input size / logits size (for inputs divisible by it).
    """

    backbone: nn.Module
    head: nn.Module

    def __init__(self, num_classes: int, arch: str, output_stride: int) -> None:
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.arch = arch
        self.output_stride = int(output_stride)
        # constants, not learned: non-persistent so they never enter checkpoints
        self.register_buffer(
            "pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False
        )

    # ------------------------------------------------------------------ forward
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[-1, 1]`` images to ImageNet normalisation: ``((x + 1) / 2 - mean) / std``."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
        mean = self.pixel_mean.to(dtype=x.dtype)
        std = self.pixel_std.to(dtype=x.dtype)
        return ((x + 1.0) * 0.5 - mean) / std

    @abstractmethod
    def forward_normalized(self, x: torch.Tensor) -> torch.Tensor:
        """Run backbone + head on ImageNet-normalised images; returns native-stride logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes, h, w)`` at the native output stride for ``[-1, 1]`` input."""
        return self.forward_normalized(self.normalize(x))

    def predict(
        self, x: torch.Tensor, size: tuple[int, int] | torch.Size | None = None
    ) -> torch.Tensor:
        """Logits bilinearly upsampled (``align_corners=False``) to ``size`` (default: input size).

        Differentiable; it does not switch the module to eval mode or disable gradients.
        """
        logits = self(x)
        size = tuple(x.shape[-2:]) if size is None else tuple(size)
        if tuple(logits.shape[-2:]) == size:
            return logits
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    # ------------------------------------------------------------ optimisation
    def param_groups(self, lr: float, head_lr_mult: float = 10.0) -> list[dict]:
        """SGD parameter groups: backbone at ``lr``, head at ``head_lr_mult * lr``.

        Each group carries ``name`` and ``lr_mult`` so that a polynomial schedule can set
        ``group["lr"] = base_lr_now * group["lr_mult"]``. Every parameter of the model
        appears in exactly one group (parameters outside ``backbone``/``head`` are an error).
        """
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        head = [p for p in self.head.parameters() if p.requires_grad]
        grouped = {id(p) for p in backbone} | {id(p) for p in head}
        stray = [n for n, p in self.named_parameters() if p.requires_grad and id(p) not in grouped]
        if stray:
            raise RuntimeError(f"parameters outside backbone/head: {stray[:5]}")
        return [
            {"params": backbone, "lr": lr, "lr_mult": 1.0, "name": "backbone"},
            {"params": head, "lr": lr * head_lr_mult, "lr_mult": head_lr_mult, "name": "head"},
        ]

    # -------------------------------------------------------- pretrained weights
    def convert_pretrained_keys(
        self, state_dict: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Hook for subclasses: rewrite a foreign checkpoint into this model's layout.

        Keys may be either full-model keys (``backbone.*``/``head.*``) or bare backbone keys
        (torchvision/timm style); :meth:`load_pretrained_state_dict` accepts both.
        """
        return dict(state_dict)

    def load_pretrained_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], source: str = "state dict"
    ) -> LoadReport:
        """Load every tensor of ``state_dict`` whose key and shape match, and report the rest.

        A key ``k`` is matched against the model's own keys as ``k`` (full-model checkpoint)
        or ``backbone.k`` (backbone checkpoint with torchvision/timm-style keys).

        Raises:
            ValueError: if not a single tensor could be loaded.
        """
        sd = _clean_keys(state_dict)
        sd = self.convert_pretrained_keys(sd)
        own = self.state_dict()
        report = LoadReport(source=source)
        to_load: dict[str, torch.Tensor] = {}
        for key, value in sd.items():
            if not isinstance(value, torch.Tensor):
                report.unexpected.append(key)
                continue
            target = key if key in own else f"backbone.{key}"
            if target not in own:
                report.unexpected.append(key)
            elif tuple(own[target].shape) != tuple(value.shape):
                report.mismatched.append(
                    f"{target} {tuple(value.shape)} vs {tuple(own[target].shape)}"
                )
            else:
                to_load[target] = value
        if not to_load:
            raise ValueError(
                f"{source}: none of its {len(sd)} tensors matches the {self.arch} model "
                f"(first keys: {list(sd)[:5]}; expected e.g. {list(own)[:3]})"
            )
        self.load_state_dict(to_load, strict=False)
        report.loaded = sorted(to_load)
        report.missing = [k for k in own if k.startswith("backbone.") and k not in to_load]
        return report


def _clean_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        for prefix in _STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        for old, new in _RENAME_PREFIXES.items():
            if key.startswith(old):
                key = new + key[len(old) :]
        out[key] = value
    return out
