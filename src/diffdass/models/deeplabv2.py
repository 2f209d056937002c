"""DeepLab-V2 (Chen et al., TPAMI 2018) with a ResNet-101 backbone.

This is the segmenter of the "Res" rows of Peng et al. (ICCV 2023), Table 1 -- the
standard GTA5/SYNTHIA -> Cityscapes adaptation baseline inherited from AdaptSegNet:

* backbone: torchvision ResNet-101 with ``replace_stride_with_dilation=[False, True, True]``
  (layer3 dilated 2, layer4 dilated 4), so the output stride is 8;
* classifier: ASPP-V2, the **sum** of four 3x3 convolutions ``2048 -> C`` with dilation
  (and padding) 6, 12, 18 and 24, weights ~ N(0, 0.01), biases 0.

The backbone keeps torchvision's module names (``conv1``, ``bn1``, ``layer1`` ... ``layer4``;
``fc``/``avgpool`` removed), so torchvision and timm ResNet checkpoints load directly.

``deeplabv2_tiny`` is the same code on a 4-block, narrow ResNet for CPU tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from .segmenter import Segmenter

ASPP_V2_DILATIONS: tuple[int, ...] = (6, 12, 18, 24)


class ASPPV2(nn.Module):
    """DeepLab-V2 classifier: ``sum_d conv3x3_d(x)`` over the dilations ``d``.

    Each branch maps ``in_channels -> num_classes`` directly (no BN, no ReLU), with
    ``padding = dilation`` so all branches keep the input resolution.
    """

    def __init__(
        self, in_channels: int, num_classes: int, dilations: Sequence[int] = ASPP_V2_DILATIONS
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d, bias=True)
            for d in dilations
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class DeepLabV2(Segmenter):
    """DeepLab-V2: dilated ResNet (output stride 8) + :class:`ASPPV2`.

    Args:
        num_classes: number of classes ``C``.
        backbone: a torchvision ``ResNet`` built with
            ``replace_stride_with_dilation=[False, True, True]``; its ``fc`` and ``avgpool``
            are removed.
        in_channels: channels of ``backbone.layer4``'s output (2048 for ResNet-101).
        arch: architecture name recorded on the model.
        dilations: ASPP-V2 dilations.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: ResNet,
        in_channels: int = 2048,
        arch: str = "deeplabv2_r101",
        dilations: Sequence[int] = ASPP_V2_DILATIONS,
    ) -> None:
        super().__init__(num_classes, arch=arch, output_stride=8)
        for unused in ("fc", "avgpool"):
            if hasattr(backbone, unused):
                delattr(backbone, unused)
        self.backbone = backbone
        self.head = ASPPV2(in_channels, num_classes, dilations)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``layer4`` features (stride 8) of ImageNet-normalised images."""
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))

    def forward_normalized(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def resnet101_dilated() -> ResNet:
    """Randomly initialised torchvision ResNet-101 with output stride 8."""
    from torchvision.models import resnet101

    return resnet101(weights=None, replace_stride_with_dilation=[False, True, True])


def deeplabv2_r101(num_classes: int) -> DeepLabV2:
    """DeepLab-V2 / ResNet-101 (randomly initialised; see ``factory`` for ImageNet weights)."""
    return DeepLabV2(num_classes, resnet101_dilated(), in_channels=2048, arch="deeplabv2_r101")


class NarrowBottleneck(Bottleneck):
    """torchvision ``Bottleneck`` without channel expansion (output width = ``planes``)."""

    expansion = 1


def _bottleneck(expansion: int) -> type[Bottleneck]:
    if expansion == Bottleneck.expansion:
        return Bottleneck
    if expansion == NarrowBottleneck.expansion:
        return NarrowBottleneck
    return type(f"Bottleneck{expansion}x", (Bottleneck,), {"expansion": expansion})


def deeplabv2_tiny(num_classes: int, width_per_group: int = 16, expansion: int = 1) -> DeepLabV2:
    """CPU-sized DeepLab-V2: ``ResNet(Bottleneck, [1, 1, 1, 1])``, same dilations/stride/head.

    Args:
        width_per_group: inner width of the bottlenecks is ``planes * width_per_group / 64``.
        expansion: bottleneck expansion; ``layer4`` (and so the ASPP input) has
            ``512 * expansion`` channels (2048 in ResNet-101, 512 by default here).
    """
    backbone = ResNet(
        _bottleneck(expansion),
        [1, 1, 1, 1],
        replace_stride_with_dilation=[False, True, True],
        width_per_group=width_per_group,
    )
    return DeepLabV2(num_classes, backbone, in_channels=512 * expansion, arch="deeplabv2_tiny")
