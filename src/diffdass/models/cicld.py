"""CICLD networks (Yu, Sun, Luo: conditional and inter-coder connected latent diffusion).

The segmentation path of the paper's Fig. 2, as modules::

    x --E--> posterior N(mu, sigma^2) --mode/sample--> z_0 --q_sample--> z_t
        |                                                          |
        | skips (inter-coder connection)        eps_theta(z_t, t | c), c = f_mask(y)
        |                                       (Eq. 5 at the UNet's middle block)
        v                                                          v
    f_cls( D(z_bar_0, skips) ) <----------------------------- z_bar_0 (DDIM steps)

* ``E`` / ``D`` (:mod:`diffdass.models.cicld_autoencoder`): a KL-regularised autoencoder
  (a diagonal Gaussian posterior, LDM's "KL-f" autoencoders). ``E`` also
  returns its feature map at every resolution; ``D`` concatenates them to its own features
  at the same resolution when ``inter_coder=True`` (the *inter-coder connection*, Sec. 3.3).
  Without it, ``D``'s blocks are narrower (no concatenated channels), as the paper says.
  ``D`` returns a full-resolution feature map; ``to_rgb`` turns it into the reconstruction
  (stage-1 pre-training) and :class:`PixelClassifier` ``f_cls`` into class logits.
* :class:`LatentDenoiser` ``eps_theta``: a diffusers ``UNet2DModel`` on latents whose middle
  block is wrapped by :class:`ConditionedMidBlock`, which applies Eq. 5
  ``o_hat = o + softmax(o c^T / sqrt(C)) c`` with the tokens ``c`` of :class:`MaskEncoder`
  ``f_mask``. ``c = None`` (or all zeros) leaves the UNet exactly unconditioned.
* The discriminators (``f_dis`` of Eq. 8 and the stage-1 PatchGAN) are in
  :mod:`diffdass.models.discriminators`.
* :class:`CICLDNet` ties E, eps_theta, f_mask, D and f_cls together; :class:`CICLDSegmenter`
  is the inference wrapper (images in ``[-1, 1]`` -> logits) for
  :func:`diffdass.evaluation.evaluate`.

Everything works from random initialisation. The paper's ``f_mask`` is ImageNet-trained; here
it is a small conv encoder of the one-hot label map, trained jointly, which can start from a
local weight file (:meth:`MaskEncoder.load_weights`). Tensors are NCHW, images in ``[-1, 1]``,
labels int64 with 255 = ignore.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffdass.models.cicld_autoencoder import (
    AutoencoderDecoder,
    AutoencoderEncoder,
    DiagonalGaussian,
    ResBlock,
    norm_groups,
)

IGNORE_INDEX = 255


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
    """``eps_theta(z_t, t | c)``: a diffusers ``UNet2DModel`` with Eq. 5 at its middle block.

    Args:
        latent_channels: channels of ``z`` (input and output).
        channels: ``block_out_channels``; the middle block works at ``1 / 2**(len - 1)`` of the
            latent resolution with ``channels[-1]`` features (the width of ``c``).
        layers_per_block: resnet layers per UNet block.
        attention: self-attention in the deepest down/up block (LDM-style).
        groups: GroupNorm groups (must divide every width).
        condition: wrap the middle block with the Eq. 5 conditioning.
    """

    def __init__(
        self,
        latent_channels: int = 4,
        channels: tuple[int, ...] = (128, 256, 256),
        layers_per_block: int = 2,
        attention: bool = True,
        groups: int = 32,
        condition: bool = True,
    ) -> None:
        super().__init__()
        from diffusers import UNet2DModel

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
            in_channels=latent_channels,
            out_channels=latent_channels,
            block_out_channels=chs,
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            layers_per_block=layers_per_block,
            norm_num_groups=groups,
            attention_head_dim=min(chs[-1], 64),
        )
        self.condition = bool(condition)
        if self.condition:
            self.unet.mid_block = ConditionedMidBlock(self.unet.mid_block)
        self.mid_channels = chs[-1]
        self.downsample = 2 ** (len(chs) - 1)

    def forward(self, z_t: Tensor, t: Tensor, tokens: Tensor | None = None) -> Tensor:
        """Predicted noise, same shape as ``z_t``; ``t``: model timesteps (B,) (0-based)."""
        if tokens is not None and not self.condition:
            raise ValueError("this denoiser was built without conditioning (condition=False)")
        if self.condition:
            self.unet.mid_block.tokens = tokens
        try:
            return self.unet(z_t, t).sample
        finally:
            if self.condition:
                self.unet.mid_block.tokens = None


class MaskEncoder(nn.Module):
    """``f_mask``: a label map -> conditioning tokens ``(B, K, C)`` for Eq. 5.

    The label is one-hot encoded (ignore pixels: all zeros), passed through ``n_down``
    stride-2 :class:`ResBlock` stages, average-pooled to the UNet's middle-block resolution
    ``(h, w)`` and projected to its width ``out_channels``: one token per middle-block
    position (``K = h * w``).
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

    def forward(self, labels: Tensor, size: tuple[int, int]) -> Tensor:
        """Tokens ``(B, size[0] * size[1], out_channels)`` of labels ``(B, H, W)``."""
        onehot = one_hot(labels, self.num_classes)
        h = self.conv_in(onehot)
        for stage in self.stages:
            h = stage(h)
        h = F.adaptive_avg_pool2d(F.silu(self.norm_out(h)), size)
        return self.proj(h).flatten(2).transpose(1, 2)

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
    """Widths and switches of :class:`CICLDNet` (defaults: an LDM-KL-f8-like autoencoder)."""

    # autoencoder widths per resolution; downsampling 2 ** (len - 1) (8: LDM's KL-f8)
    ae_channels: list[int] = field(default_factory=lambda: [128, 256, 512, 512])
    latent_channels: int = 4
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
    condition: bool = True  # Eq. 5 conditioning with f_mask
    inter_coder: bool = True  # skip connections E -> D
    # optional local weight file for f_mask (the paper's is ImageNet-trained; here it
    # must fit diffdass' MaskEncoder); "" = random init, trained jointly
    mask_encoder_weights: str = ""

    def ae_downsample(self) -> int:
        return 2 ** (len(self.ae_channels) - 1)

    def total_downsample(self) -> int:
        """Image size must be divisible by this (autoencoder x UNet downsampling)."""
        return self.ae_downsample() * 2 ** (len(self.unet_channels) - 1)


