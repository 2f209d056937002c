"""CICLD's KL-regularised autoencoder (LDM's "KL-f" autoencoders): the encoder ``E``
(:class:`AutoencoderEncoder`, which also returns its feature map at every resolution: the
skips of the inter-coder connection), its :class:`DiagonalGaussian` posterior and the decoder
``D`` (:class:`AutoencoderDecoder`, which concatenates those skips to its own features when
``inter_coder=True``); the building blocks :class:`ResBlock` and :func:`norm_groups` are
shared with the discriminators. :mod:`diffdass.models.cicld` assembles the whole network."""

from __future__ import annotations

import math

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


# ----------------------------------------------------------------- autoencoder
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


class AutoencoderEncoder(nn.Module):
    """``E``: image -> posterior moments and the feature map of every resolution.

    ``channels[i]`` is the width at resolution ``1 / 2**i``; the latent (``latent_channels``
    wide) is at ``1 / 2**(len(channels) - 1)``.
    """

    def __init__(
        self,
        channels: tuple[int, ...] = (128, 256, 512, 512),
        latent_channels: int = 4,
        in_channels: int = 3,
        groups: int = 32,
    ) -> None:
        super().__init__()
        chs = tuple(int(c) for c in channels)
        self.channels = chs
        self.conv_in = nn.Conv2d(in_channels, chs[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        prev = chs[0]
        for i, ch in enumerate(chs):
            self.blocks.append(ResBlock(prev, ch, groups))
            if i < len(chs) - 1:
                self.downs.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
            prev = ch
        self.mid = ResBlock(prev, prev, groups)
        self.norm_out = nn.GroupNorm(norm_groups(prev, groups), prev)
        self.conv_out = nn.Conv2d(prev, 2 * latent_channels, 3, padding=1)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(moments (B, 2*latent, h, w), [feature at 1/1, 1/2, ..., 1/2**(L-1)])``."""
        h = self.conv_in(x)
        skips = []
        for i, block in enumerate(self.blocks):
            h = block(h)
            skips.append(h)
            if i < len(self.downs):
                h = self.downs[i](h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h))), skips


class AutoencoderDecoder(nn.Module):
    """``D``: latent (+ ``E``'s skips when ``inter_coder``) -> full-resolution features.

    Level ``i`` (from the deepest up) is a :class:`ResBlock` whose input is the running
    feature, concatenated with ``E``'s feature of that resolution when ``inter_coder``; it is
    followed by a nearest 2x upsampling and a 3x3 conv except at full resolution.
    ``forward`` returns features of width ``channels[0]``; :attr:`to_rgb` maps them to an image.
    """

    def __init__(
        self,
        channels: tuple[int, ...] = (128, 256, 512, 512),
        latent_channels: int = 4,
        out_channels: int = 3,
        groups: int = 32,
        inter_coder: bool = True,
    ) -> None:
        super().__init__()
        chs = tuple(int(c) for c in channels)
        self.channels = chs
        self.inter_coder = bool(inter_coder)
        self.conv_in = nn.Conv2d(latent_channels, chs[-1], 3, padding=1)
        self.mid = ResBlock(chs[-1], chs[-1], groups)
        self.blocks = nn.ModuleList()
        self.ups = nn.ModuleList()
        prev = chs[-1]
        for i in reversed(range(len(chs))):
            in_ch = prev + (chs[i] if self.inter_coder else 0)
            self.blocks.append(ResBlock(in_ch, chs[i], groups))
            if i > 0:
                self.ups.append(nn.Conv2d(chs[i], chs[i - 1], 3, padding=1))
                prev = chs[i - 1]
        self.norm_out = nn.GroupNorm(norm_groups(chs[0], groups), chs[0])
        self.to_rgb = nn.Conv2d(chs[0], out_channels, 3, padding=1)

    def forward(self, z: Tensor, skips: list[Tensor] | None = None) -> Tensor:
        """Features ``(B, channels[0], H, W)``.

        ``skips``: ``E``'s features (needed when ``inter_coder``); ``None`` feeds zeros in
        their place, i.e. a latent-only decoding (used by the stage-1 reconstruction).
        """
        h = self.mid(self.conv_in(z))
        n = len(self.channels)
        for k, block in enumerate(self.blocks):
            i = n - 1 - k  # resolution level 1 / 2**i
            if self.inter_coder:
                if skips is None:
                    s = h.new_zeros(h.shape[0], self.channels[i], *h.shape[-2:])
                else:
                    s = skips[i]
                    if s.shape[-2:] != h.shape[-2:]:
                        raise ValueError(
                            f"inter-coder skip {i} is {tuple(s.shape)}, decoder feature "
                            f"{tuple(h.shape)}: the image size must be divisible by "
                            f"{2 ** (n - 1)}"
                        )
                h = torch.cat([h, s], dim=1)
            h = block(h)
            if i > 0:
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
                h = self.ups[k](h)
        return F.silu(self.norm_out(h))

    def reconstruct(self, z: Tensor, skips: list[Tensor] | None = None) -> Tensor:
        """Image ``(B, 3, H, W)`` decoded from ``z`` (unbounded; compare with ``[-1, 1]`` images)."""
        return self.to_rgb(self(z, skips))
