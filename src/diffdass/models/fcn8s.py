"""FCN-8s (Long et al., CVPR 2015) with a VGG-16 backbone.

This is the segmenter of the "Vgg" rows of Peng et al. (ICCV 2023), Table 1.

* backbone: torchvision VGG-16 ``features`` (13 convs, 5 max-pools) followed by the fully
  connected layers recast as convolutions: ``fc6`` = 7x7 conv ``512 -> 4096`` and
  ``fc7`` = 1x1 conv ``4096 -> 4096``, each with ReLU and dropout 0.5. ImageNet
  ``classifier.0``/``classifier.3`` weights are reshaped into them on loading;
* head: score layers (1x1 convs to ``C`` classes) on ``fc7``, ``pool4`` and ``pool3``;
  ``score_fr`` is upsampled 2x, added to ``score_pool4``, upsampled 2x again, added to
  ``score_pool3``, and the sum is upsampled 8x. The three upsamplings are learnable
  ``ConvTranspose2d`` layers initialised to bilinear interpolation. As in the reference
  implementation the skip score layers start at zero, so training starts from FCN-32s-like
  predictions.

Differences to the Caffe original, for arbitrary input sizes: no 100-pixel input padding;
``fc6`` uses padding 3 (it keeps the pool5 resolution), and whenever an upsampled map and a
skip map differ in size (inputs not divisible by 32) the upsampled one is bilinearly
resized to the skip map's size. The final map is resized to the input size.

**Output stride: 1** -- the logits have exactly the input resolution (the learned 8x
upsampling is part of the model), so :meth:`Segmenter.predict` is a no-op resize.
Inputs must be at least 32x32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .segmenter import Segmenter

#: torchvision's VGG-16 configuration "D".
VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip
#: A narrow VGG-like configuration for CPU tests (same 5 pooling stages).
VGG_TINY_CFG: tuple[int | str, ...] = (16, "M", 32, "M", 32, "M", 64, "M", 64, "M")


def bilinear_kernel(in_channels: int, out_channels: int, kernel_size: int) -> torch.Tensor:
    """ConvTranspose2d weight ``(in, out, k, k)`` performing channel-wise bilinear upsampling."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float64)
    filt1d = 1 - (og - center).abs() / factor
    filt = filt1d[:, None] * filt1d[None, :]
    weight = torch.zeros(in_channels, out_channels, kernel_size, kernel_size, dtype=torch.float64)
    for i in range(min(in_channels, out_channels)):
        weight[i, i] = filt
    return weight.float()


def _bilinear_up(channels: int, factor: int) -> nn.ConvTranspose2d:
    """Learnable ``factor``-x upsampling (kernel ``2 * factor``, output exactly ``factor``-x)."""
    conv = nn.ConvTranspose2d(
        channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False
    )
    with torch.no_grad():
        conv.weight.copy_(bilinear_kernel(channels, channels, 2 * factor))
    return conv


