"""CICLD: network shapes, Eq. 5 conditioning, Eq. 8 signs, ClassMix, EMA, training + resume."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import write_folder_dataset

from diffdass.adaptation.cicld import (
    CICLDConfig,
    CICLDTrainer,
    discriminator_loss,
    encoder_adversarial_loss,
    fake_label_loss,
    kl_to_uniform,
    lr_factor,
    prediction_entropy,
    train_cicld,
)
from diffdass.adaptation.mixing import classmix, segmentation_loss
from diffdass.adaptation.seg_training import step_seed
from diffdass.data.folder import DomainSpec
from diffdass.diffusion.schedule import DDPMSchedule
from diffdass.models.cicld import (
    CICLDModelConfig,
    CICLDNet,
    CICLDSegmenter,
    condition_features,
    denoise_timesteps,
)
from diffdass.models.discriminators import LatentDiscriminator
from diffdass.utils.config import ConfigError
from diffdass.utils.io import load_tensors

K = 4  # classes


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def tiny_model(**over) -> CICLDModelConfig:
    kw = dict(
        ae_channels=[8, 16],
        latent_channels=4,
        unet_channels=[16, 16],
        unet_layers_per_block=1,
        unet_attention=False,
        ae_layers_per_block=1,
        ae_mid_attention=False,
        norm_groups=4,
        mask_width=8,
        cls_hidden=8,
        dis_channels=[8, 16],
        dis_hidden=32,
        patch_dis_width=8,
    )
    kw.update(over)
    return CICLDModelConfig(**kw)


def tiny_net(seed: int = 0, **over) -> CICLDNet:
    torch.manual_seed(seed)
    return CICLDNet(tiny_model(**over), K, DDPMSchedule()).eval()


# ------------------------------------------------------------------ networks
@pytest.mark.parametrize("levels", ["fine", "all", "none"])
def test_shapes_through_encoder_unet_decoder(levels):
    over = {"inter_coder": False} if levels == "none" else {"inter_coder_levels": levels}
    net = tiny_net(**over)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        enc = net.encode(x)
        assert enc.post.mean.shape == (2, 4, 16, 16) and enc.z0.shape == (2, 4, 16, 16)
        shapes = [None if s is None else tuple(s.shape) for s in enc.skips]
        expect = {
            "fine": [(2, 8, 32, 32), None],  # 2 levels: only 1/1 (never the latent's 1/2)
            "all": [(2, 8, 32, 32), (2, 16, 16, 16)],
            "none": [None, None],
        }[levels]
        assert shapes == expect
        eps = net.eps(enc.z0, torch.tensor([10, 500]), None)
        assert eps.shape == (2, 4, 16, 16)
        assert net.autoencoder.features(enc.post.mode(), enc.skips).shape == (2, 8, 32, 32)
        assert net.autoencoder.reconstruct(enc.post.mode(), enc.skips).shape == (2, 3, 32, 32)
        y = torch.randint(0, K, (2, 32, 32))
        out = net(x, y, t_start=200, steps=2, generator=torch.Generator().manual_seed(0))
    assert out.logits.shape == (2, K, 32, 32)
    assert len(out.trajectory) == 2 and out.trajectory[-1].shape == (2, 4, 16, 16)
    assert out.cond.shape == (2, 16, 16, 16)  # concat: a label embedding at the latent's size


def test_inter_coder_levels_carry_the_encoder_features_after_training_starts():
    """A fused level starts as the identity on D's feature (a pretrained decoder decodes as
    before) and passes E's feature once its weights move; unconnected levels never do."""
    for spec, connected in (("0", [0]), ("1", [1]), ("all", [0, 1]), ("fine", [0])):
        net = tiny_net(inter_coder_levels=spec)
        assert net.autoencoder.levels == connected
        x = torch.rand(1, 3, 32, 32) * 2 - 1
        with torch.no_grad():
            enc = net.encode(x)
            bumped = copy.copy(enc)
            bumped.skips = [None if s is None else s + 1.0 for s in enc.skips]
            z = enc.z0
            # zero-initialised fusion: E's features do not reach D yet
            assert torch.equal(net.decode_logits(z, bumped), net.decode_logits(z, enc))
            for f in net.autoencoder.fusions.values():
                f.conv.weight.add_(0.1)
            moved = net.decode_logits(z, bumped)
            assert not torch.allclose(moved, net.decode_logits(z, enc))
    with pytest.raises(ValueError, match="inter_coder_levels"):
        tiny_net(inter_coder_levels="0,5")


