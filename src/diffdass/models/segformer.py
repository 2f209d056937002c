"""SegFormer MiT-B5 encoder + DAFormer decoder (Hoyer et al., CVPR 2022).

This is the segmenter of the "Seg" rows of Peng et al. (ICCV 2023), Table 1.

* backbone: the Mix Transformer (MiT) encoder of segmentation-models-pytorch
  (``smp.encoders.get_encoder("mit_b5")``). smp returns six feature maps
  ``[input, empty (stride 2), s4, s8, s16, s32]``; the first two are placeholders and are
  dropped, the four hierarchical stages (64/128/320/512 channels for B1-B5) feed the head.
  smp's MiT keeps the original SegFormer parameter names (``patch_embed1``, ``block1``,
  ``norm1``, ...), so NVIDIA/mmseg MiT checkpoints load directly.
* head: DAFormer's context-aware feature fusion decoder, written from the paper /
  ``DAFormerHead`` config (``embed_dims=256``, ``fusion_cfg=aspp, sep=True,
  dilations=(1, 6, 12, 18), pool=False``):

  1. each stage is embedded to ``embed_dim`` channels by a linear layer (a 1x1 conv here,
     no norm/activation) and bilinearly resized to the stride-4 grid;
  2. the concatenation (``4 * embed_dim`` channels) goes through a depthwise-separable ASPP:
     a 1x1 Conv-BN-ReLU branch (dilation 1) and depthwise-separable 3x3 branches
     (depthwise Conv-BN-ReLU + pointwise Conv-BN-ReLU) with dilations 6, 12, 18;
  3. the branch outputs are concatenated and fused by a 3x3 Conv-BN-ReLU bottleneck into
     ``channels`` (256) channels;
  4. dropout (``Dropout2d``, p=0.1) and a 1x1 classifier (init N(0, 0.01)).

**Output stride: 4.**
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .segmenter import Segmenter

DAFORMER_DILATIONS: tuple[int, ...] = (1, 6, 12, 18)


class ConvBNReLU(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> ReLU, i.e. mmcv's ``ConvModule`` with BN + ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        dilation: int = 1,
        groups: int = 1,
    ) -> None:
        padding = dilation * (kernel_size // 2)
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                padding=padding,
                dilation=dilation,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DepthwiseSeparableConv(nn.Sequential):
    """Depthwise 3x3 (dilated) Conv-BN-ReLU followed by pointwise 1x1 Conv-BN-ReLU."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int) -> None:
        super().__init__(
            ConvBNReLU(in_channels, in_channels, 3, dilation=dilation, groups=in_channels),
            ConvBNReLU(in_channels, out_channels, 1),
        )


class SepASPP(nn.Module):
    """DAFormer's fusion module: depthwise-separable ASPP (no image pooling) + 3x3 bottleneck.

    Branch ``d == 1`` is a 1x1 Conv-BN-ReLU, the others :class:`DepthwiseSeparableConv`.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        dilations: Sequence[int] = DAFORMER_DILATIONS,
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            ConvBNReLU(in_channels, channels, 1)
            if d == 1
            else DepthwiseSeparableConv(in_channels, channels, d)
            for d in dilations
        )
        self.bottleneck = ConvBNReLU(len(self.branches) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(torch.cat([branch(x) for branch in self.branches], dim=1))


class DAFormerHead(nn.Module):
    """DAFormer context-aware fusion decoder; logits at the stride of the first feature map.

    Args:
        in_channels: channels of the four encoder stages (stride 4, 8, 16, 32).
        num_classes: number of classes.
        embed_dim: per-stage embedding width (256 in DAFormer).
        channels: width of the fused features (256 in DAFormer).
        dilations: fusion ASPP dilations.
        dropout: dropout probability before the classifier.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        embed_dim: int = 256,
        channels: int = 256,
        dilations: Sequence[int] = DAFORMER_DILATIONS,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.embed = nn.ModuleList(nn.Conv2d(c, embed_dim, 1) for c in in_channels)
        self.fuse = SepASPP(len(in_channels) * embed_dim, channels, dilations)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(features) != len(self.embed):
            raise ValueError(f"expected {len(self.embed)} feature maps, got {len(features)}")
        size = features[0].shape[-2:]
        embedded = []
        for f, embed in zip(features, self.embed, strict=True):
            e = embed(f)
            if e.shape[-2:] != size:
                e = F.interpolate(e, size=size, mode="bilinear", align_corners=False)
            embedded.append(e)
        return self.classifier(self.dropout(self.fuse(torch.cat(embedded, dim=1))))


class SegFormer(Segmenter):
    """MiT encoder (smp) + :class:`DAFormerHead`; logits at output stride 4.

    Args:
        num_classes: number of classes.
        encoder_name: smp MiT encoder (``mit_b0`` ... ``mit_b5``), randomly initialised.
        embed_dim: head embedding and fusion width.
        arch: architecture name recorded on the model.
    """

    def __init__(
        self,
        num_classes: int,
        encoder_name: str = "mit_b5",
        embed_dim: int = 256,
        arch: str = "segformer_b5",
    ) -> None:
        super().__init__(num_classes, arch=arch, output_stride=4)
        import segmentation_models_pytorch as smp

        self.encoder_name = encoder_name
        self.backbone = smp.encoders.get_encoder(encoder_name, weights=None)
        # smp: [input (3 ch), empty stride-2 placeholder (0 ch), s4, s8, s16, s32]
        stage_channels = list(self.backbone.out_channels)[2:]
        self.head = DAFormerHead(
            stage_channels, num_classes, embed_dim=embed_dim, channels=embed_dim
        )

    def forward_normalized(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)[2:]
        return self.head(features)


def segformer_b5(num_classes: int) -> SegFormer:
    """SegFormer MiT-B5 + DAFormer head (randomly initialised)."""
    return SegFormer(num_classes, "mit_b5", embed_dim=256, arch="segformer_b5")


def segformer_tiny(num_classes: int) -> SegFormer:
    """CPU-sized variant: MiT-B0 encoder, head width 64."""
    return SegFormer(num_classes, "mit_b0", embed_dim=64, arch="segformer_tiny")
