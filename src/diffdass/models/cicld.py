"""CICLD networks (Yu, Sun, Luo: conditional and inter-coder connected latent diffusion).

The segmentation path of the paper's Fig. 2, as modules::

    x --E--> posterior N(mu, sigma^2) --mode, normalise--> z_0 --q_sample--> z_t
        |                                                             |
        | E's features at the connected levels          eps_theta(z_t, t | c), c from y
        | (inter-coder connection)                                    |
        v                                                             v
    f_cls( D(z_bar_0, features) ) <------------------------------ z_bar_0 (DDIM steps)

* ``E`` / ``D`` (:class:`~diffdass.models.cicld_autoencoder.InterCoderAutoencoder`): diffusers'
  ``AutoencoderKL`` (random init, or LDM's public KL-f8 weights from a local folder,
  ``pretrained``), with ``E``'s features concatenated into ``D`` at the connected levels
  (``inter_coder_levels``; by default only the fine ones, so the coarse layout must pass
  through the denoised latent). ``D``'s full-resolution features go to :class:`PixelClassifier`
  ``f_cls`` (logits) or to the autoencoder's output conv (the reconstruction, pre-training).
* The latent is normalised before the diffusion (``latent_norm``): divided by each sample's
  RMS (``sample``, default: the encoder cannot drown the noise by inflating the latent), or
  multiplied by a scale factor estimated once after the autoencoder's pre-training
  (``scale``, LDM's 0.18215 practice), or left as is (``none``); ``D`` gets it back in
  the autoencoder's units.
* :class:`LatentDenoiser` ``eps_theta``: a diffusers ``UNet2DModel`` on latents, conditioned
  on the label map ``y`` in one of two ways (``condition_mode``): ``concat`` (default) -- a
  spatial label embedding of :class:`MaskEncoder` ``f_mask`` at the latent's resolution,
  concatenated to ``z_t`` (the paper's fine-tuning paragraph names concatenation); ``eq5`` --
  the paper's Eq. 5 ``o_hat = o + softmax(o c^T / sqrt(C)) c`` at the UNet's middle block
  (:class:`ConditionedMidBlock`) with one ``f_mask`` token per middle-block position. No
  condition (``None``) and an all-zero condition give the same output in both modes.
* The discriminators (``f_dis`` of Eq. 8 and the stage-1 PatchGAN) are in
  :mod:`diffdass.models.discriminators`.
* :class:`CICLDNet` ties them together; :class:`CICLDSegmenter` is the inference wrapper
  (images in ``[-1, 1]`` -> logits) for :func:`diffdass.evaluation.evaluate`.

The paper's ``f_mask`` is ImageNet-trained; here it is a small conv encoder of the one-hot
label map, trained jointly, which can start from a local weight file
(:meth:`MaskEncoder.load_weights`). Tensors are NCHW, images in ``[-1, 1]``, labels int64 with
255 = ignore.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffdass.models.cicld_autoencoder import (
    DiagonalGaussian,
    InterCoderAutoencoder,
    ResBlock,
    autoencoder_config,
    fine_levels,
    norm_groups,
    read_pretrained_config,
)

IGNORE_INDEX = 255
CONDITION_MODES = ("concat", "eq5")
LATENT_NORMS = ("sample", "scale", "none")


class PixelClassifier(nn.Module):
    """``f_cls``: a per-pixel fully connected network (1x1 convs) -> class logits."""

    def __init__(self, in_ch: int, num_classes: int, hidden: int = 256, groups: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 1),
            nn.GroupNorm(norm_groups(hidden, groups), hidden),
            nn.SiLU(),
            nn.Conv2d(hidden, num_classes, 1),
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)


# ------------------------------------------------------------- conditioning
def condition_features(o: Tensor, c: Tensor | None) -> Tensor:
    """Eq. 5: ``o_hat = o + softmax(o c^T / sqrt(C)) c``, over spatial positions of ``o``.

    Args:
        o: middle-block features ``(B, C, h, w)``; every position is a query ``o_i`` in R^C.
        c: conditioning tokens ``(B, K, C)`` (``None``: no conditioning).

    Returns ``o`` itself when ``c`` is ``None``; ``o`` exactly when ``c`` is all zeros
    (the attention weights then multiply zero vectors).
    """
    if c is None:
        return o
    b, ch, h, w = o.shape
    if c.ndim != 3 or c.shape[0] != b or c.shape[2] != ch:
        raise ValueError(f"condition tokens must be (B={b}, K, C={ch}), got {tuple(c.shape)}")
    q = o.flatten(2).transpose(1, 2)  # (B, N, C)
    c = c.to(q.dtype)
    attn = torch.softmax(q @ c.transpose(1, 2) / math.sqrt(ch), dim=-1)  # (B, N, K)
    return o + (attn @ c).transpose(1, 2).reshape(b, ch, h, w)


class ConditionedMidBlock(nn.Module):
    """Wraps the UNet's middle block and applies :func:`condition_features` to its output.

    The tokens are set for one forward call by :class:`LatentDenoiser` (``self.tokens``);
    they are an attribute of this instance, not global state.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.tokens: Tensor | None = None

    def forward(self, hidden_states: Tensor, temb: Tensor | None = None) -> Tensor:
        return condition_features(self.block(hidden_states, temb), self.tokens)


