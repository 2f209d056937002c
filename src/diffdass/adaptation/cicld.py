"""CICLD training (Yu, Sun, Luo): losses, ClassMix, EMA student, the three-phase loop.

One run trains three consecutive phases, each a range of the global iteration index ``it``:

1. ``ae`` (``ae_iterations``; paper Sec. 3.5, pre-training stage 1): the KL autoencoder on
   source and target images: L1 reconstruction (latent-only decoding, skips zeroed) +
   ``ae_kl_weight`` KL(q(z|x) || N(0, I)) + ``ae_adv_weight`` hinge PatchGAN term. No
   perceptual term (it needs pretrained weights; see docs/cicld.md).
2. ``ldm`` (``ldm_iterations``; stage 2): the latent UNet on posterior samples of source
   and target latents, unconditioned (Eq. 6 with ``c = 0``), the autoencoder frozen.
3. ``adapt`` (``iterations``; fine-tuning / UDA, Sec. 3.2-3.4): per step
   (a) pseudo-labels of the target images from the EMA model ("student" in the paper),
   (b) ClassMix ``x^{s+t}``, ``y^{s+t}``, (c) a forward of source, mixed and target images
   through E -> noising -> conditioned DDIM denoising -> D -> f_cls,
   (d) ``L = w_cls L_cls (Eq. 7, source + mixed) + w_dif L_Dif (Eq. 6, source, mixed, target)
   + w_adv L_adv`` (encoder side of Eq. 8, KL to uniform) on the trained model ("teacher"),
   (e) one discriminator step (Eq. 8, cross-entropy on domain labels), (f) the EMA update.

The EMA model is updated after every step of every phase (decay ``ema_decay``, 0.999).
One Adam optimiser (lr 6e-5) holds three parameter groups: ``model`` (E, D, f_cls, f_mask,
UNet), ``dis`` (the latent discriminator) and ``patch_dis`` (stage-1 discriminator); a
group whose parameters got no gradient in a sub-step is left untouched by Adam.

Reproducibility: batch order and augmentation of iteration ``it`` depend only on
``(seed, it)`` (:class:`~diffdass.data.folder.StreamBatchSampler`), and every random draw
of a step comes from generators seeded with ``(seed, it, stream)``; a resumed run ends with
the same weights as an uninterrupted one (bit for bit on CPU).

Naming: the paper calls the gradient-trained model the *teacher* and its EMA the
*student* (used for pseudo-labels and inference); the code says ``net`` and ``ema_net``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffdass.adaptation.config import AugConfig
from diffdass.adaptation.mixing import (
    classmix,
    mix_weights,
    pixel_jitter,
    pseudo_labels,
    scan_domain_pair,
    segmentation_loss,
    stream_loader,
    weighted_segmentation_loss,
)
from diffdass.adaptation.seg_training import step_seed
from diffdass.data.folder import DomainSpec
from diffdass.diffusion.schedule import DDPMSchedule
from diffdass.models.cicld import (
    CICLDModelConfig,
    CICLDNet,
    CICLDSegmenter,
)
from diffdass.models.discriminators import LatentDiscriminator, PatchDiscriminator
from diffdass.models.ema import EMA
from diffdass.models.perceptual import build_perceptual
from diffdass.training import LoggingConfig, TrainLoop
from diffdass.utils.checkpoint import load_checkpoint, read_meta, save_checkpoint
from diffdass.utils.config import ConfigError, from_dict, to_dict, validate_tree
from diffdass.utils.device import configure_backends, resolve_device
from diffdass.utils.run import RunDir

PHASES = ("ae", "ldm", "adapt")
LR_SCHEDULES = ("step", "poly", "step_poly")
ADV_MODES = ("3class", "2class", "none")
ADV_LATENTS = ("encoder", "denoising", "all")


# ===================================================================== config
@dataclass
class CICLDConfig:
    """``train_cicld``: the CICLD pre-training and adaptation run (defaults: the paper's
    numbers where it gives them; ours, marked "choice", where it does not)."""

    source: DomainSpec = field(default_factory=DomainSpec)  # labeled
    target: DomainSpec = field(default_factory=DomainSpec)  # unlabeled (labels not read)
    model: CICLDModelConfig = field(default_factory=CICLDModelConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    # phase lengths (choice: the paper gives 50 epochs of fine-tuning, no pre-training length)
    ae_iterations: int = 5000
    ldm_iterations: int = 5000
    iterations: int = 40000
    batch_size: int = 2  # paper
    # Adam (paper: lr 6e-5; decayed x0.99 every 5 epochs, and "polynomial" reduction)
    lr: float = 6e-5
    lr_schedule: str = "step"  # step | poly | step_poly (both factors)
    lr_step_epochs: int = 5
    lr_step_gamma: float = 0.99
    poly_power: float = 0.9
    epoch_iterations: int | None = None  # default: ceil(#source / batch_size)
    ema_decay: float = 0.999  # paper's alpha
    ema_warmup: bool = False
    # diffusion along the segmentation path (choice: the paper does not give these)
    noise_timestep: int = 200  # 0-based index of the noise level z_t the denoising starts at
    train_denoise_steps: int = 2
    infer_denoise_steps: int | None = None  # default: train_denoise_steps
    # conditioning (choice): unlabeled images are segmented with "self" conditioning (a
    # first unconditioned pass conditions the second) or "none"; during training each
    # sample's condition is dropped with cond_drop_prob so the unconditioned pass is learned
    infer_condition: str = "self"
    cond_drop_prob: float = 0.5
    target_condition: str = "pseudo"  # L_Dif on target latents: EMA pseudo-label | none
    # what conditions the source and mixed images during adaptation: "prediction" (the EMA
    # model's own prediction, mixed like the images, so that training sees the kind of
    # condition inference gives) | "label" (the ground truth, the paper's y^s and y^{s+t})
    source_condition: str = "prediction"
    pseudo_threshold: float = 0.0  # pseudo-labels below this confidence -> ignore
    # DACS's confidence weighting of the mixed image's loss (option beyond the paper): "dacs"
    # weighs the target's pixels by the share of that image's pixels whose pseudo-label
    # confidence reaches pseudo_weight_threshold (source pixels: 1); "none": all 1
    pseudo_weight: str = "none"
    pseudo_weight_threshold: float = 0.968  # DACS's value
    # adaptation iterations during which the mixed image's target pixels carry no loss (the
    # EMA model's early pseudo-labels come from an untrained head); 0: none
    pseudo_warmup: int = 0
    mix_jitter: float = 0.1  # brightness/contrast jitter of the mixed image (0: off)
    # adversarial loss (Eq. 8): 3class (paper) | 2class (ablation, fake-label CE) | none
    adv: str = "3class"
    adv_latents: str = "all"  # encoder z_0 | denoising trajectory | all (choice)
    w_cls: float = 1.0
    w_dif: float = 1.0
    w_adv: float = 0.01  # fixed weight, used when adv_grad_fraction is 0
    # w_adv from gradient norms (choice; the paper gives no weight): every adv_balance_every
    # adaptation iterations, w_adv = adv_grad_fraction * |grad L_cls| / |grad L_adv|, both
    # gradients taken on the encoder's output layer (what the adversarial term trains)
    adv_grad_fraction: float = 0.1
    adv_balance_every: int = 10
    # KL(q(z|x) || N(0, I)) weight during adaptation (with latent_norm "scale" or "none" it
    # keeps the encoder from inflating the latent; "sample" normalisation bounds it anyway)
    adapt_kl_weight: float = 0.0
    # stage-1 autoencoder: LDM's KL-f8 recipe; its LPIPS term only with local VGG-16 weights
    ae_kl_weight: float = 1e-6
    ae_adv_weight: float = 0.5
    ae_perceptual_weights: str | None = None  # VGG-16 weight file (e.g. vgg16-397923af.pth)
    ae_perceptual_lin: str | None = None  # LPIPS's vgg.pth linear layers (optional)
    ae_perceptual_weight: float = 1.0  # LDM's; used only with ae_perceptual_weights
    ae_disc_start: int = 0  # phase-1 iteration from which the PatchGAN term is used
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    checkpoint_every: int = 1000
    on_error: str = "raise"
    logging: LoggingConfig = field(default_factory=LoggingConfig)  # curves: TensorBoard / W&B

    def validate(self) -> None:
        if not self.source.root or not self.target.root:
            raise ConfigError("source.root and target.root are required")
        if min(self.ae_iterations, self.ldm_iterations) < 0 or self.iterations < 1:
            raise ConfigError("ae/ldm_iterations must be >= 0 and iterations >= 1")
        if self.batch_size < 1 or self.checkpoint_every < 1:
            raise ConfigError("batch_size and checkpoint_every must be positive")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule}")
        if self.epoch_iterations is not None and self.epoch_iterations < 1:
            raise ConfigError("epoch_iterations must be positive")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ConfigError(f"ema_decay must lie in [0, 1], got {self.ema_decay}")
        if not 0 <= self.noise_timestep < 1000:
            raise ConfigError("noise_timestep must lie in 0..999 (T = 1000)")
        for name in ("train_denoise_steps", "infer_denoise_steps"):
            v = getattr(self, name)
            if v is not None and not 1 <= v <= self.noise_timestep + 1:
                raise ConfigError(f"{name} must lie in 1..noise_timestep + 1, got {v}")
        if self.infer_condition not in ("self", "none"):
            raise ConfigError("infer_condition must be 'self' or 'none'")
        if self.target_condition not in ("pseudo", "none"):
            raise ConfigError("target_condition must be 'pseudo' or 'none'")
        if self.source_condition not in ("prediction", "label"):
            raise ConfigError("source_condition must be 'prediction' or 'label'")
        if self.adv_grad_fraction < 0 or self.adv_balance_every < 1 or self.adapt_kl_weight < 0:
            raise ConfigError(
                "adv_grad_fraction and adapt_kl_weight must be >= 0, adv_balance_every >= 1"
            )
        try:
            self.model.validate()
        except (ValueError, FileNotFoundError) as exc:
            raise ConfigError(f"cicld.model: {exc}") from exc
        if self.pseudo_weight not in ("none", "dacs"):
            raise ConfigError(f"pseudo_weight must be 'none' or 'dacs', got {self.pseudo_weight!r}")
        if self.pseudo_warmup < 0:
            raise ConfigError(f"pseudo_warmup must be >= 0, got {self.pseudo_warmup}")
        for name in ("cond_drop_prob", "pseudo_threshold", "pseudo_weight_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must lie in [0, 1]")
        if self.adv not in ADV_MODES:
            raise ConfigError(f"adv must be one of {ADV_MODES}, got {self.adv!r}")
        if self.adv_latents not in ADV_LATENTS:
            raise ConfigError(f"adv_latents must be one of {ADV_LATENTS}")
        if self.on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")
        if self.ae_perceptual_lin and not self.ae_perceptual_weights:
            raise ConfigError("ae_perceptual_lin needs ae_perceptual_weights (the VGG-16 file)")
        for name in ("ae_perceptual_weights", "ae_perceptual_lin"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ConfigError(f"{name}: {path}: file not found (nothing is downloaded)")
        if self.ae_perceptual_weight < 0:
            raise ConfigError("ae_perceptual_weight must be >= 0")
        crop = self.aug.crop or self.aug.resize
        f = self.model.total_downsample()
        if crop is not None and (crop[0] % f or crop[1] % f):
            raise ConfigError(f"aug crop/resize {crop} must be divisible by {f} (E x UNet)")

    @property
    def total_iterations(self) -> int:
        return self.ae_iterations + self.ldm_iterations + self.iterations

    def phase(self, it: int) -> tuple[str, int, int]:
        """``(phase name, iteration within the phase, phase length)`` of global ``it``."""
        if it < self.ae_iterations:
            return "ae", it, self.ae_iterations
        it -= self.ae_iterations
        if it < self.ldm_iterations:
            return "ldm", it, self.ldm_iterations
        return "adapt", it - self.ldm_iterations, self.iterations

    def inference_steps(self) -> int:
        return self.infer_denoise_steps or self.train_denoise_steps


# ===================================================================== losses
def discriminator_loss(dis: nn.Module, latents: list[Tensor], domains: Tensor) -> Tensor:
    """``f_dis`` side of Eq. 8: cross-entropy of the domain logits against the domain labels
    (source 0, mixed 1, target 2), averaged over the latents of ``latents`` (each (N, ...))."""
    return torch.stack([F.cross_entropy(dis(z), domains) for z in latents]).mean()


def kl_to_uniform(logits: Tensor) -> Tensor:
    """``KL(softmax(logits) || U)`` per row: ``sum_k p_k log p_k + log K`` (>= 0, 0 iff uniform)."""
    logp = torch.log_softmax(logits.float(), dim=1)
    return (logp.exp() * logp).sum(dim=1) + math.log(logits.shape[1])


def encoder_adversarial_loss(dis: nn.Module, latents: list[Tensor]) -> Tensor:
    """Encoder side of Eq. 8 (3 classes): mean ``KL(f_dis(z) || U)`` over samples and latents.

    Minimising it makes the discriminator's prediction uniform (maximal entropy); the
    discriminator's own parameters must be frozen by the caller (``requires_grad_(False)``).
    """
    return torch.stack([kl_to_uniform(dis(z)).mean() for z in latents]).mean()


def fake_label_loss(dis: nn.Module, latents: list[Tensor], label: int = 0) -> Tensor:
    """Encoder side of the two-class ablation (AdaptSegNet-style): cross-entropy of the
    target latents against the *source* label ``label``."""
    losses = []
    for z in latents:
        target = torch.full((z.shape[0],), label, dtype=torch.long, device=z.device)
        losses.append(F.cross_entropy(dis(z), target))
    return torch.stack(losses).mean()


def prediction_entropy(dis: nn.Module, z: Tensor) -> Tensor:
    """Mean entropy (nats) of the discriminator's domain distribution on ``z``."""
    logp = torch.log_softmax(dis(z).float(), dim=1)
    return -(logp.exp() * logp).sum(dim=1).mean()


