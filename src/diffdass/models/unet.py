"""DDPM noise-prediction UNets (diffusers ``UNet2DModel``) for the image translator.

Peng et al. (ICCV 2023) train an unconditional DDPM on target-domain images and translate
source images with it under semantic gradient guidance; the network predicts the noise
``eps(x_t, t)`` of a 3-channel image in ``[-1, 1]``. Presets (see :data:`UNET_PRESETS`):

* ``tiny`` -- block_out_channels (32, 64, 64), layers_per_block 1, self-attention at the
  lowest (1/4) resolution; **1,113,955** parameters. CPU unit tests at 32x64 / 64x128.
* ``small`` -- (32, 64, 128, 128), layers_per_block 1, attention at the lowest (1/8)
  resolution; **4,329,059** parameters. The built-in CPU benchmark at 64x128.
* ``ddpm256`` -- (128, 128, 256, 256, 512, 512), layers_per_block 2, attention at the
  16x16 level of a 256x256 input (fifth block); **113,673,219** parameters. The
  configuration of ``google/ddpm-ema-church-256`` (Ho et al. 2020's 256x256 LSUN models).

(Parameter counts with 3 input/output channels; they do not depend on ``sample_size``.)

Each preset downsamples ``len(block_out_channels) - 1`` times, so ``H`` and ``W`` must be
divisible by :func:`unet_downsample_factor` (4, 8 and 32 respectively).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from diffusers import UNet2DModel

UNET_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "block_out_channels": (32, 64, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        "norm_num_groups": 8,
        "attention_head_dim": 32,
    },
    "small": {
        "block_out_channels": (32, 64, 128, 128),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
        "norm_num_groups": 32,
        "attention_head_dim": 32,
    },
    # google/ddpm-ema-church-256 (and -bedroom/-cat-256) config.json
    "ddpm256": {
        "block_out_channels": (128, 128, 256, 256, 512, 512),
        "layers_per_block": 2,
        "down_block_types": (
            "DownBlock2D",
            "DownBlock2D",
            "DownBlock2D",
            "DownBlock2D",
            "AttnDownBlock2D",
            "DownBlock2D",
        ),
        "up_block_types": (
            "UpBlock2D",
            "AttnUpBlock2D",
            "UpBlock2D",
            "UpBlock2D",
            "UpBlock2D",
            "UpBlock2D",
        ),
        "norm_num_groups": 32,
        "norm_eps": 1e-6,
        "downsample_padding": 0,
        "flip_sin_to_cos": False,
        "freq_shift": 1,
        "attention_head_dim": None,
    },
}

#: Expected parameter counts (3 input and output channels), checked by the tests.
UNET_PARAM_COUNTS: dict[str, int] = {"tiny": 1_113_955, "small": 4_329_059, "ddpm256": 113_673_219}


def unet_downsample_factor(size: str) -> int:
    """Total downsampling of a preset: ``2 ** (len(block_out_channels) - 1)``."""
    return 2 ** (len(_preset(size)["block_out_channels"]) - 1)


def _preset(size: str) -> dict[str, Any]:
    if size not in UNET_PRESETS:
        raise ValueError(f"unknown UNet preset {size!r}; valid ones: {', '.join(UNET_PRESETS)}")
    return UNET_PRESETS[size]


def build_unet(
    size: str = "tiny",
    sample_size: int | tuple[int, int] = (64, 128),
    in_channels: int = 3,
    out_channels: int = 3,
    **overrides: Any,
) -> UNet2DModel:
    """A randomly initialised ``UNet2DModel`` from the preset ``size``.

    Args:
        size: ``"tiny"``, ``"small"`` or ``"ddpm256"`` (see :data:`UNET_PRESETS`).
        sample_size: training resolution ``(H, W)`` (or an int for square images). Stored in
            the model config; both sides must be divisible by the preset's downsample factor.
        in_channels, out_channels: image channels (3).
        **overrides: any other ``UNet2DModel`` argument, replacing the preset's value.

    Call as ``model(x_t, t).sample`` -> predicted noise, same shape as ``x_t``.
    """
    from diffusers import UNet2DModel

    kwargs = copy.deepcopy(_preset(size))
    kwargs.update(overrides)
    hw = (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)
    if len(hw) != 2:
        raise ValueError(f"sample_size must be an int or (H, W), got {sample_size!r}")
    factor = 2 ** (len(kwargs["block_out_channels"]) - 1)
    if hw[0] % factor or hw[1] % factor:
        raise ValueError(
            f"sample_size {hw} is not divisible by {factor}, the downsampling of UNet {size!r}"
        )
    return UNet2DModel(sample_size=hw, in_channels=in_channels, out_channels=out_channels, **kwargs)


def unet_param_count(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())