def test_latent_normalisation_bounds_the_latent_and_decodes_in_autoencoder_units():
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    net = tiny_net()  # latent_norm "sample"
    with torch.no_grad():
        for p in net.autoencoder.vae.quant_conv.parameters():
            p.mul_(50.0)  # an inflated latent
        enc = net.encode(x)
    rms = enc.z0.pow(2).mean(dim=(1, 2, 3)).sqrt()
    torch.testing.assert_close(rms, torch.ones(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(enc.z0 / enc.factor, enc.post.mode())
    # "scale": LDM's factor, estimated once from posterior samples, then fixed
    net = tiny_net(latent_norm="scale")
    with pytest.raises(RuntimeError, match="set_latent_scale"):
        net.encode(x)
    with torch.no_grad():
        s = net.set_latent_scale(x, torch.Generator().manual_seed(0))
        z = net.autoencoder.encode(x)[0].sample(torch.Generator().manual_seed(0))
        assert s == pytest.approx(1.0 / float(z.std()), rel=1e-5)
        enc = net.encode(x)
    torch.testing.assert_close(enc.z0, enc.post.mode() * s)
    assert "latent_scale" in net.state_dict()  # saved with the checkpoint
    none = tiny_net(latent_norm="none")
    with torch.no_grad():
        enc = none.encode(x)
    assert torch.equal(enc.z0, enc.post.mode())


def test_image_size_not_divisible_is_a_clear_error():
    with pytest.raises(ValueError, match="divisible by 4"):
        tiny_net().encode(torch.zeros(1, 3, 30, 32))


def test_autoencoderkl_round_trip_through_a_local_pretrained_folder(tmp_path):
    """A diffusers AutoencoderKL saved with save_pretrained loads as CICLD's autoencoder
    (its architecture replaces the configured widths); a missing folder is a clear error."""
    from diffusers import AutoencoderKL

    from diffdass.models.cicld_autoencoder import autoencoder_config

    torch.manual_seed(5)
    vae = AutoencoderKL(**autoencoder_config([8, 16, 16], 4, 1, 4, False))
    vae.save_pretrained(tmp_path / "kl")
    net = tiny_net(pretrained=str(tmp_path / "kl"))  # tiny_model says [8, 16]: replaced
    assert net.autoencoder.channels == [8, 16, 16] and net.total_downsample() == 8
    for k, v in vae.state_dict().items():
        assert torch.equal(net.autoencoder.vae.state_dict()[k], v), k
    # the whole-pipeline layout (vae/ subfolder) works too, and so does the reconstruction
    vae.save_pretrained(tmp_path / "sd" / "vae")
    other = tiny_net(pretrained=str(tmp_path / "sd"))
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        post, skips = other.autoencoder.encode(x)
        ref = vae.decode(post.mode()).sample
        torch.testing.assert_close(other.autoencoder.reconstruct(post.mode(), skips), ref)
    with pytest.raises(FileNotFoundError, match="no diffusers AutoencoderKL"):
        tiny_net(pretrained=str(tmp_path / "missing"))


# ------------------------------------------------------------------ Eq. 5
def test_condition_eq5_formula_and_identity_at_zero():
    torch.manual_seed(0)
    o = torch.randn(2, 3, 2, 2)
    c = torch.randn(2, 5, 3)
    out = condition_features(o, c)
    # explicit per-position formula o_i + sum_k softmax_k(o_i . c_k / sqrt(C)) c_k
    for b in range(2):
        for i in range(2):
            for j in range(2):
                oi = o[b, :, i, j]
                w = torch.softmax(c[b] @ oi / math.sqrt(3), dim=0)
                torch.testing.assert_close(out[b, :, i, j], oi + w @ c[b])
    assert torch.equal(condition_features(o, torch.zeros_like(c)), o)
    assert condition_features(o, None) is o


@pytest.mark.parametrize("mode", ["concat", "eq5"])
def test_conditioning_changes_the_unet_output_and_is_identity_at_zero(mode):
    net = tiny_net(condition_mode=mode)
    z = torch.randn(2, 4, 16, 16)
    t = torch.tensor([100, 100])
    y = torch.randint(0, K, (2, 32, 32))
    with torch.no_grad():
        cond = net.condition(y, z)
        shape = (2, 16, 16, 16) if mode == "concat" else (2, 8 * 8, 16)
        assert cond.shape == shape  # concat: latent-sized map; eq5: a token per mid position
        plain = net.eps(z, t, None)
        conditioned = net.eps(z, t, cond)
        zero = net.eps(z, t, torch.zeros_like(cond))
        dropped = net.eps(z, t, net.condition(y, z, keep=torch.tensor([1.0, 0.0])))
    assert (conditioned - plain).abs().max() > 1e-4
    assert torch.equal(zero, plain)
    assert torch.equal(dropped[1], plain[1]) and not torch.allclose(dropped[0], plain[0])
    # different labels give different conditions
    with torch.no_grad():
        other = net.eps(z, t, net.condition((y + 1) % K, z))
    assert (other - conditioned).abs().max() > 1e-5
    # without the conditioning module there is no f_mask and no extra input
    bare = tiny_net(condition=False)
    assert bare.mask_encoder is None and bare.condition(y, z) is None
    assert bare.denoiser.unet.conv_in.in_channels == 4


def test_denoise_timesteps_and_segmenter_is_deterministic():
    assert denoise_timesteps(200, 2) == [200, 100]
    assert denoise_timesteps(999, 1) == [999]
    with pytest.raises(ValueError):
        denoise_timesteps(1, 3)
    seg = CICLDSegmenter(tiny_net(), 200, 2, "self", seed=3).eval()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        a, b = seg(x), seg(x)
        seg.condition = "none"
        c = seg(x)
    assert a.shape == (1, K, 32, 32) and torch.equal(a, b)
    assert not torch.allclose(a, c)  # self-conditioning really conditions the second pass


# ------------------------------------------------------------------ Eq. 8
def test_kl_to_uniform_values():
    assert kl_to_uniform(torch.zeros(1, 3)).abs().item() < 1e-7
    big = kl_to_uniform(torch.tensor([[50.0, 0.0, 0.0]])).item()
    assert big == pytest.approx(math.log(3), abs=1e-5)


def test_discriminator_step_lowers_its_loss():
    torch.manual_seed(0)
    dis = LatentDiscriminator(4, (8, 16), 3, 32, 4)
    latents = [torch.randn(6, 4, 8, 8) + torch.arange(3).repeat_interleave(2).view(-1, 1, 1, 1)]
    domains = torch.arange(3).repeat_interleave(2)
    opt = torch.optim.Adam(dis.parameters(), lr=1e-3)
    before = discriminator_loss(dis, latents, domains)
    opt.zero_grad()
    before.backward()
    opt.step()
    after = discriminator_loss(dis, latents, domains)
    assert after.item() < before.item() - 1e-4


def test_encoder_step_raises_discriminator_entropy():
    torch.manual_seed(0)
    dis = LatentDiscriminator(4, (8, 16), 3, 32, 4)
    # make the discriminator confident first (low entropy), then freeze it
    z_fixed = torch.randn(6, 4, 8, 8)
    domains = torch.arange(3).repeat_interleave(2)
    opt_d = torch.optim.Adam(dis.parameters(), lr=1e-2)
    for _ in range(20):
        opt_d.zero_grad()
        discriminator_loss(dis, [z_fixed], domains).backward()
        opt_d.step()
    opt_d.zero_grad(set_to_none=True)
    dis.requires_grad_(False)
    encoder = torch.nn.Conv2d(4, 4, 3, padding=1)
    x = z_fixed.clone()
    before = prediction_entropy(dis, encoder(x)).item()
    kl_before = encoder_adversarial_loss(dis, [encoder(x)]).item()
    opt_e = torch.optim.SGD(encoder.parameters(), lr=1e-2)
    opt_e.zero_grad()
    encoder_adversarial_loss(dis, [encoder(x)]).backward()
    opt_e.step()
    assert all(p.grad is None for p in dis.parameters())
    after = prediction_entropy(dis, encoder(x)).item()
    assert after > before + 1e-5
    # KL(p || U) = log 3 - H(p): the same move in the other quantity
    assert encoder_adversarial_loss(dis, [encoder(x)]).item() < kl_before
    assert kl_before == pytest.approx(math.log(3) - before, abs=1e-5)


def test_two_class_fake_label_loss_points_to_source():
    torch.manual_seed(0)
    dis = LatentDiscriminator(4, (8,), 2, 16, 4)
    z = torch.randn(3, 4, 8, 8)
    logits = dis(z)
    expected = torch.nn.functional.cross_entropy(logits, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(fake_label_loss(dis, [z], 0), expected)


# ------------------------------------------------------------------ ClassMix
def test_classmix_keeps_image_label_correspondence():
    g = torch.Generator().manual_seed(0)
    b, h, w = 3, 16, 16
    y_s = torch.randint(0, 5, (b, h, w))
    y_s[:, 0, :] = 255
    y_t = torch.randint(0, 5, (b, h, w))
    # each image encodes its own label: source pixel = label, target pixel = 10 + label
    x_s = y_s.float().unsqueeze(1).repeat(1, 3, 1, 1)
    x_t = (10 + y_t).float().unsqueeze(1).repeat(1, 3, 1, 1)
    x_mix, y_mix, mask = classmix(x_s, y_s, x_t, y_t, g)
    assert torch.equal(x_mix[:, 0][mask], y_s[mask].float())
    assert torch.equal(y_mix[mask], y_s[mask])
    assert torch.equal(x_mix[:, 0][~mask], 10 + y_t[~mask].float())
    assert torch.equal(y_mix[~mask], y_t[~mask])
    for i in range(b):
        present = set(torch.unique(y_s[i]).tolist()) - {255}
        pasted = set(torch.unique(y_s[i][mask[i]]).tolist())
        assert 255 not in pasted
        assert len(pasted) == (len(present) + 1) // 2
        for cls in pasted:  # a chosen class is pasted whole
            assert bool(mask[i][y_s[i] == cls].all())


def test_segmentation_loss_is_zero_not_nan_when_all_ignored():
    logits = torch.randn(1, K, 4, 4, requires_grad=True)
    loss = segmentation_loss(logits, torch.full((1, 4, 4), 255))
    assert loss.item() == 0.0
    loss.backward()


# ------------------------------------------------------------------ training
def _data(tmp_path):
    src = write_folder_dataset(tmp_path / "src", n=4, size=(32, 32), num_classes=K, seed=0)
    tgt = write_folder_dataset(
        tmp_path / "tgt", n=4, size=(32, 32), num_classes=K, labels=False, seed=1
    )
    return src, tgt


def _cfg(src, tgt, **over) -> CICLDConfig:
    kw = dict(
        source=DomainSpec(str(src), "train"),
        target=DomainSpec(str(tgt), "train"),
        model=tiny_model(),
        ae_iterations=2,
        ldm_iterations=2,
        iterations=3,
        batch_size=2,
        lr=1e-3,
        noise_timestep=100,
        train_denoise_steps=2,
        device="cpu",
        checkpoint_every=2,
    )
    kw.update(over)
    cfg = CICLDConfig(**kw)
    cfg.aug.hflip = False
    return cfg


def test_ema_update_equals_its_formula(tmp_path):
    cfg = _cfg("unused", "unused", ema_decay=0.9)
    trainer = CICLDTrainer(cfg, K, torch.device("cpu"), epoch_iterations=2)
    before_ema = {k: v.clone() for k, v in trainer.ema_net.state_dict().items()}
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = torch.randint(0, K, (2, 32, 32))
    it = cfg.ae_iterations + cfg.ldm_iterations  # an adaptation step
    trainer.step(it, {"image": x, "label": y}, {"image": x.flip(-1), "label": y})
    now = dict(trainer.net.named_parameters())
    changed = 0
    for name, p in now.items():
        expected = 0.9 * before_ema[name] + 0.1 * p.detach()
        torch.testing.assert_close(trainer.ema_net.state_dict()[name], expected)
        changed += int(not torch.equal(before_ema[name], p.detach()))
    assert changed > 0 and trainer.ema.step == 1


def test_two_class_adaptation_step_trains_both_sides():
    cfg = _cfg("unused", "unused", adv="2class", ae_iterations=0, ldm_iterations=0)
    trainer = CICLDTrainer(cfg, K, torch.device("cpu"), epoch_iterations=2)
    assert trainer.dis.fc[-1].out_features == 2
    dis_before = [p.clone() for p in trainer.dis.parameters()]
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = torch.randint(0, K, (2, 32, 32))
    stats = trainer.step(0, {"image": x, "label": y}, {"image": -x, "label": y})
    assert stats["phase"] == "adapt"
    assert all(math.isfinite(stats[k]) for k in ("cls", "dif", "adv", "dis"))
    assert any(
        not torch.equal(a, b) for a, b in zip(dis_before, trainer.dis.parameters(), strict=True)
    )


def test_lr_schedules():
    cfg = CICLDConfig(lr_schedule="step", lr_step_epochs=5, lr_step_gamma=0.99)
    assert lr_factor(cfg, 49, 1000, 10) == 1.0  # epoch 4
    assert lr_factor(cfg, 50, 1000, 10) == pytest.approx(0.99)  # epoch 5
    assert lr_factor(cfg, 100, 1000, 10) == pytest.approx(0.99**2)
    cfg.lr_schedule = "poly"
    assert lr_factor(cfg, 500, 1000, 10) == pytest.approx(0.5**0.9)
    cfg.lr_schedule = "step_poly"
    assert lr_factor(cfg, 500, 1000, 10) == pytest.approx(0.5**0.9 * 0.99**10)


def test_config_validate_rejects_bad_values():
    good = _cfg("s", "t")
    good.validate()
    bad = [
        dict(adv="4class"),
        dict(infer_condition="gt"),
        dict(noise_timestep=1000),
        dict(train_denoise_steps=0),
        dict(cond_drop_prob=1.5),
        dict(lr_schedule="cosine"),
        dict(target=DomainSpec("", "train")),
    ]
    for over in bad:
        with pytest.raises(ConfigError):
            _cfg("s", "t", **over).validate()
    cfg = _cfg("s", "t")
    cfg.aug.crop = [30, 32]
    with pytest.raises(ConfigError, match="divisible"):
        cfg.validate()


def test_train_end_to_end_evaluates_and_resumes_identically(tmp_path, monkeypatch):
    from diffdass.adaptation.cicld import load_cicld
    from diffdass.data.folder import FolderDataset
    from diffdass.evaluation.evaluate import evaluate

    src, tgt = _data(tmp_path)
    cfg = _cfg(src, tgt)
    full = tmp_path / "full"
    metrics = train_cicld(cfg, full, progress=False)
    assert metrics["total_iterations"] == 7
    ph = metrics["phases"]
    assert ph["ae"]["iterations"] == 2 and ph["ldm"]["iterations"] == 2
    assert ph["adapt"]["iterations"] == 3
    for key in ("rec_last", "kl_last"):
        assert math.isfinite(ph["ae"][key])
    assert math.isfinite(ph["ldm"]["dif_last"])
    for key in ("cls_last", "dif_last", "adv_last", "dis_last"):
        assert math.isfinite(ph["adapt"][key]) and ph["adapt"][key] >= 0
    assert (full / "metrics.json").is_file() and (full / "config.yaml").is_file()

    seg, meta = load_cicld(full / "checkpoints" / "final.safetensors")
    assert meta["num_classes"] == K and meta["iteration"] == 7
    ds = FolderDataset(src, "train")
    res = evaluate(seg, ds, class_sets=("all",), progress=False)
    assert 0.0 <= res["miou"][f"all{K}"] <= 100.0

    # kill a run at iteration 5 (last checkpoint: 4), then resume it
    part = tmp_path / "part"
    orig = CICLDTrainer.step

    def step_then_die(self, it, bs, bt):
        if it == 5:
            raise KeyboardInterrupt
        return orig(self, it, bs, bt)

    monkeypatch.setattr(CICLDTrainer, "step", step_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_cicld(cfg, part, progress=False)
    monkeypatch.setattr(CICLDTrainer, "step", orig)
    assert not (part / "checkpoints" / "final.safetensors").exists()
    train_cicld(cfg, part, progress=False)
    assert "resuming from iteration 4" in (part / "run.log").read_text()
    for name in ("final.safetensors", "last.safetensors"):
        a = load_tensors(full / "checkpoints" / name)
        b = load_tensors(part / "checkpoints" / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)


def test_train_logging_tensorboard_false_writes_no_event_files(tmp_path):
    """CICLD's `logging` switch: off, the run writes no tensorboard/ folder; changing it
    never blocks using the folder again (it is in RESUME_IGNORE)."""
    from diffdass.training import LoggingConfig

    src, tgt = _data(tmp_path)
    cfg = _cfg(src, tgt, ae_iterations=1, ldm_iterations=1, iterations=1)
    cfg.logging = LoggingConfig(tensorboard=False)
    out = tmp_path / "off"
    metrics = train_cicld(cfg, out, progress=False)
    assert metrics["total_iterations"] == 3
    assert (out / "checkpoints" / "final.safetensors").is_file()
    assert not (out / "tensorboard").exists()
    cfg.logging = LoggingConfig()  # the finished folder is accepted; nothing left to log
    assert train_cicld(cfg, out, progress=False)["total_iterations"] == 3
    assert not (out / "tensorboard").exists()


# ------------------------------------------------------------------ perceptual term
def _vgg_file(tmp_path, seed: int = 0, full_keys: bool = True):
    """A VGG-16 weight file as torchvision writes it (``features.N.*`` + the classifier) or
    as the feature part only; random weights stand in for ImageNet's."""
    from torchvision.models import vgg16

    torch.manual_seed(seed)
    state = vgg16(weights=None).state_dict() if full_keys else None
    if not full_keys:
        state = {
            k[len("features.") :]: v
            for k, v in vgg16(weights=None).state_dict().items()
            if k.startswith("features.")
        }
    path = tmp_path / f"vgg16_{seed}_{int(full_keys)}.pth"
    torch.save(state, path)
    return path, state


def test_perceptual_distance_properties_and_local_weights(tmp_path):
    from diffdass.models.perceptual import LPIPS_CHANNELS, VGGPerceptual, build_perceptual

    path, state = _vgg_file(tmp_path)
    m = VGGPerceptual(path)
    torch.testing.assert_close(m.features[0].weight, state["features.0.weight"])
    short, short_state = _vgg_file(tmp_path, seed=1, full_keys=False)
    torch.testing.assert_close(VGGPerceptual(short).features[28].bias, short_state["28.bias"])
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    small = x + 0.05 * torch.randn_like(x)
    large = x + 0.5 * torch.randn_like(x)
    assert torch.equal(m(x, x), torch.zeros(2))
    d_small, d_large = m(x, small), m(x, large)
    assert (d_small > 0).all() and (d_large > d_small).all()
    torch.testing.assert_close(m(x, large), m(large, x))  # symmetric
    # the LPIPS formula by hand at the first layer only, channel weights 1
    h = (x - m.shift) / m.scale
    g = (large - m.shift) / m.scale
    fx, fy = m.features[:4](h), m.features[:4](g)
    unit = lambda f: f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)  # noqa: E731
    layer0 = (unit(fx) - unit(fy)).pow(2).sum(1).mean((1, 2))
    assert (d_large > layer0).all()  # the other four layers add positive terms
    # LPIPS linear weights: doubling every channel weight doubles the distance
    lin = {
        f"lin{k}.model.1.weight": 2 * torch.ones(1, c, 1, 1) for k, c in enumerate(LPIPS_CHANNELS)
    }
    torch.save(lin, tmp_path / "lin.pth")
    torch.testing.assert_close(VGGPerceptual(path, tmp_path / "lin.pth")(x, large), 2 * d_large)
    # gradients reach the images, never the frozen network
    xr = x.clone().requires_grad_(True)
    m(xr, large).sum().backward()
    assert xr.grad is not None and xr.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in m.parameters())
    m.train()
    assert not m.training
    with pytest.raises(ValueError, match="local file"):
        build_perceptual(None)


def test_perceptual_bad_files_are_clear_errors(tmp_path):
    from diffdass.models.perceptual import VGGPerceptual

    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"other\.pth: not a VGG-16 state dict"):
        VGGPerceptual(tmp_path / "other.pth")
    path, state = _vgg_file(tmp_path)
    state["features.0.weight"] = torch.zeros(8, 3, 3, 3)
    torch.save(state, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match=r"wrong\.pth: tensor 'features\.0\.weight' has shape"):
        VGGPerceptual(tmp_path / "wrong.pth")
    torch.save({"lin0.model.1.weight": torch.ones(1, 64, 1, 1)}, tmp_path / "lin.pth")
    with pytest.raises(ValueError, match="lin1.model.1.weight"):
        VGGPerceptual(path, tmp_path / "lin.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        VGGPerceptual(tmp_path / "missing.pth")
    with pytest.raises(ConfigError, match="ae_perceptual_weights: .*missing.pth: file not found"):
        _cfg("s", "t", ae_perceptual_weights=str(tmp_path / "missing.pth")).validate()
    with pytest.raises(ConfigError, match="needs ae_perceptual_weights"):
        _cfg("s", "t", ae_perceptual_lin=str(tmp_path / "lin.pth")).validate()


def test_autoencoder_step_uses_the_perceptual_term(tmp_path):
    path, _ = _vgg_file(tmp_path)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = torch.randint(0, K, (2, 32, 32))
    stats = {}
    for name, over in (("l1", {}), ("lpips", {"ae_perceptual_weights": str(path)})):
        cfg = _cfg("unused", "unused", ae_adv_weight=0.0, **over)
        trainer = CICLDTrainer(cfg, K, torch.device("cpu"), epoch_iterations=2)
        stats[name] = trainer.step(0, {"image": x, "label": y}, {"image": -x, "label": y})
    assert stats["l1"]["phase"] == stats["lpips"]["phase"] == "ae"
    assert "lpips" not in stats["l1"] and stats["lpips"]["lpips"] > 0
    # same seed, same network: the reported reconstruction loss is L1 + 1.0 * LPIPS
    assert stats["lpips"]["rec"] == pytest.approx(stats["l1"]["rec"] + stats["lpips"]["lpips"])


# ------------------------------------------------------------------ the noise probe
def _probe_net(path: str) -> CICLDSegmenter:
    """A tiny net whose decoder reads only the inter-coder features (``skips``) or only the
    latent (``latent``): 4 classes, logits taken from the first 4 channels."""
    net = tiny_net()
    if path == "skips":
        net.decode_logits = lambda z, enc, sel=None: enc.skips[0][:, :4]
    else:
        net.decode_logits = lambda z, enc, sel=None: F.interpolate(z[:, :4], scale_factor=2)
    return CICLDSegmenter(net, t_start=200, steps=2, condition="none")


def test_noise_probe_is_zero_when_the_latent_is_ignored_and_large_when_it_is_the_path():
    from diffdass.evaluation.cicld_probe import noise_probe

    g = torch.Generator().manual_seed(0)
    ds = [{"image": torch.rand(3, 32, 32, generator=g) * 2 - 1} for _ in range(3)]
    assert noise_probe(_probe_net("skips"), ds) == 0.0
    share = noise_probe(_probe_net("latent"), ds)
    assert 0.5 < share <= 1.0, share  # about 1 - 1/4 for a latent unrelated to the noise
    assert noise_probe(_probe_net("latent"), ds, n=1) == noise_probe(_probe_net("latent"), ds[:1])


# ------------------------------------------------------------------ confidence weighting
def test_mix_weights_and_weighted_loss():
    from diffdass.adaptation.mixing import mix_weights, weighted_segmentation_loss

    conf = torch.tensor([[[0.99, 0.5], [0.97, 0.2]], [[0.1, 0.1], [0.1, 0.99]]])
    mask = torch.tensor([[[True, False], [False, False]], [[False, False], [False, False]]])
    w = mix_weights(conf, mask, 0.968)
    # image 0: 2 of 4 pixels confident -> 0.5 on target pixels, 1 on the pasted one
    assert torch.equal(w[0], torch.tensor([[1.0, 0.5], [0.5, 0.5]]))
    assert torch.equal(w[1], torch.full((2, 2), 0.25))
    warm = mix_weights(conf, mask, 0.968, use_target=False)
    assert torch.equal(warm, mask.float())
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, K, 4, 4, generator=g)
    labels = torch.randint(0, K, (2, 8, 8), generator=g)
    labels[0, 0] = 255
    ones = torch.ones(2, 8, 8)
    torch.testing.assert_close(
        weighted_segmentation_loss(logits, labels, ones), segmentation_loss(logits, labels)
    )
    assert weighted_segmentation_loss(logits, labels, ones * 0).item() == 0.0
    half = weighted_segmentation_loss(logits, labels, ones * 0.5)
    torch.testing.assert_close(half, 0.5 * segmentation_loss(logits, labels))


def _adapt_trainer(**over):
    """A trainer at its first adaptation iteration and one fixed source / target batch."""
    cfg = _cfg("unused", "unused", ae_iterations=0, ldm_iterations=0, **over)
    torch.manual_seed(0)
    trainer = CICLDTrainer(cfg, K, torch.device("cpu"), epoch_iterations=2)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    y = torch.randint(0, K, (2, 32, 32), generator=g)
    return trainer, {"image": x, "label": y}, {"image": -x, "label": y}


def _cls_after_one_adapt_step(**over) -> float:
    trainer, bs, bt = _adapt_trainer(**over)
    return trainer.step(0, bs, bt)["cls"]


def test_cicld_confidence_weighting_and_warmup_change_the_mixed_loss():
    plain = _cls_after_one_adapt_step()
    # every pixel reaches confidence 0: DACS's weights are all 1, the plain loss
    assert _cls_after_one_adapt_step(pseudo_weight="dacs", pseudo_weight_threshold=0.0) == (
        pytest.approx(plain, rel=1e-5)
    )
    # the untrained EMA model is never fully confident: target pixels weigh 0, as in warm-up
    none_conf = _cls_after_one_adapt_step(pseudo_weight="dacs", pseudo_weight_threshold=1.0)
    warm = _cls_after_one_adapt_step(pseudo_warmup=5)
    assert none_conf == pytest.approx(warm, rel=1e-6) and warm < plain
    # no warm-up: the plain loss
    assert _cls_after_one_adapt_step(pseudo_warmup=0) == plain
    with pytest.raises(ConfigError, match="pseudo_weight"):
        _cfg("unused", "unused", pseudo_weight="soft").validate()
    with pytest.raises(ConfigError, match="pseudo_warmup"):
        _cfg("unused", "unused", pseudo_warmup=-1).validate()


# ------------------------------------------------------------------ adversarial weight


def test_gradient_norm_weighting_sets_the_stated_fraction():
    """w_adv makes the adversarial gradient on E's output layer adv_grad_fraction of
    L_cls's, re-measured every adv_balance_every iterations and kept in between."""
    trainer, bs, bt = _adapt_trainer(adv_grad_fraction=0.25, adv_balance_every=2)
    net = trainer.net
    w = net.autoencoder.vae.encoder.conv_out.weight
    # the formula, on losses of a forward pass of the current net
    out = net(torch.cat([bs["image"], bt["image"]]), generator=torch.Generator().manual_seed(0))
    l_cls = segmentation_loss(out.logits, torch.cat([bs["label"], bt["label"]]))
    l_adv = encoder_adversarial_loss(trainer.dis, [out.z0, *out.trajectory])
    weight, ratio = trainer._balance_adv(l_cls, l_adv)
    g_cls = torch.autograd.grad(l_cls, w, retain_graph=True)[0].norm()
    g_adv = torch.autograd.grad(l_adv, w)[0].norm()
    assert weight == pytest.approx(0.25 * float(g_cls / g_adv), rel=1e-4)
    assert ratio == pytest.approx(float(g_adv / g_cls), rel=1e-4)
    # in training: measured at adaptation iterations 0 and 2, kept at 1
    s0 = trainer.step(0, bs, bt)
    s1 = trainer.step(1, bs, bt)
    s2 = trainer.step(2, bs, bt)
    assert math.isfinite(s0["adv_grad_ratio"]) and s0["w_adv"] == pytest.approx(
        0.25 / s0["adv_grad_ratio"]
    )
    assert math.isnan(s1["adv_grad_ratio"]) and s1["w_adv"] == s0["w_adv"]
    assert s2["w_adv"] != s0["w_adv"]
    # the fixed weight is used when the fraction is 0
    fixed, bs, bt = _adapt_trainer(adv_grad_fraction=0.0, w_adv=0.03)
    assert fixed.step(0, bs, bt)["w_adv"] == 0.03


def test_source_condition_prediction_conditions_on_the_ema_models_prediction(monkeypatch):
    """With source_condition "prediction" the source image's condition is the EMA model's
    arg-max, not the label; with "label" it is the label."""
    seen = {}
    for mode in ("prediction", "label"):
        trainer, bs, bt = _adapt_trainer(source_condition=mode, cond_drop_prob=0.0)
        orig = trainer.net.condition

        def spy(labels, z, keep=None, _orig=orig, _mode=mode):
            seen.setdefault(_mode, labels[:2].clone())
            return _orig(labels, z, keep)

        monkeypatch.setattr(trainer.net, "condition", spy)
        with torch.no_grad():
            pred = trainer.student(step_seed(trainer.cfg.seed, 0, 3))(
                torch.cat([bs["image"], bt["image"]])
            )[:2].argmax(1)
        trainer.step(0, bs, bt)
        expect = pred if mode == "prediction" else bs["label"]
        assert torch.equal(seen[mode], expect), mode
    assert not torch.equal(seen["prediction"], seen["label"])


def test_scale_normalisation_is_estimated_once_after_the_autoencoder_phase():
    trainer, bs, bt = _adapt_trainer(model=tiny_model(latent_norm="scale"))
    assert float(trainer.net.latent_scale) == 0.0
    trainer.step(0, bs, bt)
    s = float(trainer.net.latent_scale)
    assert s > 0 and float(trainer.ema_net.latent_scale) == s
    trainer.step(1, bs, bt)
    assert float(trainer.net.latent_scale) == s  # fixed from then on