def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """PatchGAN discriminator hinge loss: ``mean relu(1 - D(x)) + mean relu(1 + D(x_rec))``."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def lr_factor(cfg: CICLDConfig, k: int, total: int, epoch_iterations: int) -> float:
    """Learning-rate factor at iteration ``k`` of a phase of ``total`` iterations:
    ``gamma ** floor(epoch / step_epochs)`` ("step"), ``(1 - k / total) ** power`` ("poly"),
    or their product ("step_poly")."""
    f = 1.0
    if cfg.lr_schedule in ("step", "step_poly"):
        epoch = k // max(1, epoch_iterations)
        f *= cfg.lr_step_gamma ** (epoch // cfg.lr_step_epochs)
    if cfg.lr_schedule in ("poly", "step_poly"):
        f *= (1.0 - min(k, total) / max(total, 1)) ** cfg.poly_power
    return f


def adversarial_latents(out, which: str) -> list[Tensor]:
    """The latents Eq. 8 is applied to: the encoder's ``z_0`` ("encoder"), the latent after
    every denoising step ("denoising", the paper's "every denoising step"), or both ("all")."""
    if which == "encoder":
        return [out.z0]
    if which == "denoising":
        return list(out.trajectory)
    return [out.z0, *out.trajectory]


# ===================================================================== trainer
class CICLDTrainer:
    """The trained model (``net``), its EMA (``ema``/``ema_net``), the discriminators and one
    Adam optimiser; :meth:`step` runs global iteration ``it`` of ``cfg``'s three phases."""

    def __init__(
        self, cfg: CICLDConfig, num_classes: int, device: torch.device, epoch_iterations: int
    ) -> None:
        self.cfg = cfg
        self.device = device
        self.epoch_iterations = int(epoch_iterations)
        torch.manual_seed(cfg.seed)
        self.net = CICLDNet(cfg.model, num_classes, DDPMSchedule()).to(device)
        n_dom = 2 if cfg.adv == "2class" else 3
        m = cfg.model
        self.dis = LatentDiscriminator(
            m.latent_channels, tuple(m.dis_channels), n_dom, m.dis_hidden, m.norm_groups
        ).to(device)
        self.patch_dis = PatchDiscriminator(3, m.patch_dis_width).to(device)
        # frozen, never checkpointed: rebuilt from the same local files on resume
        self.perceptual = None
        if cfg.ae_perceptual_weights:
            self.perceptual = build_perceptual(cfg.ae_perceptual_weights, cfg.ae_perceptual_lin).to(
                device
            )
        self.adv_weight = float(cfg.w_adv)  # re-measured with adv_grad_fraction > 0
        self.ema = EMA(self.net, decay=cfg.ema_decay, warmup=cfg.ema_warmup)
        self.ema_net = self.ema.module_copy(self.net).eval().requires_grad_(False)
        self.optimizer = torch.optim.Adam(
            [
                {"params": list(self.net.parameters()), "name": "model"},
                {"params": list(self.dis.parameters()), "name": "dis"},
                {"params": list(self.patch_dis.parameters()), "name": "patch_dis"},
            ],
            lr=cfg.lr,
        )

    # ---------------------------------------------------------------- helpers
    def student(self, seed: int = 0) -> CICLDSegmenter:
        """The EMA model as an inference segmenter (the paper's "student")."""
        c = self.cfg
        return CICLDSegmenter(
            self.ema_net, c.noise_timestep, c.inference_steps(), c.infer_condition, seed
        )

    def _set_lr(self, it: int) -> float:
        _, k, total = self.cfg.phase(it)
        lr = self.cfg.lr * lr_factor(self.cfg, k, total, self.epoch_iterations)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    def _optimise(self, loss: Tensor) -> None:
        """Back-propagate ``loss`` and take an Adam step on the parameters it reached."""
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()}; lower the learning rate")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _ema_update(self) -> None:
        self.ema.update(self.net)
        self.ema.copy_to(self.ema_net)

    # ---------------------------------------------------------------- step
    def step(self, it: int, batch_s: dict, batch_t: dict) -> dict:
        """Global iteration ``it`` (0-based) on a source and a target batch; returns stats."""
        phase, _, _ = self.cfg.phase(it)
        self.net.train()
        torch.manual_seed(step_seed(self.cfg.seed, it, 1))
        gen = torch.Generator().manual_seed(step_seed(self.cfg.seed, it, 2))
        lr = self._set_lr(it)
        x_s = batch_s["image"].to(self.device)
        y_s = batch_s["label"].to(self.device)
        x_t = batch_t["image"].to(self.device)
        if phase != "ae" and self.cfg.model.latent_norm == "scale":
            self._ensure_latent_scale(torch.cat([x_s, x_t]), gen)
        if phase == "ae":
            stats = self._ae_step(torch.cat([x_s, x_t]), gen, it)
        elif phase == "ldm":
            stats = self._ldm_step(torch.cat([x_s, x_t]), gen)
        else:
            stats = self._adapt_step(x_s, y_s, x_t, gen, it)
        self._ema_update()
        return {"phase": phase, "lr": lr, **stats}

    def _ensure_latent_scale(self, x: Tensor, gen: torch.Generator) -> None:
        """Estimate the latent scale factor once, on the first batch after the autoencoder's
        pre-training (LDM); the EMA model gets the same value (buffers are copied)."""
        if float(self.net.latent_scale) > 0:
            return
        scale = self.net.set_latent_scale(x, gen)
        self.ema_net.latent_scale.fill_(scale)
        self.ema.buffers["latent_scale"].fill_(scale)

    def _ae_step(self, x: Tensor, gen: torch.Generator, it: int) -> dict:
        """Stage 1: L1 (+ perceptual_weight * LPIPS, with local VGG-16 weights) + kl_weight *
        KL + adv_weight * hinge generator term; then D_patch."""
        c, net = self.cfg, self.net
        post, _ = net.autoencoder.encode(x)
        rec = net.autoencoder.reconstruct(post.sample(gen), None)
        l_rec = (rec - x).abs().mean()
        l_p = rec.new_zeros(())
        if self.perceptual is not None:
            l_p = self.perceptual(rec, x).mean()
            l_rec = l_rec + c.ae_perceptual_weight * l_p
        l_kl = post.kl().mean()
        use_adv = c.ae_adv_weight > 0 and self.cfg.phase(it)[1] >= c.ae_disc_start
        self.patch_dis.requires_grad_(False)
        l_g = -self.patch_dis(rec).mean() if use_adv else rec.new_zeros(())
        self.patch_dis.requires_grad_(True)
        self._optimise(l_rec + c.ae_kl_weight * l_kl + c.ae_adv_weight * l_g)
        l_d = rec.new_zeros(())
        if use_adv:
            l_d = hinge_d_loss(self.patch_dis(x), self.patch_dis(rec.detach()))
            self._optimise(l_d)
        stats = {"rec": l_rec.item(), "kl": l_kl.item(), "g": l_g.item(), "d": l_d.item()}
        if self.perceptual is not None:
            stats["lpips"] = l_p.item()
        return stats

    def _ldm_step(self, x: Tensor, gen: torch.Generator) -> dict:
        """Stage 2: Eq. 6, unconditioned, on posterior samples (autoencoder frozen)."""
        net = self.net
        with torch.no_grad():
            z = net.autoencoder.encode(x)[0].sample(gen)
            z = z * net.latent_factor(z)
        l_dif = net.schedule.training_loss(lambda zt, t: net.eps(zt, t, None), z, gen)
        self._optimise(l_dif)
        return {"dif": l_dif.item()}

    def _adapt_step(
        self, x_s: Tensor, y_s: Tensor, x_t: Tensor, gen: torch.Generator, it: int
    ) -> dict:
        c, net = self.cfg, self.net
        b = x_s.shape[0]
        # (a) pseudo-labels from the EMA model (and its source predictions, the source's
        # condition with source_condition "prediction")
        with torch.no_grad():
            if c.source_condition == "prediction":
                logits_s, logits_t = self.student(step_seed(c.seed, it, 3))(
                    torch.cat([x_s, x_t])
                ).split(b)
            else:
                logits_t = self.student(step_seed(c.seed, it, 3))(x_t)
        y_t, conf = pseudo_labels(logits_t, c.pseudo_threshold)
        # (b) ClassMix + pixel augmentation of the mixed image
        x_mix, y_mix, mask = classmix(x_s, y_s, x_t, y_t, gen)
        x_mix = pixel_jitter(x_mix, c.mix_jitter, gen)
        if c.source_condition == "prediction":
            c_s = logits_s.argmax(1)
            c_mix = torch.where(mask, c_s, y_t)
        else:
            c_s, c_mix = y_s, y_mix
        # (c) one forward of source, mixed and target; only source and mixed are decoded
        x_all = torch.cat([x_s, x_mix, x_t])
        y_all = torch.cat([c_s, c_mix, y_t])
        keep = (torch.rand(3 * b, generator=gen) >= c.cond_drop_prob).float()
        if c.target_condition == "none":
            keep[2 * b :] = 0.0
        out = net(
            x_all,
            y_all,
            t_start=c.noise_timestep,
            steps=c.train_denoise_steps,
            generator=gen,
            decode=slice(0, 2 * b),
            cond_keep=keep.to(self.device),
        )
        # (d) Eq. 7 + Eq. 6 + encoder side of Eq. 8
        warm = self.cfg.phase(it)[1] < c.pseudo_warmup
        if c.pseudo_weight == "dacs" or warm:
            thr = c.pseudo_weight_threshold if c.pseudo_weight == "dacs" else 0.0
            w = mix_weights(conf, mask, thr, use_target=not warm)
            l_mix = weighted_segmentation_loss(out.logits[b:], y_mix, w)
        else:
            l_mix = segmentation_loss(out.logits[b:], y_mix)
        l_cls = segmentation_loss(out.logits[:b], y_s) + l_mix
        cond = out.cond
        l_dif = net.schedule.training_loss(lambda zt, t: net.eps(zt, t, cond), out.z0.detach(), gen)
        latents = adversarial_latents(out, c.adv_latents)
        domains = torch.arange(3, device=self.device).repeat_interleave(b)
        self.dis.requires_grad_(False)
        if c.adv == "3class":
            l_adv = encoder_adversarial_loss(self.dis, latents)
        elif c.adv == "2class":
            l_adv = fake_label_loss(self.dis, [z[2 * b :] for z in latents], 0)
        else:
            l_adv = out.z0.new_zeros(())
        self.dis.requires_grad_(True)
        k = self.cfg.phase(it)[1]
        frac = float("nan")
        if c.adv != "none" and c.adv_grad_fraction > 0 and k % c.adv_balance_every == 0:
            self.adv_weight, frac = self._balance_adv(c.w_cls * l_cls, l_adv)
        loss = c.w_cls * l_cls + c.w_dif * l_dif + self.adv_weight * l_adv
        l_kl = out.post.kl().mean() if c.adapt_kl_weight > 0 else out.z0.new_zeros(())
        self._optimise(loss + c.adapt_kl_weight * l_kl)
        # (e) discriminator step on the detached latents
        l_dis = out.z0.new_zeros(())
        if c.adv == "3class":
            l_dis = discriminator_loss(self.dis, [z.detach() for z in latents], domains)
        elif c.adv == "2class":
            keep_st = torch.cat([torch.arange(b), torch.arange(2 * b, 3 * b)]).to(self.device)
            dom2 = torch.cat([torch.zeros(b), torch.ones(b)]).long().to(self.device)
            l_dis = discriminator_loss(self.dis, [z.detach()[keep_st] for z in latents], dom2)
        if c.adv != "none":
            self._optimise(l_dis)
        return {
            "cls": l_cls.item(),
            "dif": l_dif.item(),
            "adv": l_adv.item(),
            "dis": l_dis.item(),
            "pseudo_conf": conf.mean().item(),
            "w_adv": self.adv_weight,
            "adv_grad_ratio": frac,
            "latent_std": out.z0.detach().float().std().item(),
        }

    def _balance_adv(self, l_cls: Tensor, l_adv: Tensor) -> tuple[float, float]:
        """``w_adv`` such that ``|grad (w_adv L_adv)| = adv_grad_fraction |grad L_cls|`` on
        the encoder's output layer (VQGAN's adaptive weight, applied to E); also returns the
        measured ratio ``|grad L_adv| / |grad L_cls|`` at weight 1. Keeps the previous
        weight when either gradient vanishes."""
        w = self.net.autoencoder.vae.encoder.conv_out.weight
        g_cls = torch.autograd.grad(l_cls, w, retain_graph=True, allow_unused=True)[0]
        g_adv = torch.autograd.grad(l_adv, w, retain_graph=True, allow_unused=True)[0]
        if g_cls is None or g_adv is None:
            return self.adv_weight, float("nan")
        n_cls, n_adv = float(g_cls.norm()), float(g_adv.norm())
        if not (n_cls > 0 and n_adv > 0 and math.isfinite(n_cls) and math.isfinite(n_adv)):
            return self.adv_weight, float("nan")
        weight = min(self.cfg.adv_grad_fraction * n_cls / n_adv, 1e4)
        return weight, n_adv / n_cls

    # ---------------------------------------------------------------- checkpoints
    def meta(self) -> dict:
        c = self.cfg
        return {
            "arch": "cicld",
            "num_classes": self.net.num_classes,
            "model": to_dict(c.model),
            "ae_config": self.net.ae_config,
            "noise_timestep": c.noise_timestep,
            "denoise_steps": c.inference_steps(),
            "infer_condition": c.infer_condition,
        }

    def save(self, path: Path, it: int) -> Path:
        modules = {"model": self.net, "ema": self.ema_net, "dis": self.dis}
        modules["patch_dis"] = self.patch_dis
        meta = self.meta() | {
            "iteration": it,
            "ema_step": self.ema.step,
            "adv_weight": self.adv_weight,
        }
        return save_checkpoint(path, modules, self.optimizer, meta)

    def load(self, path: Path) -> int:
        modules = {"model": self.net, "ema": self.ema_net, "dis": self.dis}
        modules["patch_dis"] = self.patch_dis
        meta = load_checkpoint(path, modules, self.optimizer, device=self.device)
        self.ema.load_state_dict({"shadow": self.ema_net.state_dict(), "step": meta["ema_step"]})
        self.adv_weight = float(meta.get("adv_weight", self.cfg.w_adv))
        return int(meta["iteration"])

    def save_final(self, path: Path, it: int) -> Path:
        """The EMA weights only (the inference model), loadable by :func:`load_cicld`."""
        return save_checkpoint(path, {"model": self.ema_net}, None, self.meta() | {"iteration": it})


