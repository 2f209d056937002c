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

    def transform(self):
        """The training transform these settings describe (``train_transform``)."""
        from diffdass.data.transforms import train_transform

        return train_transform(
            crop=tuple(self.crop) if self.crop else None,
            resize=tuple(self.resize) if self.resize else None,
            scale=tuple(self.scale) if self.scale else None,
            hflip=self.hflip,
        )

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


#: Optimisers accepted by ``OptimConfig.name``.
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")


@dataclass
class OptimConfig:
    """Optimiser with poly decay, optionally after a linear warm-up.

    Paper recipe (the default): SGD, lr 2.5e-4, momentum 0.9, weight decay 5e-4, poly 0.9,
    classifier head at 10x lr -- it assumes ImageNet-initialised backbones. CPU-scale runs from
    random initialisation (``unet_small``) use AdamW, e.g. lr 1e-3, ``head_lr_mult: 1.0``.
    """

    # "sgd" (paper) or "adamw" (betas (0.9, 0.999); random-init CPU-scale recipe)
    name: str = "sgd"
    # base learning rate: the backbone's; the head gets lr * head_lr_mult
    lr: float = 2.5e-4
    # SGD momentum; unused by AdamW
    momentum: float = 0.9
    # SGD: L2 penalty added to the gradient; AdamW: decoupled decay (p -= lr * wd * p)
    weight_decay: float = 5e-4
    # lr(it) = lr * (1 - it / iterations) ** poly_power, for both optimisers
    poly_power: float = 0.9
    # the newly initialised classifier head learns this many times faster (both optimisers)
    head_lr_mult: float = 10.0
    # linear warm-up over the first `warmup` iterations (lr * (it + 1) / warmup, times the
    # poly factor); 0 disables it
    warmup: int = 0

    def validate(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError(
                f"optim.name: unknown optimiser {self.name!r}; valid ones are "
                f"{', '.join(OPTIMIZERS)}"
            )
        if self.warmup < 0:
            raise ConfigError(f"optim.warmup must be >= 0, got {self.warmup}")


@dataclass
class NoisyMaskedConfig:
    """Appendix C augmentation: ``prob`` of the samples are noised (Eq. 2) and class-masked."""

    prob: float = 0.1
    max_timestep: int = 600
