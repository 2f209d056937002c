"""Configuration dataclasses shared by the adaptation stages."""

from __future__ import annotations

from dataclasses import dataclass

from diffdass.utils.config import ConfigError


@dataclass
class SegModelConfig:
    arch: str = "deeplabv2_tiny"
    # "none" (random init), "imagenet" (library weights; needs internet or a cache) or a
    # path to a local backbone weight file
    pretrained: str = "none"
    # keep BatchNorm statistics frozen (DeepLab-V2 with ImageNet weights and batch 2)
    freeze_bn: bool = False


@dataclass
class AugConfig:
    resize: list[int] | None = None  # [H, W] working resolution, e.g. GTA5 [720, 1280]
    scale: list[float] | None = None  # [low, high] random rescale (needs `crop`)
    crop: list[int] | None = None  # [H, W] training crop
    hflip: bool = True

    def validate(self) -> None:
        for name in ("resize", "crop"):
            v = getattr(self, name)
            if v is not None and (len(v) != 2 or min(v) <= 0):
                raise ConfigError(f"aug.{name}: expected [H, W] with positive sizes, got {v}")
        if self.scale is not None and (
            len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]
        ):
            raise ConfigError(
                f"aug.scale: expected [low, high] with 0 < low <= high, got {self.scale}"
            )
        if self.scale is not None and self.crop is None:
            raise ConfigError(
                "aug.scale needs aug.crop: rescaled images must be cropped to one size"
            )


@dataclass
class OptimConfig:
    """SGD with poly decay (paper: lr 2.5e-4, momentum 0.9; classifier head at 10x lr)."""

    lr: float = 2.5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    head_lr_mult: float = 10.0  # the newly initialised classifier head learns 10x faster


@dataclass
class NoisyMaskedConfig:
    """Appendix C augmentation: ``prob`` of the samples are noised (Eq. 2) and class-masked."""

    prob: float = 0.1
    max_timestep: int = 600
