"""Source-only training: loss decreases, resume equals an uninterrupted run, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from diffdass.adaptation.augment import NoisyMaskedAugment
from diffdass.adaptation.seg_training import TrainSegConfig, train_segmenter
from diffdass.diffusion.schedule import DDPMSchedule
from diffdass.models.factory import load_segmenter
from diffdass.utils.checkpoint import load_checkpoint
from diffdass.utils.config import ConfigError, load_config
from diffdass.utils.io import load_tensors

from conftest import write_folder_dataset


def _cfg(root, **kw) -> TrainSegConfig:
    over = {
        "source.root": str(root),
        "model.arch": "fcn8s_tiny",
        "iterations": 12,
        "batch_size": 4,
        "optim.lr": 0.01,
        "optim.head_lr_mult": 1.0,
        "num_workers": 0,
        "checkpoint_every": 4,
        "noisy_masked.prob": 0.25,
        "noisy_masked.max_timestep": 300,
    }
    over.update(kw)
    return load_config(TrainSegConfig, None, over)


def test_loss_decreases_on_benchmark(tmp_path):
    from diffdass.data.benchmark import generate_benchmark

    generate_benchmark(
        tmp_path / "b",
        n_source=24,
        n_target_train=4,
        n_target_val=4,
        height=32,
        width=64,
        progress=False,
    )
    cfg = _cfg(tmp_path / "b" / "source", iterations=40, batch_size=8, checkpoint_every=100)
    m = train_segmenter(cfg, tmp_path / "run", progress=False)
    assert m["loss_last"] < 0.8 * m["loss_first"], m
    for f in ("config.yaml", "git.txt", "run.log", "metrics.json", "checkpoints/final.safetensors"):
        assert (tmp_path / "run" / f).is_file(), f
    model, meta = load_segmenter(tmp_path / "run" / "checkpoints" / "final.safetensors")
    assert meta["arch"] == "fcn8s_tiny" and meta["num_classes"] == 19


def test_resume_equals_uninterrupted(tmp_path):
    root = write_folder_dataset(tmp_path / "ds", n=10)
    full = tmp_path / "full"
    train_segmenter(_cfg(root), full, progress=False)
    # kill a run at iteration 9 of 12 (its last checkpoint is at 8), then resume it
    part = tmp_path / "part"
    cfg8 = _cfg(root, iterations=12)
    from diffdass.adaptation import seg_training

    calls = {"n": 0}
    orig = seg_training.SegTrainer.step

    def step_then_die(self, it, batches):
        if it == 9:
            raise KeyboardInterrupt
        calls["n"] += 1
        return orig(self, it, batches)

    seg_training.SegTrainer.step = step_then_die
    try:
        with pytest.raises(KeyboardInterrupt):
            train_segmenter(cfg8, part, progress=False)
    finally:
        seg_training.SegTrainer.step = orig
    assert not (part / "checkpoints" / "final.safetensors").exists()
    assert calls["n"] == 9
    train_segmenter(cfg8, part, progress=False)  # resumes from iteration 8
    assert "resuming from iteration 8" in (part / "run.log").read_text()
    a = load_tensors(full / "checkpoints" / "final.safetensors")
    b = load_tensors(part / "checkpoints" / "final.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_finished_run_is_reused(tmp_path):
    root = write_folder_dataset(tmp_path / "ds", n=4)
    cfg = _cfg(root, iterations=2)
    train_segmenter(cfg, tmp_path / "r", progress=False)
    mtime = (tmp_path / "r" / "checkpoints" / "final.safetensors").stat().st_mtime_ns
    train_segmenter(cfg, tmp_path / "r", progress=False)
    assert (tmp_path / "r" / "checkpoints" / "final.safetensors").stat().st_mtime_ns == mtime


def test_changed_config_refuses_to_mix(tmp_path):
    root = write_folder_dataset(tmp_path / "ds", n=4)
    train_segmenter(_cfg(root, iterations=2), tmp_path / "r", progress=False)
    with pytest.raises(ConfigError, match="different config"):
        train_segmenter(
            _cfg(root, iterations=2, **{"optim.lr": 0.5}), tmp_path / "r", progress=False
        )


def test_nan_loss_is_reported_and_checkpoint_kept(tmp_path):
    root = write_folder_dataset(tmp_path / "ds", n=4)
    cfg = _cfg(root, iterations=8, checkpoint_every=2, **{"optim.lr": 1e30})
    with pytest.raises(FloatingPointError, match="loss is (nan|inf)"):
        train_segmenter(cfg, tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "checkpoints" / "final.safetensors").exists()
    last = tmp_path / "r" / "checkpoints" / "last.safetensors"
    if last.exists():  # any checkpoint written before the NaN is intact and loadable
        load_tensors(last)


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="source.root"):
        load_config(TrainSegConfig, None, {})
    cfg = _cfg(tmp_path / "nope")
    from diffdass.data.folder import DataError

    with pytest.raises(DataError, match="classes.yaml"):
        train_segmenter(cfg, tmp_path / "r", progress=False)


def test_noisy_masked_augment_formula():
    sched = DDPMSchedule()
    aug = NoisyMaskedAugment(sched, prob=1.0, max_timestep=10)
    x = torch.rand(2, 3, 4, 6) * 2 - 1
    y = torch.zeros(2, 4, 6, dtype=torch.long)
    y[:, :, 3:] = 1
    y[1] = 255
    y[1, 0, 0] = 1
    g = torch.Generator().manual_seed(0)
    xa, ya, k = aug(x, y, g)
    assert k == 2
    # replay the draws to check Eq. 2 and the masking by hand
    g = torch.Generator().manual_seed(0)
    torch.rand(2, generator=g)
    t = torch.randint(0, 10, (2,), generator=g)
    noise = torch.randn(x.shape, generator=g)
    u = torch.rand(2, generator=g)
    abar = sched.alphas_cumprod[t[0]].double()
    c = [0, 1][min(int(u[0] * 2), 1)]
    m = (y[0] == c).float()
    expect = (abar.sqrt() * x[0] + (1 - abar).sqrt() * noise[0]).float() * m
    assert torch.allclose(xa[0], expect, atol=1e-6)
    assert ((ya[0] == c) == (y[0] == c)).all() and (ya[0][y[0] != c] == 255).all()
    # sample 1 has a single labelled pixel: everything else is zero and ignored
    assert (xa[1][:, 1:, :] == 0).all() and (ya[1] == 255).sum() == 23
    # inputs untouched
    assert not torch.equal(xa, x)


def test_noisy_masked_validation():
    with pytest.raises(ValueError):
        NoisyMaskedAugment(DDPMSchedule(), prob=1.5)
    with pytest.raises(ValueError):
        NoisyMaskedAugment(DDPMSchedule(), max_timestep=0)


def test_checkpoint_optimizer_roundtrip(tmp_path):
    from diffdass.utils.checkpoint import save_checkpoint

    m = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    m(torch.randn(4, 3)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "c.safetensors", {"model": m}, opt, {"iteration": 7})
    m2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.SGD(m2.parameters(), lr=0.1, momentum=0.9)
    meta = load_checkpoint(tmp_path / "c.safetensors", {"model": m2}, opt2)
    assert meta["iteration"] == 7
    assert torch.equal(m.weight, m2.weight)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert torch.equal(s1[0]["momentum_buffer"], s2[0]["momentum_buffer"])
    assert math.isclose(opt2.param_groups[0]["momentum"], 0.9)
    with pytest.raises(ValueError, match="no weights for 'ema'"):
        load_checkpoint(tmp_path / "c.safetensors", {"ema": m2})


# ------------------------------------------------------------- optimiser choice
def _kill_at_9_and_resume(cfg, part):
    """Run ``cfg`` into ``part``, kill it at iteration 9 (last checkpoint: 8), resume it."""
    from diffdass.adaptation import seg_training

    orig = seg_training.SegTrainer.step

    def step_then_die(self, it, batches):
        if it == 9:
            raise KeyboardInterrupt
        return orig(self, it, batches)

    seg_training.SegTrainer.step = step_then_die
    try:
        with pytest.raises(KeyboardInterrupt):
            train_segmenter(cfg, part, progress=False)
    finally:
        seg_training.SegTrainer.step = orig
    assert not (part / "checkpoints" / "final.safetensors").exists()
    train_segmenter(cfg, part, progress=False)
    assert "resuming from iteration 8" in (part / "run.log").read_text()


def test_optim_name_adamw_builds_adamw_with_head_lr_mult():
    from diffdass.adaptation.config import OptimConfig
    from diffdass.adaptation.seg_training import SegTrainer
    from diffdass.models import build_segmenter

    model = build_segmenter("unet_small", 3)
    cfg = OptimConfig(name="adamw", lr=1e-3, head_lr_mult=4.0, weight_decay=0.01, momentum=0.5)
    tr = SegTrainer(model, cfg, 100, torch.device("cpu"), amp=False)
    opt = tr.optimizer
    assert type(opt) is torch.optim.AdamW
    backbone, head = opt.param_groups
    assert (backbone["name"], head["name"]) == ("backbone", "head")
    assert tuple(backbone["betas"]) == (0.9, 0.999) and backbone["weight_decay"] == 0.01
    assert backbone.get("decoupled_weight_decay", True)  # AdamW, not Adam + L2
    assert "momentum" not in backbone  # momentum is SGD's
    assert tr._set_lr(10) == pytest.approx(1e-3 * 0.9**0.9)
    assert backbone["lr"] == pytest.approx(1e-3 * 0.9**0.9)
    assert head["lr"] == pytest.approx(4e-3 * 0.9**0.9)
    # the default stays the paper's SGD
    sgd = SegTrainer(model, OptimConfig(), 100, torch.device("cpu"), amp=False).optimizer
    assert type(sgd) is torch.optim.SGD and sgd.param_groups[0]["momentum"] == 0.9
    assert sgd.param_groups[1]["lr"] == pytest.approx(2.5e-3)


def test_unknown_optimizer_is_rejected(tmp_path):
    from diffdass.adaptation.config import OptimConfig
    from diffdass.adaptation.seg_training import SegTrainer
    from diffdass.models import build_segmenter

    with pytest.raises(ConfigError, match="optim.name.*'adam'.*sgd, adamw"):
        _cfg(tmp_path, **{"optim.name": "adam"})
    with pytest.raises(ConfigError, match="optim.name"):
        model = build_segmenter("unet_small", 3)
        SegTrainer(model, OptimConfig(name="rmsprop"), 10, torch.device("cpu"))
    with pytest.raises(ConfigError, match="optim.warmup"):
        _cfg(tmp_path, **{"optim.warmup": -1})


def test_warmup_then_poly_schedule():
    from diffdass.adaptation.config import OptimConfig
    from diffdass.adaptation.seg_training import SegTrainer
    from diffdass.models import build_segmenter

    cfg = OptimConfig(name="adamw", lr=1e-3, poly_power=1.0, warmup=4)
    tr = SegTrainer(build_segmenter("unet_small", 3), cfg, 100, torch.device("cpu"))
    assert tr.lr_at(0) == pytest.approx(1e-3 * 0.25)
    assert tr.lr_at(3) == pytest.approx(1e-3 * 0.97)
    assert tr.lr_at(4) == pytest.approx(1e-3 * 0.96)
    assert tr.lr_at(100) == 0.0


def test_adamw_training_lowers_the_loss():
    from diffdass.adaptation.config import OptimConfig
    from diffdass.adaptation.seg_training import SegTrainer
    from diffdass.models.unet_seg import unet_small

    torch.manual_seed(0)
    # class 1: thin vertical bars (1-2 px) on class 0; class 2: a small square
    x = torch.full((4, 3, 32, 32), -0.5)
    y = torch.zeros(4, 32, 32, dtype=torch.long)
    for i in range(4):
        y[i, :, 3 + 7 * i : 4 + 7 * i + i % 2] = 1
        y[i, 20 + i : 25 + i, 5 : 10 + i] = 2
    x[:, 0][y == 1] = 0.8
    x[:, 2][y == 2] = 0.8
    x = x + 0.1 * torch.randn_like(x)
    model = unet_small(3, base_width=8)  # narrow: fast on 2 CPU cores
    cfg = OptimConfig(name="adamw", lr=1e-2, head_lr_mult=1.0, weight_decay=0.0)
    tr = SegTrainer(model, cfg, 20, torch.device("cpu"), amp=False)
    losses = [tr.step(it, [(x, y)])["loss"] for it in range(20)]
    assert losses[-1] < 0.5 * losses[0], losses
    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(1)
    assert (pred[y == 1] == 1).float().mean() > 0.8  # the thin bars are segmented


def test_resume_equals_uninterrupted_adamw(tmp_path):
    root = write_folder_dataset(tmp_path / "ds", n=10)
    over = {
        "model.arch": "unet_small",
        "optim.name": "adamw",
        "optim.lr": 1e-3,
        "optim.warmup": 3,
        "optim.weight_decay": 0.01,
    }
    train_segmenter(_cfg(root, **over), tmp_path / "full", progress=False)
    part = tmp_path / "part"
    _kill_at_9_and_resume(_cfg(root, **over), part)
    ck = load_tensors(part / "checkpoints" / "last.safetensors")
    assert any(k.endswith(".exp_avg_sq") for k in ck)  # AdamW state is checkpointed
    a = load_tensors(tmp_path / "full" / "checkpoints" / "final.safetensors")
    b = load_tensors(part / "checkpoints" / "final.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_run_of_an_older_version_resumes_when_new_keys_keep_their_default(tmp_path):
    """A config.yaml written before a key existed: the key at its default is no difference,
    a non-default value of it is."""
    import yaml

    root = write_folder_dataset(tmp_path / "ds", n=4)
    train_segmenter(_cfg(root, iterations=2), tmp_path / "r", progress=False)
    cfg_path = tmp_path / "r" / "config.yaml"
    old = yaml.safe_load(cfg_path.read_text())
    del old["optim"]["name"], old["optim"]["warmup"]  # as written by an older version
    cfg_path.write_text(yaml.safe_dump(old))
    train_segmenter(_cfg(root, iterations=2), tmp_path / "r", progress=False)
    cfg_path.write_text(yaml.safe_dump(old))
    with pytest.raises(ConfigError, match="optim.name"):
        train_segmenter(
            _cfg(root, iterations=2, **{"optim.name": "adamw"}), tmp_path / "r", progress=False
        )
