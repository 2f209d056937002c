"""``unet_small``: a small U-Net segmenter for CPU-scale runs from random initialisation.

Why it exists: the paper's segmenters (DeepLab-V2, FCN-8s, SegFormer) assume ImageNet
weights and, for DeepLab-V2, an output stride of 8. At CPU scale (64x128 images, random
initialisation, a few hundred to a few thousand iterations) their ``*_tiny`` variants learn
the large classes but leave thin and small structures (poles, lights, bicycles) at 0 IoU:
at stride 8 a 64x128 image gives 8x16 logits, coarser than the objects. A plain U-Net with
skip connections at every resolution and full-resolution logits, trained with AdamW, learns
those structures within the same CPU budget (``docs/segmenters.md`` has the measurement).

Architecture (``base_width`` ``c``, ``depth`` ``d`` down-sampling levels; defaults 16, 3):

* ``backbone`` (encoder): a stem block ``3 -> c`` at full resolution, then ``d`` levels of
  2x2 max-pool + block doubling the width (``c, 2c, ..., 2^d c``). A *block* is two
  ``3x3 conv (no bias) -> BatchNorm -> ReLU`` layers. It returns the feature of every level.
* ``head`` (decoder): per level, from the deepest up, an up-sampling that halves the width
  (``upsample="transposed"``: a 2x2 stride-2 ``ConvTranspose2d``; ``"nearest"``: nearest
  2x up-sampling then a 1x1 convolution), concatenation with the encoder feature of that
  resolution (skip connection), and a block; finally a 1x1 convolution to ``num_classes``
  logits.

The family is named ``unet_w<c>_d<d>[_nearest]`` in :func:`diffdass.models.build_segmenter`
(e.g. ``unet_w32_d2_nearest``); ``unet_small`` is ``unet_w16_d3``.

Defaults: 16 / 3 levels, 0.48M parameters. **Output stride 1**: the logits have exactly the
input size. Inputs of any size are accepted: they are padded (replicate, bottom/right) to a
multiple of ``2^d`` and the logits are cropped back. The network is differentiable with
respect to its input (semantic gradient guidance back-propagates through it) and works in
eval mode with batch size 1.

There are no ImageNet weights for it (``pretrained=True`` / ``imagenet`` is a
``ValueError``); a local weight file (a full diffdass model state dict, or an encoder state
dict with ``backbone.``-less keys) loads like for every other architecture.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from .segmenter import Segmenter


class ConvBlock(nn.Sequential):
    """Two ``3x3 conv (no bias) -> BatchNorm -> ReLU`` layers, ``in_ch -> out_ch -> out_ch``."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class UNetEncoder(nn.Module):
    """Stem block + ``depth`` x (max-pool, block); returns the feature of every level."""

    def __init__(self, base_width: int = 16, depth: int = 3) -> None:
        super().__init__()
        self.widths = [base_width * 2**i for i in range(depth + 1)]
        self.stem = ConvBlock(3, self.widths[0])
        self.downs = nn.ModuleList(
            ConvBlock(self.widths[i], self.widths[i + 1]) for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.stem(x)]
        for block in self.downs:
            feats.append(block(F.max_pool2d(feats[-1], 2)))
        return feats


#: the decoder's up-sampling choices
UPSAMPLING = ("transposed", "nearest")


class UNetDecoder(nn.Module):
    """Up-sampling + skip concatenation + block per level, then 1x1 logits."""

    def __init__(self, widths: list[int], num_classes: int, upsample: str = "transposed") -> None:
        super().__init__()
        if upsample not in UPSAMPLING:
            raise ValueError(f"upsample must be one of {UPSAMPLING}, got {upsample!r}")
        deep_to_shallow = list(reversed(widths))
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for w_in, w_out in zip(deep_to_shallow[:-1], deep_to_shallow[1:], strict=True):
            if upsample == "transposed":
                self.ups.append(nn.ConvTranspose2d(w_in, w_out, 2, stride=2))
            else:
                self.ups.append(
                    nn.Sequential(
                        nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w_in, w_out, 1)
                    )
                )
            self.blocks.append(ConvBlock(2 * w_out, w_out))
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for up, block, skip in zip(self.ups, self.blocks, reversed(feats[:-1]), strict=True):
            x = block(torch.cat([up(x), skip], dim=1))
        return self.classifier(x)


class UNetSeg(Segmenter):
    """U-Net segmenter: full-resolution logits (output stride 1) for inputs of any size."""

    def __init__(
        self,
        num_classes: int,
        base_width: int = 16,
        depth: int = 3,
        arch: str = "unet_small",
        upsample: str = "transposed",
    ) -> None:
        super().__init__(num_classes, arch=arch, output_stride=1)
        if base_width < 1 or depth < 1:
            raise ValueError(f"base_width and depth must be >= 1, got {base_width}, {depth}")
        self.depth = int(depth)
        self.backbone = UNetEncoder(base_width, depth)
        self.head = UNetDecoder(self.backbone.widths, num_classes, upsample)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # the classifier keeps PyTorch's default init: with a near-zero one (N(0, 0.01), as in
        # DeepLab) AdamW from random init stalled on the class prior in our toy runs
        self.head.classifier.reset_parameters()

    def forward_normalized(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = 2**self.depth
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:  # replicate-pad bottom/right to a multiple of 2^depth; crop back below
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        # channels-last activations: ~30% faster convolutions on CPU (oneDNN); the weights and
        # the returned logits keep the default contiguous layout
        out = self.head(self.backbone(x.contiguous(memory_format=torch.channels_last)))
        return (out[..., :h, :w] if (ph or pw) else out).contiguous()


def unet_small(num_classes: int, base_width: int = 16, depth: int = 3) -> UNetSeg:
    """The CPU-scale U-Net: widths 16/32/64/128, 3 down-sampling levels, 0.48M parameters."""
    return UNetSeg(num_classes, base_width=base_width, depth=depth, arch="unet_small")


#: ``unet_w<width>_d<depth>[_nearest]``: the U-Net family by its hyper-parameters
UNET_FAMILY = re.compile(r"unet_w(\d+)_d(\d+)(_nearest)?")


def unet_family(arch: str, num_classes: int) -> UNetSeg:
    """The U-Net named ``unet_w<width>_d<depth>[_nearest]`` (e.g. ``unet_w32_d2_nearest``)."""
    m = UNET_FAMILY.fullmatch(arch)
    if m is None:
        raise ValueError(f"{arch!r} is not of the form unet_w<width>_d<depth>[_nearest]")
    up = "nearest" if m.group(3) else "transposed"
    return UNetSeg(num_classes, int(m.group(1)), int(m.group(2)), arch=arch, upsample=up)
