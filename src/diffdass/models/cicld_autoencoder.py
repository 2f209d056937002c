"""CICLD's autoencoder: diffusers' ``AutoencoderKL`` (LDM's "KL-f" autoencoders) with the
*inter-coder connection* of Yu, Sun, Luo (Sec. 3.3) between its encoder ``E`` and decoder ``D``.

:class:`InterCoderAutoencoder` runs diffusers' encoder block by block so that it can return
``E``'s feature map at every resolution (the output of each down block's resnets, before its
downsampler), and runs the decoder block by block so that, at each connected level, the
running feature is concatenated with ``E``'s feature of that resolution and fused back to
the decoder's width by a 1x1 convolution (:class:`SkipFusion`). The fusion starts as the
identity on the decoder's feature and zero on ``E``'s, so a pretrained decoder (e.g. LDM's
public KL-f8 weights in a local diffusers folder) decodes exactly as before until training
uses the connection. Which levels are connected is a list of level indices ``i`` (the level
at ``1 / 2**i`` of the image); see :func:`fine_levels` for the default.

Also here: the :class:`DiagonalGaussian` posterior and the building blocks :class:`ResBlock`
and :func:`norm_groups` shared with the discriminators and the mask encoder.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def norm_groups(channels: int, groups: int) -> int:
    """The largest group count <= ``groups`` that divides ``channels``."""
    return math.gcd(int(channels), int(groups)) or 1


class ResBlock(nn.Module):
    """``GN-SiLU-conv3x3-GN-SiLU-conv3x3`` plus a (1x1 when widths differ) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, groups: int = 32) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_groups(in_ch, groups), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(norm_groups(out_ch, groups), out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.shortcut(x) + h


class DiagonalGaussian:
    """Diagonal Gaussian posterior ``q(z | x)`` from ``moments = cat(mean, logvar)`` (dim 1).

    ``logvar`` is clamped to ``[-30, 20]`` (as in LDM) so ``exp`` never overflows.
    """

    def __init__(self, moments: Tensor) -> None:
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def mode(self) -> Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """``mean + std * eps``, ``eps`` drawn from ``generator`` (reparameterised)."""
        gdev = generator.device if generator is not None else torch.device("cpu")
        eps = torch.randn(self.mean.shape, generator=generator, device=gdev, dtype=self.mean.dtype)
        return self.mean + self.std * eps.to(self.mean.device)

    def kl(self) -> Tensor:
        """``KL(q || N(0, I))`` per sample, summed over C, H, W: shape (B,)."""
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).sum(dim=(1, 2, 3))


# ----------------------------------------------------------------- configuration
def autoencoder_config(
    channels: list[int] | tuple[int, ...],
    latent_channels: int = 4,
    layers_per_block: int = 2,
    groups: int = 32,
    mid_attention: bool = True,
) -> dict:
    """The ``AutoencoderKL`` config of a KL autoencoder with widths ``channels`` (level ``i``
    at ``1 / 2**i``; the latent at the last). LDM's KL-f8 is ``[128, 256, 512, 512]``, 4
    latent channels, 2 layers per block, 32 groups, mid-block attention."""
    n = len(channels)
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": [int(c) for c in channels],
        "layers_per_block": int(layers_per_block),
        "latent_channels": int(latent_channels),
        "norm_num_groups": int(groups),
        "mid_block_add_attention": bool(mid_attention),
    }


def pretrained_config_file(path: str | os.PathLike) -> Path:
    """``config.json`` of a local diffusers ``AutoencoderKL`` folder: ``path`` itself, or its
    ``vae/`` subfolder (a whole Stable Diffusion pipeline folder)."""
    p = Path(path)
    for cand in (p / "config.json", p / "vae" / "config.json"):
        if cand.is_file():
            return cand
    raise FileNotFoundError(
        f"{p}: no diffusers AutoencoderKL here (config.json or vae/config.json); "
        "nothing is downloaded, give a local folder saved with save_pretrained"
    )


