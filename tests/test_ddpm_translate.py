"""Target DDPM training (loss decreases, exact resume) and the translate command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffdass.adaptation.ddpm_training import TrainDDPMConfig, load_ddpm, train_ddpm
from diffdass.adaptation.translation import TranslateConfig, translate_dataset
from diffdass.utils.config import ConfigError, load_config
from diffdass.utils.io import load_tensors


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from diffdass.data.benchmark import generate_benchmark

    root = tmp_path_factory.mktemp("bench")
    generate_benchmark(
        root, n_source=6, n_target_train=12, n_target_val=2, height=32, width=64, progress=False
    )
    return root


def _cfg(bench, **kw) -> TrainDDPMConfig:
    over = {
        "target.root": str(bench / "target"),
        "unet": "tiny",
        "iterations": 8,
        "batch_size": 4,
        "lr": 1e-3,
        "sample_every": 1000,
        "sample_steps": 2,
        "n_samples": 2,
        "checkpoint_every": 4,
        "num_workers": 0,
        "device": "cpu",
    }
    over.update(kw)
    return load_config(TrainDDPMConfig, None, over)


def test_ddpm_loss_decreases_and_samples(bench, tmp_path):
    m = train_ddpm(
        _cfg(bench, iterations=40, sample_every=40, crop=[16, 32]), tmp_path / "d", progress=False
    )
    assert m["loss_last"] < 0.7 * m["loss_first"], m
    assert m["sample_size"] == [32, 64]  # patches for training, full size for translation
    grid = np.asarray(Image.open(tmp_path / "d" / "samples" / "samples_0000040.png"))
    assert grid.shape == (32, 128, 3)
    unet, meta = load_ddpm(tmp_path / "d" / "checkpoints" / "final.safetensors")
    assert meta["unet"] == "tiny"
    with torch.no_grad():
        assert unet(torch.zeros(1, 3, 32, 64), torch.tensor([5])).sample.shape == (1, 3, 32, 64)


def test_ddpm_resume_equals_uninterrupted(bench, tmp_path, monkeypatch):
    from diffdass.adaptation import ddpm_training as training

    train_ddpm(_cfg(bench), tmp_path / "full", progress=False)
    orig = training.DDPMSchedule.training_loss
    calls = {"n": 0}

    def dying(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return orig(self, *a, **k)

    monkeypatch.setattr(training.DDPMSchedule, "training_loss", dying)
    with pytest.raises(KeyboardInterrupt):
        train_ddpm(_cfg(bench), tmp_path / "part", progress=False)
    monkeypatch.setattr(training.DDPMSchedule, "training_loss", orig)
    train_ddpm(_cfg(bench), tmp_path / "part", progress=False)
    a = load_tensors(tmp_path / "full" / "checkpoints" / "last.safetensors")
    b = load_tensors(tmp_path / "part" / "checkpoints" / "last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_ddpm_snapshots_and_extension(bench, tmp_path):
    """snapshot_every keeps the EMA weights; extending a finished run continues it exactly."""
    out = tmp_path / "d"
    train_ddpm(_cfg(bench, iterations=4, snapshot_every=2), out, progress=False)
    train_ddpm(_cfg(bench, iterations=8, snapshot_every=2), out, progress=False)  # extend
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("snapshot_*")) == [
        f"snapshot_{i:07d}.safetensors" for i in (2, 4, 6, 8)
    ]
    unet4, meta4 = load_ddpm(ckpts / "snapshot_0000004.safetensors")
    assert meta4["iteration"] == 4
    final = load_tensors(ckpts / "final.safetensors")
    snap = load_tensors(ckpts / "snapshot_0000008.safetensors")
    ema_keys = [k for k in final if k.startswith("ema")]
    assert ema_keys and all(torch.equal(final[k], snap[k]) for k in ema_keys)
    # the extended run equals an uninterrupted 8-iteration run (constant lr after warm-up)
    train_ddpm(_cfg(bench, iterations=8), tmp_path / "straight", progress=False)
    straight = load_tensors(tmp_path / "straight" / "checkpoints" / "final.safetensors")
    assert all(torch.equal(final[k], straight[k]) for k in ema_keys)
    with pytest.raises(ConfigError, match="snapshot_every"):
        _cfg(bench, snapshot_every=-1).validate()


def test_ddpm_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="target.root"):
        load_config(TrainDDPMConfig, None, {})
    with pytest.raises(FileNotFoundError):
        load_ddpm(tmp_path / "nope.safetensors")


@pytest.fixture(scope="module")
def models(bench, tmp_path_factory):
    from diffdass.adaptation.seg_training import TrainSegConfig, train_segmenter

    out = tmp_path_factory.mktemp("models")
    train_ddpm(_cfg(bench, iterations=4), out / "ddpm", progress=False)
    seg = load_config(
        TrainSegConfig,
        None,
        {
            "source.root": str(bench / "source"),
            "model.arch": "fcn8s_tiny",
            "iterations": 2,
            "num_workers": 0,
        },
    )
    train_segmenter(seg, out / "seg", progress=False)
    return (
        out / "ddpm" / "checkpoints" / "final.safetensors",
        out / "seg" / "checkpoints" / "final.safetensors",
    )


def test_translate_command_writes_folder_dataset(bench, models, tmp_path):
    from diffdass.data.folder import FolderDataset
    from diffdass.evaluation.consistency import label_consistency

    ddpm, seg = models
    cfg = load_config(
        TranslateConfig,
        None,
        {
            "source.root": str(bench / "source"),
            "ddpm": str(ddpm),
            "segmenter": str(seg),
            "n": 6,
            "respace_steps": 3,
            "batch_size": 4,
            "preview": 2,
            "device": "cpu",
            "guidance.kind": "sgg",
        },
    )
    m = translate_dataset(cfg, tmp_path / "t", progress=False)
    assert m["translated"] == 6 and m["reverse_steps"] == 3
    ds = FolderDataset(tmp_path / "t" / "dataset", "train")
    src = FolderDataset(bench / "source", "train")
    assert len(ds) == 6
    for i in range(6):  # the source labels travel with the translated images
        assert torch.equal(ds[i]["label"], src[i]["label"])
    sheet = np.asarray(Image.open(tmp_path / "t" / "previews" / "sheet.png"))
    assert sheet.shape == (2 * (32 + 2), 4 * (64 + 2), 3)
    score = label_consistency(seg, tmp_path / "t" / "dataset", "train", "cpu")
    assert 0 <= score["miou"]["19"] <= 100
    # re-running reuses the translated images
    m2 = translate_dataset(
        cfg.__class__(**{**cfg.__dict__, "preview": 0}), tmp_path / "t", progress=False
    )
    assert m2["translated"] == 0 and m2["reused"] == 6
    assert json.loads((tmp_path / "t" / "metrics.json").read_text())["reused"] == 6


def test_translate_guidance_off_matches_baseline(bench, models, tmp_path):
    ddpm, seg = models
    base = {
        "source.root": str(bench / "source"),
        "ddpm": str(ddpm),
        "n": 5,
        "limit": 2,
        "preview": 0,
        "device": "cpu",
    }
    a = translate_dataset(
        load_config(TranslateConfig, None, base | {"guidance.kind": "none"}),
        tmp_path / "a",
        progress=False,
    )
    b = translate_dataset(
        load_config(
            TranslateConfig,
            None,
            base | {"guidance.kind": "sgg", "guidance.scale": 0.0, "segmenter": str(seg)},
        ),
        tmp_path / "b",
        progress=False,
    )
    for f in sorted((tmp_path / "a" / "dataset" / "train" / "images").iterdir()):
        g = tmp_path / "b" / "dataset" / "train" / "images" / f.name
        assert f.read_bytes() == g.read_bytes()
    assert a["images"] == b["images"] == 2


def test_translate_requires_segmenter_for_guidance(bench, models):
    ddpm, _ = models
    with pytest.raises(ConfigError, match="segmenter"):
        load_config(
            TranslateConfig, None, {"source.root": str(bench / "source"), "ddpm": str(ddpm)}
        )


def test_readme_python_api_example_runs(models):
    """The README's Python example, on this module's tiny DDPM and segmenter checkpoints:
    it translates the batch to the input's shape and the guidance moves it."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    ddpm, seg = models
    code = code.replace("runs/benchmark/ddpm/checkpoints/final.safetensors", str(ddpm))
    code = code.replace("runs/benchmark/source_only/checkpoints/final.safetensors", str(seg))
    code = code.replace("(2, 3, 64, 128)", "(2, 3, 32, 64)").replace("(2, 64, 128)", "(2, 32, 64)")
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    out = scope["out"]
    assert out.shape == (2, 3, 32, 64) and out.abs().max() <= 1.0
    # the same call without guidance gives another image: the example's guidance acts
    g = scope["GuidanceConfig"](kind="none")
    plain = scope["translate_batch"](
        scope["x"],
        scope["y"],
        300,
        scope["unet"],
        scope["DDPMSchedule"](),
        None,
        g,
        torch.Generator().manual_seed(0),
        respace_steps=30,
        moments=scope["ddpm_moments"](scope["meta"]),
    )
    assert (plain - out).abs().max() > 1e-4