class LatentDenoiser(nn.Module):
    """``eps_theta(z_t, t | c)``: a diffusers ``UNet2DModel`` on latents, conditioned by
    concatenation (``condition_channels`` extra input channels holding a label embedding at
    the latent's resolution; zeros when unconditioned) or by Eq. 5 at its middle block.

    Args:
        latent_channels: channels of ``z`` (input and output).
        channels: ``block_out_channels``; the middle block works at ``1 / 2**(len - 1)`` of the
            latent resolution with ``channels[-1]`` features (the width of ``c``).
        layers_per_block: resnet layers per UNet block.
        attention: self-attention in the deepest down/up block (LDM-style).
        groups: GroupNorm groups (must divide every width).
        condition: whether ``eps_theta`` takes a condition at all.
        mode: ``"concat"`` or ``"eq5"`` (see the module docstring).
        condition_channels: width of the concatenated label embedding (``concat``).
    """

    def __init__(
        self,
        latent_channels: int = 4,
        channels: tuple[int, ...] = (128, 256, 256),
        layers_per_block: int = 2,
        attention: bool = True,
        groups: int = 32,
        condition: bool = True,
        mode: str = "concat",
        condition_channels: int = 16,
    ) -> None:
        super().__init__()
        from diffusers import UNet2DModel

        if mode not in CONDITION_MODES:
            raise ValueError(f"condition mode must be one of {CONDITION_MODES}, got {mode!r}")
        self.condition = bool(condition)
        self.mode = mode
        self.extra = int(condition_channels) if self.condition and mode == "concat" else 0

        chs = tuple(int(c) for c in channels)
        for c in chs:
            if c % groups:
                raise ValueError(f"UNet width {c} is not divisible by norm groups {groups}")
        down = ["DownBlock2D"] * len(chs)
        up = ["UpBlock2D"] * len(chs)
        if attention:
            down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
        self.unet = UNet2DModel(
            sample_size=None,
            in_channels=latent_channels + self.extra,
            out_channels=latent_channels,
            block_out_channels=chs,
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            layers_per_block=layers_per_block,
            norm_num_groups=groups,
            attention_head_dim=min(chs[-1], 64),
        )
        if self.condition and mode == "eq5":
            self.unet.mid_block = ConditionedMidBlock(self.unet.mid_block)
        self.mid_channels = chs[-1]
        self.downsample = 2 ** (len(chs) - 1)

    def forward(self, z_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """Predicted noise, same shape as ``z_t``; ``t``: model timesteps (B,) (0-based);
        ``cond``: the label embedding ``(B, condition_channels, h, w)`` (``concat``) or the
        tokens ``(B, K, C)`` (``eq5``); ``None``: unconditioned."""
        if cond is not None and not self.condition:
            raise ValueError("this denoiser was built without conditioning (condition=False)")
        if self.extra:
            if cond is None:
                cond = z_t.new_zeros(z_t.shape[0], self.extra, *z_t.shape[-2:])
            elif cond.shape[1] != self.extra or cond.shape[-2:] != z_t.shape[-2:]:
                raise ValueError(
                    f"label embedding must be (B, {self.extra}, {tuple(z_t.shape[-2:])}), "
                    f"got {tuple(cond.shape)}"
                )
            return self.unet(torch.cat([z_t, cond.to(z_t.dtype)], dim=1), t).sample
        if not self.condition:
            return self.unet(z_t, t).sample
        self.unet.mid_block.tokens = cond
        try:
            return self.unet(z_t, t).sample
        finally:
            self.unet.mid_block.tokens = None


class MaskEncoder(nn.Module):
    """``f_mask``: a label map -> a label embedding.

    The label is one-hot encoded (ignore pixels: all zeros), passed through ``n_down``
    stride-2 :class:`ResBlock` stages, average-pooled to a resolution ``(h, w)`` and
    projected to ``out_channels``: :meth:`maps` returns that map (``concat`` conditioning,
    at the latent's resolution), :meth:`forward` one token per position (``K = h * w``,
    Eq. 5 at the UNet's middle block).
    """

    def __init__(
        self,
        num_classes: int,
        out_channels: int,
        width: int = 64,
        n_down: int = 3,
        groups: int = 32,
    ) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.conv_in = nn.Conv2d(num_classes, width, 3, padding=1)
        self.stages = nn.ModuleList(
            nn.Sequential(ResBlock(width, width, groups), nn.Conv2d(width, width, 3, 2, 1))
            for _ in range(int(n_down))
        )
        self.norm_out = nn.GroupNorm(norm_groups(width, groups), width)
        self.proj = nn.Conv2d(width, out_channels, 1)

    def maps(self, labels: Tensor, size: tuple[int, int]) -> Tensor:
        """The embedding ``(B, out_channels, size[0], size[1])`` of labels ``(B, H, W)``."""
        onehot = one_hot(labels, self.num_classes)
        h = self.conv_in(onehot)
        for stage in self.stages:
            h = stage(h)
        return self.proj(F.adaptive_avg_pool2d(F.silu(self.norm_out(h)), size))

    def forward(self, labels: Tensor, size: tuple[int, int]) -> Tensor:
        """Tokens ``(B, size[0] * size[1], out_channels)`` of labels ``(B, H, W)``."""
        return self.maps(labels, size).flatten(2).transpose(1, 2)

    def load_weights(self, path: str | os.PathLike) -> None:
        """Load a local ``f_mask`` weight file (safetensors or torch; every key must fit)."""
        from diffdass.models.factory import read_state_dict

        state = read_state_dict(path)
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{path}: does not fit the mask encoder ({exc})") from exc


def one_hot(labels: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """``(B, H, W)`` class indices -> float ``(B, num_classes, H, W)``; ignore pixels are zero."""
    valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
    idx = torch.where(valid, labels, torch.zeros_like(labels))
    oh = F.one_hot(idx.long(), num_classes).permute(0, 3, 1, 2).float()
    return oh * valid.unsqueeze(1).float()


# ------------------------------------------------------------- whole model
@dataclass
class CICLDModelConfig:
    """Widths and switches of :class:`CICLDNet` (defaults: LDM's KL-f8 autoencoder)."""

    # autoencoder (diffusers AutoencoderKL) widths per resolution; downsampling 2 ** (len - 1)
    ae_channels: list[int] = field(default_factory=lambda: [128, 256, 512, 512])
    latent_channels: int = 4
    ae_layers_per_block: int = 2  # LDM's KL-f8
    ae_mid_attention: bool = True  # LDM's KL-f8
    # local diffusers AutoencoderKL folder (e.g. LDM's KL-f8 / Stable Diffusion's vae/); its
    # architecture replaces ae_channels, latent_channels, ae_layers_per_block; "" = random init
    pretrained: str = ""
    # latent UNet block_out_channels; its middle block runs at 1 / 2 ** (len - 1)
    unet_channels: list[int] = field(default_factory=lambda: [128, 256, 256])
    unet_layers_per_block: int = 2
    unet_attention: bool = True
    norm_groups: int = 32
    mask_width: int = 64  # f_mask width
    cls_hidden: int = 256  # f_cls hidden width
    dis_channels: list[int] = field(default_factory=lambda: [64, 128, 256])
    dis_hidden: int = 1024  # the paper's FC 1024
    patch_dis_width: int = 64
    # Table 1 switches
    condition: bool = True  # label conditioning of eps_theta through f_mask
    inter_coder: bool = True  # the inter-coder connection E -> D
    # how the condition enters eps_theta: concat (label embedding concatenated to z_t) |
    # eq5 (the paper's Eq. 5 at the UNet's middle block)
    condition_mode: str = "concat"
    condition_channels: int = 16  # width of the concatenated label embedding
    # connected levels (level i at 1 / 2**i): "fine" (i < (levels - 1) / 2, never the
    # latent's own resolution), "all" (every level, the latent's included), or e.g. "0,1"
    inter_coder_levels: str = "fine"
    # latent normalisation before the diffusion: sample (each sample's RMS) | scale (a
    # factor estimated after the autoencoder's pre-training, LDM) | none
    latent_norm: str = "sample"
    # optional local weight file for f_mask (the paper's is ImageNet-trained; here it
    # must fit diffdass' MaskEncoder); "" = random init, trained jointly
    mask_encoder_weights: str = ""

    def autoencoder_config(self) -> dict:
        """The ``AutoencoderKL`` config: the pretrained folder's, or built from the fields."""
        if self.pretrained:
            return read_pretrained_config(self.pretrained)
        return autoencoder_config(
            self.ae_channels,
            self.latent_channels,
            self.ae_layers_per_block,
            self.norm_groups,
            self.ae_mid_attention,
        )

    def ae_downsample(self) -> int:
        return 2 ** (len(self.autoencoder_config()["block_out_channels"]) - 1)

    def total_downsample(self) -> int:
        """Image size must be divisible by this (autoencoder x UNet downsampling)."""
        return self.ae_downsample() * 2 ** (len(self.unet_channels) - 1)

    def levels(self, n_levels: int) -> list[int]:
        """The connected levels of an autoencoder with ``n_levels`` resolutions."""
        if not self.inter_coder:
            return []
        spec = str(self.inter_coder_levels).strip()
        if spec == "fine":
            return fine_levels(n_levels)
        if spec == "all":
            return list(range(n_levels))
        try:
            levels = sorted({int(v) for v in spec.split(",") if v.strip()})
        except ValueError:
            levels = [-1]
        if not levels or min(levels) < 0 or max(levels) >= n_levels:
            raise ValueError(
                f"inter_coder_levels {spec!r}: give 'fine', 'all' or level numbers in "
                f"0..{n_levels - 1} separated by commas"
            )
        return levels

    def validate(self) -> None:
        if self.condition_mode not in CONDITION_MODES:
            raise ValueError(f"condition_mode must be one of {CONDITION_MODES}")
        if self.latent_norm not in LATENT_NORMS:
            raise ValueError(f"latent_norm must be one of {LATENT_NORMS}")
        if self.condition_channels < 1:
            raise ValueError("condition_channels must be >= 1")
        self.levels(len(self.autoencoder_config()["block_out_channels"]))


@dataclass
class Encoded:
    """What :meth:`CICLDNet.encode` returns: the posterior, the normalised latent ``z0`` (the
    posterior mode times ``factor``), ``factor`` (B, 1, 1, 1) and ``E``'s features per level
    (``None`` at unconnected levels)."""

    post: DiagonalGaussian
    z0: Tensor
    factor: Tensor
    skips: list[Tensor | None]


@dataclass
class CICLDOutput:
    """What :meth:`CICLDNet.forward` computes (everything the losses need)."""

    logits: Tensor  # (B, K, H, W)
    z0: Tensor  # normalised encoder latent (posterior mode)
    trajectory: list[Tensor]  # latent after every denoising step; the last is z_bar_0
    cond: Tensor | None  # condition used (None: unconditioned)
    post: DiagonalGaussian  # the encoder's posterior (for a KL term)


def denoise_timesteps(t_start: int, steps: int) -> list[int]:
    """``steps`` decreasing 0-based timesteps from ``t_start``: ``round(t_start * (steps - i)
    / steps)``, e.g. (200, 2) -> [200, 100]; the last step jumps to the clean latent."""
    if steps < 1 or t_start < 0:
        raise ValueError(f"need steps >= 1 and t_start >= 0, got {steps}, {t_start}")
    ts = [round(t_start * (steps - i) / steps) for i in range(steps)]
    if len(set(ts)) != len(ts):
        raise ValueError(f"{steps} denoising steps do not fit below timestep {t_start}")
    return ts


class CICLDNet(nn.Module):
    """E, eps_theta (with f_mask conditioning), D and f_cls: the paper's segmentation model.

    Attributes: ``autoencoder`` (E and D), ``denoiser``, ``mask_encoder`` (``None`` when
    ``condition=False``), ``classifier``; the buffer ``latent_scale`` (``latent_norm:
    scale``; set by :meth:`set_latent_scale`, 0 until then). ``schedule`` is the DDPM noise
    schedule used by :meth:`denoise` (not a module), passed in by the caller
    (``diffdass.diffusion.schedule.DDPMSchedule()``: T = 1000, linear 1e-4 .. 0.02) so that
    the models package does not depend on the diffusion package; it must provide
    ``q_sample``, ``model_timestep``, ``predict_x0`` and ``values("alphas_cumprod")``.

    ``ae_config``: build the autoencoder from this ``AutoencoderKL`` config without loading
    ``cfg.pretrained`` (used when the weights come from a CICLD checkpoint).
    """

    def __init__(
        self,
        cfg: CICLDModelConfig,
        num_classes: int,
        schedule=None,
        ae_config: dict | None = None,
    ) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.num_classes = int(num_classes)
        g = cfg.norm_groups
        config = dict(ae_config) if ae_config is not None else cfg.autoencoder_config()
        levels = cfg.levels(len(config["block_out_channels"]))
        pretrained = cfg.pretrained if ae_config is None else None
        self.autoencoder = InterCoderAutoencoder(config, levels, pretrained or None)
        self.ae_config = config
        latent = self.autoencoder.latent_channels
        self.denoiser = LatentDenoiser(
            latent,
            tuple(cfg.unet_channels),
            cfg.unet_layers_per_block,
            cfg.unet_attention,
            g,
            cfg.condition,
            cfg.condition_mode,
            cfg.condition_channels,
        )
        self.mask_encoder: MaskEncoder | None = None
        if cfg.condition:
            ae_down = self.autoencoder.downsample
            if cfg.condition_mode == "eq5":
                n_down = int(math.log2(ae_down * self.denoiser.downsample))
                width = self.denoiser.mid_channels
            else:
                n_down, width = int(math.log2(ae_down)), cfg.condition_channels
            self.mask_encoder = MaskEncoder(num_classes, width, cfg.mask_width, n_down, g)
            if cfg.mask_encoder_weights:
                self.mask_encoder.load_weights(cfg.mask_encoder_weights)
        self.classifier = PixelClassifier(
            self.autoencoder.channels[0], num_classes, cfg.cls_hidden, g
        )
        self.register_buffer("latent_scale", torch.zeros(()))
        self.schedule = schedule

    # ------------------------------------------------------------- latent
    def total_downsample(self) -> int:
        return self.autoencoder.downsample * self.denoiser.downsample

    def latent_factor(self, z: Tensor) -> Tensor:
        """(B, 1, 1, 1): what the raw latent ``z`` is multiplied by before the diffusion."""
        ones = z.new_ones(z.shape[0], 1, 1, 1)
        if self.cfg.latent_norm == "sample":
            return torch.rsqrt(z.float().pow(2).mean(dim=(1, 2, 3), keepdim=True) + 1e-6).to(
                z.dtype
            )
        if self.cfg.latent_norm == "scale":
            if float(self.latent_scale) <= 0:
                raise RuntimeError(
                    "latent_norm 'scale' needs the scale factor: call set_latent_scale() "
                    "after the autoencoder's pre-training"
                )
            return ones * self.latent_scale.to(z.dtype)
        return ones

    @torch.no_grad()
    def set_latent_scale(self, x: Tensor, generator: torch.Generator | None = None) -> float:
        """Set ``latent_scale`` to ``1 / std`` of posterior samples of images ``x`` (LDM's
        way of getting its 0.18215); returns it."""
        z = self.autoencoder.encode(x)[0].sample(generator)
        scale = 1.0 / max(float(z.float().std()), 1e-6)
        self.latent_scale.fill_(scale)
        return scale

    # ------------------------------------------------------------- pieces
    def encode(self, x: Tensor) -> Encoded:
        """Posterior, normalised latent and ``E``'s features of images ``x``."""
        f = self.total_downsample()
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(
                f"image size {tuple(x.shape[-2:])} is not divisible by {f} "
                "(autoencoder x UNet downsampling); crop or resize the data"
            )
        post, skips = self.autoencoder.encode(x)
        mode = post.mode()
        factor = self.latent_factor(mode)
        return Encoded(post, mode * factor, factor, skips)

    def condition(self, labels: Tensor | None, z: Tensor, keep: Tensor | None = None):
        """``f_mask(labels)`` for latent ``z``: the embedding map (``concat``) or the tokens
        (``eq5``); ``None`` without labels or without conditioning.

        ``keep`` (B,): samples with ``keep == 0`` get an all-zero condition, i.e. none
        (condition dropout, unlabeled images).
        """
        if labels is None or self.mask_encoder is None:
            return None
        if self.cfg.condition_mode == "eq5":
            d = self.denoiser.downsample
            cond = self.mask_encoder(labels, (z.shape[-2] // d, z.shape[-1] // d))
        else:
            cond = self.mask_encoder.maps(labels, tuple(z.shape[-2:]))
        if keep is not None:
            cond = cond * keep.to(cond.dtype).view(-1, *[1] * (cond.ndim - 1))
        return cond

    def eps(self, z_t: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        """Predicted noise; ``cond`` is ignored (treated as none) without conditioning."""
        return self.denoiser(z_t, t, cond if self.denoiser.condition else None)

    def denoise(
        self, z0: Tensor, cond: Tensor | None, timesteps: list[int], noise: Tensor
    ) -> list[Tensor]:
        """Noise ``z0`` to ``timesteps[0]`` (Eq. 1) and run deterministic DDIM steps
        through ``timesteps`` (decreasing); returns the latent after every step, the last
        being ``z_bar_0`` (the ``x_0`` prediction of the last step)."""
        s = self.schedule
        if s is None:
            raise RuntimeError(
                "CICLDNet.denoise needs a noise schedule: build the net with "
                "schedule=diffdass.diffusion.schedule.DDPMSchedule()"
            )
        z = s.q_sample(z0, timesteps[0], noise)
        out = []
        for i, t in enumerate(timesteps):
            tt = torch.full((z.shape[0],), int(s.model_timestep(t)), device=z.device)
            eps = self.eps(z, tt, cond)
            x0 = s.predict_x0(z, t, eps)
            if i + 1 < len(timesteps):
                nxt = timesteps[i + 1]
                ab = float(s.values("alphas_cumprod")[nxt])
                z = math.sqrt(ab) * x0 + math.sqrt(1.0 - ab) * eps
            else:
                z = x0
            out.append(z)
        return out

    def decode_logits(self, z: Tensor, enc: Encoded, sel: slice | None = None) -> Tensor:
        """``f_cls(D(z / factor, features))``: full-resolution logits of the normalised
        latent ``z`` with ``enc``'s factor and features (rows ``sel`` of ``enc``)."""
        sel = sel if sel is not None else slice(None)
        skips = [s[sel] if s is not None else None for s in enc.skips]
        return self.classifier(self.autoencoder.features(z / enc.factor[sel], skips))

    # ------------------------------------------------------------- forward
    def forward(
        self,
        x: Tensor,
        labels: Tensor | None = None,
        *,
        t_start: int = 200,
        steps: int = 2,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        decode: slice | None = None,
        cond_keep: Tensor | None = None,
    ) -> CICLDOutput:
        """Segment ``x``: encode (posterior mode, normalised), noise to ``t_start``,
        ``steps`` conditioned DDIM steps, decode with the inter-coder features, classify.

        Args:
            labels: condition label maps (B, H, W) (``None``: unconditioned).
            noise: the Eq. 1 noise (default: drawn from ``generator``).
            decode: only decode these samples (``logits`` then has that many rows); the
                others still give latents (e.g. target images in the adversarial loss).
            cond_keep: (B,) 0/1 per sample; 0 = unconditioned for that sample.
        """
        enc = self.encode(x)
        cond = self.condition(labels, enc.z0, cond_keep)
        if noise is None:
            gdev = generator.device if generator is not None else torch.device("cpu")
            noise = torch.randn(enc.z0.shape, generator=generator, device=gdev, dtype=enc.z0.dtype)
            noise = noise.to(enc.z0.device)
        traj = self.denoise(enc.z0, cond, denoise_timesteps(t_start, steps), noise)
        sel = decode if decode is not None else slice(None)
        logits = self.decode_logits(traj[-1][sel], enc, sel)
        return CICLDOutput(logits, enc.z0, traj, cond, enc.post)


class CICLDSegmenter(nn.Module):
    """Inference wrapper: images ``[-1, 1]`` -> logits at input size (for ``evaluate``).

    Args:
        net: the EMA :class:`CICLDNet`.
        t_start, steps: noise level (0-based timestep) and DDIM steps of the denoising.
        condition: ``"self"`` -- a first unconditioned pass gives a label map whose arg-max
            conditions the second pass (the target has no labels); ``"none"`` -- one
            unconditioned pass. Without conditioning in ``net`` both are one plain pass.
        seed: the Eq. 1 noise is drawn from a generator seeded with this at every call, so
            the prediction of an image is deterministic.
    """

    def __init__(
        self, net: CICLDNet, t_start: int = 200, steps: int = 2, condition: str = "self", seed=0
    ) -> None:
        super().__init__()
        if condition not in ("self", "none"):
            raise ValueError(f"condition must be 'self' or 'none', got {condition!r}")
        self.net = net
        self.t_start, self.steps, self.condition, self.seed = t_start, steps, condition, seed
        self.num_classes = net.num_classes

    def noise(self, z0: Tensor) -> Tensor:
        gen = torch.Generator(device="cpu").manual_seed(int(self.seed))
        return torch.randn(z0.shape, generator=gen, dtype=z0.dtype).to(z0.device)

    def predict(self, enc: Encoded, labels: Tensor | None) -> Tensor:
        """Logits of one pass conditioned on ``labels`` (``None``: unconditioned)."""
        net = self.net
        cond = net.condition(labels, enc.z0)
        ts = denoise_timesteps(self.t_start, self.steps)
        return net.decode_logits(net.denoise(enc.z0, cond, ts, self.noise(enc.z0))[-1], enc)

    def forward(self, x: Tensor) -> Tensor:
        enc = self.net.encode(x)
        logits = self.predict(enc, None)
        if self.condition == "self" and self.net.mask_encoder is not None:
            logits = self.predict(enc, logits.argmax(1))
        return logits
