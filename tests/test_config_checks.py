"""Every config value is checked where the config is read, with the key in the message."""

from __future__ import annotations

import math
import re

import pytest

from diffdass.adaptation.ddpm_training import TrainDDPMConfig, preflight
from diffdass.adaptation.ptl import PTLConfig
from diffdass.adaptation.seg_training import TrainSegConfig
from diffdass.adaptation.translation import GuidanceConfig, TranslateConfig
from diffdass.utils.config import ConfigError, validate_tree


def _ddpm(**kw) -> TrainDDPMConfig:
    cfg = TrainDDPMConfig(unet="tiny")
    cfg.target.root = "/data/x"
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({"checkpoint_every": 0}, "checkpoint_every"),
        ({"sample_every": 0}, "sample_every"),
        ({"n_samples": 0}, "n_samples"),
        ({"crop": [15, 30]}, "divisible by 4"),
        ({"resize": [32, 64], "crop": [64, 128]}, "larger than resize"),
        ({"unet": "huge"}, "unknown preset"),
    ],
)
def test_ddpm_settings(kw, key):
    with pytest.raises(ConfigError, match=key):
        validate_tree(_ddpm(**kw))


def test_ddpm_crop_larger_than_the_images(tiny_dataset):
    cfg = _ddpm(crop=[64, 128])
    cfg.target.root = str(tiny_dataset)  # 32x48 images
    with pytest.raises(ConfigError, match=r"larger than the images .*32x48"):
        preflight(cfg)


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({"translate_batch_size": 0}, "translate_batch_size"),
        ({"eval_every": -1}, "eval_every"),
        ({"translate_size": [30]}, "translate_size"),
    ],
)
def test_ptl_settings(kw, key):
    cfg = PTLConfig(**kw)
    with pytest.raises(ConfigError, match=key):
        validate_tree(cfg)


@pytest.mark.parametrize("scale", [math.nan, math.inf, -1.0, "nan"])
def test_guidance_scale_must_be_finite(scale):
    with pytest.raises(ConfigError, match="guidance.scale"):
        GuidanceConfig(scale=scale).validate()
    with pytest.raises(ConfigError, match="chunk_size"):
        GuidanceConfig(chunk_size=0).validate()


def test_seg_and_translate_settings():
    seg = TrainSegConfig(checkpoint_every=0)
    seg.source.root = "/x"
    with pytest.raises(ConfigError, match="checkpoint_every"):
        validate_tree(seg)
    tr = TranslateConfig(ddpm="d.safetensors", segmenter="s", batch_size=0)
    tr.source.root = "/x"
    with pytest.raises(ConfigError, match="batch_size"):
        validate_tree(tr)


def test_ptl_translation_size_must_suit_the_ddpm():
    from diffdass.adaptation.ptl import _check_translation_size

    cfg = PTLConfig(translate_size=[30, 66])
    with pytest.raises(ConfigError, match=r"translate_size: .*30x66.*divisible by 4"):
        _check_translation_size(cfg, {"unet": "tiny"})
    cfg = PTLConfig()
    cfg.aug.crop = [36, 64]
    with pytest.raises(ConfigError, match=r"aug.crop: .*divisible by 32"):
        _check_translation_size(cfg, {"unet": "ddpm256"})
    cfg.aug.crop = [64, 64]
    _check_translation_size(cfg, {"unet": "ddpm256"})


def test_ptl_crop_larger_than_the_source_images(tiny_dataset, tmp_path):
    from diffdass.adaptation.ptl import preflight as ptl_preflight

    cfg = PTLConfig(init="g.safetensors", ddpm="d.safetensors")
    cfg.source.root = str(tiny_dataset)  # 32x48 images
    cfg.aug.crop = [64, 64]
    with pytest.raises(ConfigError, match=r"aug.crop \[64, 64\] is larger than the source"):
        ptl_preflight(cfg, checkpoints=False)


@pytest.mark.parametrize(
    ("key", "value", "shared"),
    [
        ("ptl.seed", 5, "`seed`"),
        ("ptl.init", "/elsewhere/g0.safetensors", "source-only stage"),
        ("ptl.device", "cuda:3", "`device`"),
        ("ddpm.target.root", "/data/other_target", "`target`"),
        ("source_only.seed", 7, "`seed`"),
        ("ptl.class_sets", ["16"], "evaluation.class_sets"),
        ("source.root", "/data/my_source", "built-in benchmark"),
    ],
)
def test_keys_the_pipeline_owns_are_refused_not_replaced(tmp_path, key, value, shared):
    from diffdass.pipeline.config import fill_config
    from test_pipeline import tiny_config

    with pytest.raises(
        ConfigError,
        match=rf"{re.escape(key.rsplit('.root', 1)[0])} is set by the pipeline from .*{re.escape(shared)}",
    ):
        fill_config(tiny_config(tmp_path / "run", **{key: value}))


def test_a_filled_config_fills_to_itself(tmp_path):
    """A run's own resolved config (what config.yaml holds) is accepted as it is."""
    import copy

    from diffdass.pipeline.config import fill_config
    from test_pipeline import tiny_config

    once = fill_config(tiny_config(tmp_path / "run", **{"seed": 3}))
    assert once.ptl.seed == 3 and once.ptl.init.endswith(
        "source_only/checkpoints/final.safetensors"
    )
    assert fill_config(copy.deepcopy(once)) == once