@dataclass
class CICLDOutput:
    """What :meth:`CICLDNet.forward` computes (everything the losses need)."""

    logits: Tensor  # (B, K, H, W)
    z0: Tensor  # encoder latent (posterior mode)
    trajectory: list[Tensor]  # latent after every denoising step; the last is z_bar_0
    tokens: Tensor | None  # conditioning tokens used (None: unconditioned)


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

    Attributes: ``encoder``, ``decoder``, ``denoiser``, ``mask_encoder`` (``None`` when
    ``condition=False``), ``classifier``; ``schedule`` is the DDPM noise schedule used by
    :meth:`denoise` (not a module). It is passed in by the caller
    (``diffdass.diffusion.schedule.DDPMSchedule()``: T = 1000, linear 1e-4 .. 0.02), so that
    the models package does not depend on the diffusion package; it must provide
    ``q_sample``, ``model_timestep``, ``predict_x0`` and ``values("alphas_cumprod")``.
    """

    def __init__(self, cfg: CICLDModelConfig, num_classes: int, schedule=None) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = int(num_classes)
        g = cfg.norm_groups
        self.encoder = AutoencoderEncoder(tuple(cfg.ae_channels), cfg.latent_channels, 3, g)
        self.decoder = AutoencoderDecoder(
            tuple(cfg.ae_channels), cfg.latent_channels, 3, g, cfg.inter_coder
        )
        self.denoiser = LatentDenoiser(
            cfg.latent_channels,
            tuple(cfg.unet_channels),
            cfg.unet_layers_per_block,
            cfg.unet_attention,
            g,
            cfg.condition,
        )
        self.mask_encoder: MaskEncoder | None = None
        if cfg.condition:
            n_down = int(math.log2(cfg.total_downsample()))
            self.mask_encoder = MaskEncoder(
                num_classes, self.denoiser.mid_channels, cfg.mask_width, n_down, g
            )
            if cfg.mask_encoder_weights:
                self.mask_encoder.load_weights(cfg.mask_encoder_weights)
        self.classifier = PixelClassifier(cfg.ae_channels[0], num_classes, cfg.cls_hidden, g)
        self.schedule = schedule

    # ------------------------------------------------------------- pieces
    def encode(self, x: Tensor) -> tuple[DiagonalGaussian, list[Tensor]]:
        """Posterior ``q(z | x)`` and ``E``'s skip features."""
        f = self.cfg.total_downsample()
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(
                f"image size {tuple(x.shape[-2:])} is not divisible by {f} "
                "(autoencoder x UNet downsampling); crop or resize the data"
            )
        moments, skips = self.encoder(x)
        return DiagonalGaussian(moments), skips

    def condition_tokens(
        self, labels: Tensor | None, z: Tensor, keep: Tensor | None = None
    ) -> Tensor | None:
        """``c = f_mask(labels)`` at the middle-block resolution of latent ``z`` (or ``None``).

        ``keep`` (B,): samples with ``keep == 0`` get all-zero tokens, i.e. no condition
        (Eq. 5 is then the identity for them): condition dropout, unlabeled images.
        """
        if labels is None or self.mask_encoder is None:
            return None
        d = self.denoiser.downsample
        tokens = self.mask_encoder(labels, (z.shape[-2] // d, z.shape[-1] // d))
        if keep is not None:
            tokens = tokens * keep.to(tokens.dtype).view(-1, 1, 1)
        return tokens

    def eps(self, z_t: Tensor, t: Tensor, tokens: Tensor | None) -> Tensor:
        """Predicted noise; ``tokens`` is ignored (treated as none) without conditioning."""
        return self.denoiser(z_t, t, tokens if self.denoiser.condition else None)

    def denoise(
        self, z0: Tensor, tokens: Tensor | None, timesteps: list[int], noise: Tensor
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
            eps = self.eps(z, tt, tokens)
            x0 = s.predict_x0(z, t, eps)
            if i + 1 < len(timesteps):
                nxt = timesteps[i + 1]
                ab = float(s.values("alphas_cumprod")[nxt])
                z = math.sqrt(ab) * x0 + math.sqrt(1.0 - ab) * eps
            else:
                z = x0
            out.append(z)
        return out

    def decode_logits(self, z: Tensor, skips: list[Tensor]) -> Tensor:
        """``f_cls(D(z, skips))``: full-resolution logits."""
        return self.classifier(self.decoder(z, skips if self.cfg.inter_coder else None))

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
        """Segment ``x``: encode (posterior mode), noise to ``t_start``, ``steps`` conditioned
        DDIM steps, decode with the inter-coder skips, classify.

        Args:
            labels: condition label maps (B, H, W) (``None``: unconditioned).
            noise: the Eq. 1 noise (default: drawn from ``generator``).
            decode: only decode these samples (``logits`` then has that many rows); the
                others still give latents (e.g. target images in the adversarial loss).
            cond_keep: (B,) 0/1 per sample; 0 = unconditioned (zero tokens) for that sample.
        """
        post, skips = self.encode(x)
        z0 = post.mode()
        tokens = self.condition_tokens(labels, z0, cond_keep)
        if noise is None:
            gdev = generator.device if generator is not None else torch.device("cpu")
            noise = torch.randn(z0.shape, generator=generator, device=gdev, dtype=z0.dtype)
            noise = noise.to(z0.device)
        traj = self.denoise(z0, tokens, denoise_timesteps(t_start, steps), noise)
        sel = decode if decode is not None else slice(None)
        logits = self.decode_logits(traj[-1][sel], [s[sel] for s in skips])
        return CICLDOutput(logits, z0, traj, tokens)


class CICLDSegmenter(nn.Module):
    """Inference wrapper: images ``[-1, 1]`` -> logits at input size (for ``evaluate``).

    Args:
        net: the (EMA / "student") :class:`CICLDNet`.
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

    def forward(self, x: Tensor) -> Tensor:
        post, skips = self.net.encode(x)
        z0 = post.mode()
        gen = torch.Generator(device="cpu").manual_seed(int(self.seed))
        noise = torch.randn(z0.shape, generator=gen, dtype=z0.dtype).to(z0.device)
        ts = denoise_timesteps(self.t_start, self.steps)
        logits = self.net.decode_logits(self.net.denoise(z0, None, ts, noise)[-1], skips)
        if self.condition == "self" and self.net.mask_encoder is not None:
            tokens = self.net.condition_tokens(logits.argmax(1), z0)
            logits = self.net.decode_logits(self.net.denoise(z0, tokens, ts, noise)[-1], skips)
        return logits
