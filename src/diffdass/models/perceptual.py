"""LPIPS-style perceptual distance on VGG-16 features, built from local weight files only.

The stage-1 autoencoder of latent diffusion (Rombach et al. 2022, and CICLD Sec. 3.5) is
trained with an L1 + LPIPS reconstruction loss. LPIPS (Zhang et al. 2018) compares the
channel-normalised activations of an ImageNet VGG-16 at five depths (relu1_2, relu2_2,
relu3_3, relu4_3, relu5_3)::

    d(x, y) = sum_l  mean_{h,w}  sum_c  w_{l,c} (f_l(x) / |f_l(x)|_c - f_l(y) / |f_l(y)|_c)^2

with learned non-negative channel weights ``w_l`` ("lin" layers). Nothing is downloaded:

* ``vgg_weights``: a VGG-16 state dict, e.g. torchvision's ``vgg16-397923af.pth`` (keys
  ``features.N.weight``) or just the feature part (keys ``N.weight``), ``.pth`` or
  ``.safetensors``;
* ``lin_weights`` (optional): LPIPS's ``vgg.pth`` (keys ``lin0.model.1.weight`` ..
  ``lin4.model.1.weight``). Without it every channel weighs 1 (the "baseline" variant of the
  LPIPS paper, which ranks image distortions almost as well).

Random VGG weights (``vgg_weights=None``) exist only for tests: a perceptual loss from an
untrained network measures nothing, and :func:`build_perceptual` refuses it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

#: indices in ``torchvision.models.vgg16().features`` of the ReLUs LPIPS reads
LPIPS_LAYERS = (3, 8, 15, 22, 29)
#: channel widths at those layers
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
# LPIPS's ScalingLayer: inputs in [-1, 1] mapped to ImageNet-normalised values
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def _vgg16_features() -> nn.Sequential:
    from torchvision.models import vgg16

    return vgg16(weights=None).features[: LPIPS_LAYERS[-1] + 1]


class VGGPerceptual(nn.Module):
    """Frozen LPIPS-style distance; ``forward(x, y)`` gives one value per image pair.

    ``x`` and ``y`` are images in [-1, 1], shape ``(B, 3, H, W)``; gradients flow to both
    inputs, never to the network (its parameters have ``requires_grad=False``).
    """

    def __init__(
        self,
        vgg_weights: str | os.PathLike | None,
        lin_weights: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        self.features = _vgg16_features()
        if vgg_weights is not None:
            _load_vgg(self.features, Path(vgg_weights))
        lin = [torch.ones(1, c, 1, 1) for c in LPIPS_CHANNELS]
        if lin_weights is not None:
            lin = _read_lin(Path(lin_weights))
        for k, w in enumerate(lin):
            self.register_buffer(f"lin{k}", w)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGGPerceptual:  # always in eval mode (no dropout/BN)
        return super().train(False)

    def _activations(self, x: Tensor) -> list[Tensor]:
        h = (x - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in LPIPS_LAYERS:
                out.append(h)
        return out

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected two (B, 3, H, W) batches, got {x.shape} and {y.shape}")
        d = x.new_zeros(x.shape[0])
        for k, (fx, fy) in enumerate(zip(self._activations(x), self._activations(y), strict=True)):
            fx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fy = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            w = getattr(self, f"lin{k}")
            d = d + (w * (fx - fy).pow(2)).sum(1).mean((1, 2))
        return d


def build_perceptual(
    vgg_weights: str | os.PathLike, lin_weights: str | os.PathLike | None = None
) -> VGGPerceptual:
    """The perceptual loss of a training config: a local VGG-16 weight file is required."""
    if not vgg_weights:
        raise ValueError(
            "a perceptual loss needs ImageNet VGG-16 weights from a local file "
            "(nothing is downloaded); leave the perceptual loss off instead"
        )
    return VGGPerceptual(vgg_weights, lin_weights)


def _load_vgg(features: nn.Sequential, path: Path) -> None:
    from diffdass.models.factory import read_state_dict

    state = read_state_dict(path)
    if any(k.startswith("features.") for k in state):
        state = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    own = features.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise ValueError(
            f"{path}: not a VGG-16 state dict (missing {len(missing)} of {len(own)} feature "
            f"tensors, e.g. 'features.{missing[0]}')"
        )
    bad = [k for k in own if state[k].shape != own[k].shape]
    if bad:
        raise ValueError(
            f"{path}: tensor 'features.{bad[0]}' has shape {tuple(state[bad[0]].shape)}, "
            f"VGG-16 needs {tuple(own[bad[0]].shape)}"
        )
    features.load_state_dict({k: state[k] for k in own})


def _read_lin(path: Path) -> list[Tensor]:
    from diffdass.models.factory import read_state_dict

    state = read_state_dict(path)
    out = []
    for k, c in enumerate(LPIPS_CHANNELS):
        key = f"lin{k}.model.1.weight"
        if key not in state:
            raise ValueError(f"{path}: not an LPIPS linear-layer file (no tensor {key!r})")
        w = state[key].float()
        if w.numel() != c:
            raise ValueError(f"{path}: {key} has {w.numel()} weights, LPIPS needs {c}")
        if (w < 0).any():
            raise ValueError(f"{path}: {key} has negative weights (LPIPS's are non-negative)")
        out.append(w.reshape(1, c, 1, 1))
    return out
