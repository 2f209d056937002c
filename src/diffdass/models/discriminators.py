"""CICLD's discriminators: ``f_dis`` of Eq. 8 on latents (:class:`LatentDiscriminator`: a
UNet-encoder-like conv part, global average pooling, then fully connected layers of 1024 and
``num_domains`` (3) outputs) and the PatchGAN of the stage-1 autoencoder pre-training
(:class:`PatchDiscriminator`)."""

from __future__ import annotations

from torch import Tensor, nn

from diffdass.models.cicld_autoencoder import ResBlock, norm_groups


class LatentDiscriminator(nn.Module):
    """``f_dis`` of Eq. 8: UNet-encoder-like conv part, then FC ``hidden`` (1024) and
    ``num_domains`` (3: source, mixed, target; 2 for the two-class ablation) outputs.

    The conv part is a stem conv and, per width, a :class:`ResBlock` followed by a stride-2
    conv; global average pooling makes it independent of the latent size.
    """

    def __init__(
        self,
        in_channels: int = 4,
        channels: tuple[int, ...] = (64, 128, 256),
        num_domains: int = 3,
        hidden: int = 1024,
        groups: int = 32,
    ) -> None:
        super().__init__()
        chs = tuple(int(c) for c in channels)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, chs[0], 3, padding=1)]
        prev = chs[0]
        for ch in chs:
            layers += [ResBlock(prev, ch, groups), nn.Conv2d(ch, ch, 3, stride=2, padding=1)]
            prev = ch
        layers += [nn.GroupNorm(norm_groups(prev, groups), prev), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Sequential(
            nn.Linear(prev, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, num_domains)
        )
        self.num_domains = int(num_domains)

    def forward(self, z: Tensor) -> Tensor:
        """Domain logits ``(B, num_domains)``."""
        return self.fc(self.features(z).mean(dim=(2, 3)))


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix / LDM's autoencoder loss): one real/fake logit per image patch."""

    def __init__(self, in_channels: int = 3, width: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 4, 2, 1),
            nn.LeakyReLU(0.2),
        ]
        ch = width
        for i in range(1, n_layers):
            nxt = width * min(2**i, 8)
            layers += [
                nn.Conv2d(ch, nxt, 4, 2, 1),
                nn.GroupNorm(norm_groups(nxt, 32), nxt),
                nn.LeakyReLU(0.2),
            ]
            ch = nxt
        layers += [nn.Conv2d(ch, 1, 3, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