def read_pretrained_config(path: str | os.PathLike) -> dict:
    """The architecture fields of a local pretrained ``AutoencoderKL`` (see
    :func:`pretrained_config_file`); a one-line error for a missing or bad folder."""
    f = pretrained_config_file(path)
    try:
        cfg = json.loads(f.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{f}: unreadable diffusers config ({exc})") from exc
    if cfg.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise ValueError(f"{f}: a {cfg.get('_class_name')}, not an AutoencoderKL")
    keys = (
        "in_channels out_channels down_block_types up_block_types block_out_channels "
        "layers_per_block latent_channels norm_num_groups mid_block_add_attention"
    ).split()
    return {k: cfg[k] for k in keys if k in cfg}


def fine_levels(n_levels: int) -> list[int]:
    """The default connected levels: those finer than the middle of the pyramid,
    ``i < (n_levels - 1) / 2`` (4 levels: 1/1 and 1/2; 3 levels: 1/1). The latent's own
    resolution is never among them, so the segmentation's coarse layout must pass through
    the (denoised) latent."""
    return [i for i in range(n_levels) if i < (n_levels - 1) / 2]


# ----------------------------------------------------------------- modules
class SkipFusion(nn.Module):
    """``conv1x1(cat(h, s))`` back to ``h``'s width: the inter-coder connection at one level.

    Initialised as ``h`` (identity on the decoder's feature, zero on the encoder's), so a
    pretrained decoder is unchanged until training uses the connection; the zero half still
    gets a gradient at once (as ControlNet's zero convolutions do)."""

    def __init__(self, channels: int, skip_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels + skip_channels, channels, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, :channels, 0, 0].copy_(torch.eye(channels))
            self.conv.bias.zero_()

    def forward(self, h: Tensor, s: Tensor) -> Tensor:
        return self.conv(torch.cat([h, s.to(h.dtype)], dim=1))


class InterCoderAutoencoder(nn.Module):
    """``E`` and ``D`` of CICLD: a diffusers ``AutoencoderKL`` (``self.vae``) plus one
    :class:`SkipFusion` per connected level.

    Args:
        config: the ``AutoencoderKL`` config (:func:`autoencoder_config`, or a pretrained
            folder's, :func:`read_pretrained_config`).
        levels: connected levels (``None``: :func:`fine_levels`; ``[]``: no connection).
        pretrained: local diffusers folder whose weights are loaded into ``self.vae``.
    """

    def __init__(
        self,
        config: dict,
        levels: list[int] | None = None,
        pretrained: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        from diffusers import AutoencoderKL

        if pretrained:
            folder = pretrained_config_file(pretrained).parent
            try:
                self.vae = AutoencoderKL.from_pretrained(folder, local_files_only=True)
            except Exception as exc:  # diffusers raises many kinds
                raise ValueError(f"{folder}: cannot load AutoencoderKL weights ({exc})") from exc
        else:
            self.vae = AutoencoderKL(**config)
        self.channels = [int(c) for c in self.vae.config.block_out_channels]
        n = len(self.channels)
        self.levels = sorted(fine_levels(n) if levels is None else {int(i) for i in levels})
        for i in self.levels:
            if not 0 <= i < n:
                raise ValueError(f"inter-coder level {i} outside 0..{n - 1}")
        # decoder width entering up block k (level n-1-k): the previous block's output
        widths = [self.channels[-1], *reversed(self.channels[1:])]
        self.fusions = nn.ModuleDict(
            {str(i): SkipFusion(widths[n - 1 - i], self.channels[i]) for i in self.levels}
        )

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    def encode(self, x: Tensor) -> tuple[DiagonalGaussian, list[Tensor | None]]:
        """Posterior ``q(z | x)`` and ``E``'s features per level (``None`` where unconnected)."""
        enc = self.vae.encoder
        h = enc.conv_in(x)
        skips: list[Tensor | None] = []
        for i, block in enumerate(enc.down_blocks):
            for resnet in block.resnets:
                h = resnet(h, temb=None)
            skips.append(h if i in self.levels else None)
            if block.downsamplers is not None:
                for down in block.downsamplers:
                    h = down(h)
        h = enc.conv_out(enc.conv_act(enc.conv_norm_out(enc.mid_block(h))))
        if self.vae.quant_conv is not None:
            h = self.vae.quant_conv(h)
        return DiagonalGaussian(h), skips

    def features(self, z: Tensor, skips: list[Tensor | None] | None) -> Tensor:
        """``D``'s full-resolution features (width ``channels[0]``) of latent ``z``.

        ``skips`` from :meth:`encode`; ``None`` feeds zeros at every connected level
        (latent-only decoding, used by the reconstruction pre-training)."""
        dec = self.vae.decoder
        if self.vae.post_quant_conv is not None:
            z = self.vae.post_quant_conv(z)
        h = dec.mid_block(dec.conv_in(z), None)
        n = len(self.channels)
        for k, block in enumerate(dec.up_blocks):
            i = n - 1 - k
            if i in self.levels:
                s = None if skips is None else skips[i]
                if s is None:
                    s = h.new_zeros(h.shape[0], self.channels[i], *h.shape[-2:])
                elif s.shape[-2:] != h.shape[-2:]:
                    raise ValueError(
                        f"inter-coder feature of level {i} is {tuple(s.shape)}, decoder "
                        f"feature {tuple(h.shape)}: the image size must be divisible by "
                        f"{self.downsample}"
                    )
                h = self.fusions[str(i)](h, s)
            h = block(h, None)
        return dec.conv_act(dec.conv_norm_out(h))

    def reconstruct(self, z: Tensor, skips: list[Tensor | None] | None = None) -> Tensor:
        """Image ``(B, 3, H, W)`` decoded from ``z`` (unbounded; compare with ``[-1, 1]``)."""
        return self.vae.decoder.conv_out(self.features(z, skips))