def load_cicld(path: str | Path, device: str | torch.device = "cpu", seed: int = 0):
    """The inference segmenter of a CICLD checkpoint (``final.safetensors``) and its meta."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CICLD checkpoint not found")
    meta = read_meta(path)
    if meta.get("arch") != "cicld":
        raise ValueError(f"{path}: not a CICLD checkpoint (arch {meta.get('arch')!r})")
    if "ae_config" not in meta:
        raise ValueError(f"{path}: a CICLD checkpoint of an older diffdass (no autoencoder config)")
    mcfg = from_dict(
        CICLDModelConfig, dict(meta["model"]) | {"mask_encoder_weights": "", "pretrained": ""}
    )
    net = CICLDNet(mcfg, int(meta["num_classes"]), DDPMSchedule(), ae_config=meta["ae_config"])
    load_checkpoint(path, {"model": net}, device="cpu")
    seg = CICLDSegmenter(
        net, meta["noise_timestep"], meta["denoise_steps"], meta["infer_condition"], seed
    )
    return seg.to(device).eval(), meta


# ===================================================================== loop
RESUME_IGNORE = ("num_workers", "checkpoint_every", "device", "logging")


def train_cicld(cfg: CICLDConfig, out: str | Path, progress: bool = True) -> dict:
    """Train CICLD (three phases) into run directory ``out``; resumes from
    ``out/checkpoints/last.safetensors``. Writes ``checkpoints/final.safetensors`` (EMA
    weights, see :func:`load_cicld`), ``loss_history.json`` and ``metrics.json``."""
    validate_tree(cfg)
    run = RunDir(out, "cicld")
    run.check(cfg, RESUME_IGNORE)
    final = run.ckpt_dir / "final.safetensors"
    done = run.read_metrics()
    if final.is_file() and done and done.get("total_iterations") == cfg.total_iterations:
        return done
    src, tgt = scan_domain_pair(cfg)
    with run.open(cfg, RESUME_IGNORE):
        return _train(cfg, run, src, tgt, progress)


def _train(cfg: CICLDConfig, run: RunDir, src, tgt, progress: bool) -> dict:
    device = resolve_device(cfg.device)
    configure_backends(device)
    tf = cfg.aug.transform()
    ds_s = src.dataset(tf, seed=cfg.seed)
    ds_t = tgt.dataset(tf, seed=cfg.seed + 1)
    epoch_its = cfg.epoch_iterations or -(-len(ds_s) // cfg.batch_size)
    trainer = CICLDTrainer(cfg, ds_s.classes.num_classes, device, epoch_its)
    total = cfg.total_iterations
    seed_t = step_seed(cfg.seed, 0, 7)  # the target stream's own permutation seed

    def batches(start: int):
        return zip(  # both streams have total - start batches
            stream_loader(ds_s, cfg.batch_size, cfg.seed, start, total, cfg.num_workers, device),
            stream_loader(ds_t, cfg.batch_size, seed_t, start, total, cfg.num_workers, device),
            strict=True,
        )

    result = TrainLoop(
        run,
        "cicld",
        total,
        lambda it, pair: trainer.step(it, *pair),
        batches,
        save=trainer.save,
        load=trainer.load,
        checkpoint_every=cfg.checkpoint_every,
        progress=progress,
        distributed=False,
        tracking=cfg.logging,
    )()
    trainer.save_final(run.ckpt_dir / "final.safetensors", total)
    history = result.history
    metrics = {
        "stage": "cicld",
        "total_iterations": total,
        "phases": {p: _phase_summary(history, p) for p in PHASES},
        "checkpoint": str(run.ckpt_dir / "final.safetensors"),
        "checkpoint_kind": "last (EMA model)",
        "device": str(device),
        "seconds": result.seconds,
    }
    run.write_metrics(metrics)
    run.logger.info("done: %s", metrics)
    return metrics


def _phase_summary(history: list[dict], phase: str) -> dict:
    """Mean of every loss over the first and the last tenth of a phase's iterations."""
    rows = [h for h in history if h["phase"] == phase]
    if not rows:
        return {"iterations": 0}
    k = max(1, len(rows) // 10)
    keys = [key for key, v in rows[0].items() if isinstance(v, float) and key != "lr"]
    out: dict = {"iterations": len(rows)}
    for key in keys:
        out[f"{key}_first"] = float(sum(r[key] for r in rows[:k]) / k)
        out[f"{key}_last"] = float(sum(r[key] for r in rows[-k:]) / k)
    return out