def _resize_to(x: torch.Tensor, ref_hw: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(ref_hw):
        return x
    return F.interpolate(x, size=tuple(ref_hw), mode="bilinear", align_corners=False)


class VGGBackbone(nn.Module):
    """VGG ``features`` + convolutional ``fc6``/``fc7``; returns ``(pool3, pool4, fc7)``."""

    def __init__(
        self,
        cfg: Sequence[int | str] = VGG16_CFG,
        fc_channels: int = 4096,
        fc6_kernel: int = 7,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        from torchvision.models.vgg import make_layers

        self.features = make_layers(list(cfg), batch_norm=False)
        pools = [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        if len(pools) != 5:
            raise ValueError(f"FCN-8s needs a VGG configuration with 5 pools, got {len(pools)}")
        self.pool3_index, self.pool4_index = pools[2], pools[3]
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        self.pool3_channels = _channels_before(self.features, self.pool3_index)
        self.pool4_channels = _channels_before(self.features, self.pool4_index)
        last = convs[-1].out_channels
        self.fc6 = nn.Conv2d(last, fc_channels, fc6_kernel, padding=fc6_kernel // 2)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.relu = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(dropout)
        self.drop7 = nn.Dropout(dropout)
        self.fc_channels = fc_channels
        # torchvision VGG initialisation (convs: Kaiming fan-out, "linear" fc: N(0, 0.01))
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for m in (self.fc6, self.fc7):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pool3 = pool4 = x
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == self.pool3_index:
                pool3 = x
            elif i == self.pool4_index:
                pool4 = x
        x = self.drop6(self.relu(self.fc6(x)))
        x = self.drop7(self.relu(self.fc7(x)))
        return pool3, pool4, x


def _channels_before(features: nn.Sequential, index: int) -> int:
    convs = [m for m in list(features)[:index] if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


class FCN8sHead(nn.Module):
    """Score layers and the 2x / 2x / 8x learnable upsampling with skip fusion."""

    def __init__(
        self, num_classes: int, fc_channels: int, pool4_channels: int, pool3_channels: int
    ) -> None:
        super().__init__()
        self.score_fr = nn.Conv2d(fc_channels, num_classes, 1)
        self.score_pool4 = nn.Conv2d(pool4_channels, num_classes, 1)
        self.score_pool3 = nn.Conv2d(pool3_channels, num_classes, 1)
        self.upscore2 = _bilinear_up(num_classes, 2)
        self.upscore_pool4 = _bilinear_up(num_classes, 2)
        self.upscore8 = _bilinear_up(num_classes, 8)
        nn.init.normal_(self.score_fr.weight, 0.0, 0.01)
        nn.init.zeros_(self.score_fr.bias)
        for m in (self.score_pool4, self.score_pool3):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, pool3: torch.Tensor, pool4: torch.Tensor, fc7: torch.Tensor) -> torch.Tensor:
        """Logits at stride 1 of the pool3 grid (8x pool3's size)."""
        score4 = self.score_pool4(pool4)
        fuse4 = _resize_to(self.upscore2(self.score_fr(fc7)), score4.shape[-2:]) + score4
        score3 = self.score_pool3(pool3)
        fuse3 = _resize_to(self.upscore_pool4(fuse4), score3.shape[-2:]) + score3
        return self.upscore8(fuse3)


class FCN8s(Segmenter):
    """FCN-8s; returns logits at the input resolution (output stride 1)."""

    def __init__(
        self,
        num_classes: int,
        cfg: Sequence[int | str] = VGG16_CFG,
        fc_channels: int = 4096,
        arch: str = "fcn8s_vgg16",
    ) -> None:
        super().__init__(num_classes, arch=arch, output_stride=1)
        self.backbone = VGGBackbone(cfg, fc_channels=fc_channels)
        self.head = FCN8sHead(
            num_classes,
            fc_channels=fc_channels,
            pool4_channels=self.backbone.pool4_channels,
            pool3_channels=self.backbone.pool3_channels,
        )

    def forward_normalized(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < 32:
            raise ValueError(f"FCN-8s needs inputs of at least 32x32, got {tuple(x.shape[-2:])}")
        out = self.head(*self.backbone(x))
        return _resize_to(out, x.shape[-2:])

    def convert_pretrained_keys(
        self, state_dict: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Map ImageNet classifier weights onto ``fc6``/``fc7``.

        Accepted layouts: torchvision (``classifier.0`` = Linear ``512*7*7 -> 4096``,
        ``classifier.3`` = Linear ``4096 -> 4096``) and timm (``pre_logits.fc1``/``fc2``,
        already convolutions). Linear weights are reshaped to the conv kernels when the
        number of elements agrees; otherwise they are left for the shape check to report.
        """
        aliases = {
            "classifier.0.": "fc6.",
            "classifier.3.": "fc7.",
            "pre_logits.fc1.": "fc6.",
            "pre_logits.fc2.": "fc7.",
        }
        b = self.backbone
        targets = {"fc6.weight": b.fc6.weight.shape, "fc7.weight": b.fc7.weight.shape}
        out: dict[str, torch.Tensor] = {}
        for key, value in state_dict.items():
            for old, new in aliases.items():
                if key.startswith(old):
                    key = new + key[len(old) :]
                    break
            if key in targets and isinstance(value, torch.Tensor):
                shape = targets[key]
                if value.shape != shape and value.numel() == shape.numel():
                    value = value.reshape(shape)
            out[key] = value
        return out


def fcn8s_vgg16(num_classes: int) -> FCN8s:
    """FCN-8s / VGG-16 (randomly initialised; see ``factory`` for ImageNet weights)."""
    return FCN8s(num_classes, VGG16_CFG, fc_channels=4096, arch="fcn8s_vgg16")


def fcn8s_tiny(
    num_classes: int, cfg: Sequence[int | str] = VGG_TINY_CFG, fc_channels: int = 128
) -> FCN8s:
    """CPU-sized FCN-8s: narrow VGG (``make_layers`` on ``cfg``) and ``fc_channels``-wide fc6/7."""
    return FCN8s(num_classes, cfg, fc_channels=fc_channels, arch="fcn8s_tiny")
