"""``diffdass estimate``: the cost model's FLOP counts (against hand-computed values), the
stages it covers, the N-process column, the JSON, and the measured-rate path.

Nothing is timed here (speed is measured by the command, never by tests): the measurement is
replaced by fixed seconds per unit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from diffdass.cli.main import app
from diffdass.pipeline import cost
from diffdass.pipeline import estimate as est
from diffdass.pipeline.config import load_pipeline_config
from diffdass.utils.config import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

FAKE = {
    "source_only": 0.5,
    "ddpm": 0.25,
    "ptl_translation": 2.0,
    "ptl_finetune": 0.4,
    "evaluation": 0.01,
}


def _fake_measure(cfg, steps, device):
    return dict(FAKE)


class _Out:
    def __init__(self, sample):
        self.sample = sample


class _PointUNet(nn.Module):
    """A 1x1 convolution 3 -> 3 with the UNet's call signature: 18 FLOP per pixel."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)

    def forward(self, x, t):
        return _Out(self.conv(x))


def _point_models(monkeypatch):
    """Hand-countable networks: the segmenter a 1x1 convolution 3 -> 19 (114 FLOP per pixel
    forward), the UNet a 1x1 convolution 3 -> 3 (18 FLOP per pixel)."""
    import diffdass.models.factory as factory
    import diffdass.models.unet as unet

    monkeypatch.setattr(factory, "build_segmenter", lambda *a, **k: nn.Conv2d(3, 19, 1, bias=False))
    monkeypatch.setattr(unet, "build_unet", lambda *a, **k: _PointUNet())


def _stages(sets=None, processes=1):
    cfg = load_pipeline_config(None, sets)
    return {c.stage: c for c in cost.stage_costs(cfg, processes)}, cfg


def test_counts_match_hand_computed_values(monkeypatch):
    """The built-in benchmark config with 1x1-convolution networks. Per pixel: segmenter
    forward S = 2*3*19 = 114, a training image 2S (forward + weight gradient; the input needs
    none), a guidance pass 2S (forward + input gradient); UNet forward U = 2*3*3 = 18, a DDPM
    training image 2U."""
    _point_models(monkeypatch)
    rows, cfg = _stages()
    S, U = 114, 18
    px = 64 * 128  # training crop, translation size and the 64x128 benchmark images
    assert rows["source-only training"].flops == 600 * 16 * 2 * S * px
    assert rows["oracle training"].flops == 600 * 16 * 2 * S * px
    assert rows["judge training"].flops == 300 * 16 * 2 * S * px  # calibration.judge_iterations
    assert rows["DDPM training"].flops == 600 * 8 * 2 * U * 32 * 64  # ddpm.crop 32x64
    # PTL: 4 domains (n = 75..300), 6 respaced calls each: 3 LCG steps of 12 classes-present
    # passes and 3 GSG steps of 1 pass; 40 translated images per domain (40 x 8 / reuse 8)
    per_image = 6 * U * px + (3 * 12 + 3) * 2 * S * px
    assert rows["PTL translation"].units == 4 * 40
    assert rows["PTL translation"].flops == pytest.approx(4 * 40 * per_image)
    # fine-tuning: 4 x 40 iterations of batch 8, L_ada + L_src
    assert rows["PTL fine-tuning"].flops == 4 * 40 * 8 * 2 * (2 * S * px)
    # calibration: (7 strengths + unguided) x 24 images at n = 300, each judged once
    assert rows["guidance calibration"].flops == 8 * 24 * (per_image + S * px)
    # stage metrics: 4 depths x (2 unguided + 1 guided) + 50 DDPM sampling steps, 16 images
    unguided = 6 * U * px
    assert rows["stage metrics"].flops == 16 * (4 * (2 * unguided + per_image) + 50 * U * px)
    # evaluation: g_0, AdaBN, oracle, g_N and 3 intermediate PTL passes over 100 images
    assert rows["evaluation"].flops == 7 * 100 * S * px
    assert rows["AdaBN statistics"].flops == 2 * 400 * S * px  # g_0 and g_N, 400 images


def test_guidance_modes_count_their_passes(monkeypatch):
    """LCG in one pass, GSG only, no guidance, guidance through the UNet."""
    _point_models(monkeypatch)
    S, U, px = 114, 18, 64 * 128
    base = rows = None
    for sets, passes, extra_unet in [
        (["ptl.guidance.lcg_mode=single_pass"], 3 + 3, 0),
        (["ptl.guidance.kind=gsg"], 6, 0),
        (["ptl.guidance.kind=lcg"], 6 * 12, 0),
        (["ptl.guidance.kind=none"], 0, 0),
        (["ptl.guidance.input=x0_unet"], 3 * 12 + 3, 2 * 6),
        (["estimate.classes_present=5"], 3 * 5 + 3, 0),
    ]:
        rows, _ = _stages(sets)
        per_image = (6 + extra_unet) * U * px + passes * 2 * S * px
        assert rows["PTL translation"].flops == pytest.approx(4 * 40 * per_image), sets
    base, _ = _stages(["ptl.domains=every", "ptl.n_max=10", "ptl.reverse_steps=6"])
    # every domain n = 1..10 runs n calls: 55 calls, ceil(n/2) LCG steps
    lcg = sum(math.ceil(n / 2) for n in range(1, 11))
    gsg = 55 - lcg
    per_domain = 40
    expect = per_domain * (55 * U * px + (12 * lcg + gsg) * 2 * S * px)
    assert base["PTL translation"].flops == pytest.approx(expect)


def test_the_stages_of_a_run():
    rows, _ = _stages()
    assert list(rows) == [
        "source-only training",
        "oracle training",
        "DDPM training",
        "judge training",
        "guidance calibration",
        "PTL translation",
        "PTL fine-tuning",
        "stage metrics",
        "evaluation",
        "AdaBN statistics",
    ]
    rows, _ = _stages(["ptl=null", "oracle=null"])
    assert list(rows) == ["source-only training", "evaluation", "AdaBN statistics"]
    rows, _ = _stages(["ptl.guidance.scale=0.1", "stage_metrics.enabled=false"])
    assert "judge training" not in rows and "guidance calibration" not in rows
    assert "stage metrics" not in rows


def test_the_n_process_column_divides_only_what_runs_on_n_processes():
    rows, _ = _stages(processes=4)
    for stage in ("source-only training", "DDPM training", "PTL fine-tuning"):
        assert rows[stage].share == 1 / 4, stage  # batches 16, 8, 8: divisible by 4
    # 40 images per domain in batches of 16: 3 batches, one per process at most
    assert rows["PTL translation"].share == pytest.approx(1 / 3)
    assert rows["evaluation"].share == 25 / 100
    for stage in ("guidance calibration", "stage metrics", "AdaBN statistics"):
        assert rows[stage].share == 1.0, stage  # `run` computes them on one process
    rows, _ = _stages(processes=3)  # 16 and 8 are not divisible by 3: they run on 2 ...
    for stage in ("source-only training", "DDPM training"):
        assert rows[stage].share == 1 / 2, stage
    # ... while PTL runs on 3 (translation) and its main process fine-tunes alone
    assert rows["PTL fine-tuning"].share == 1.0
    assert "main process" in rows["PTL fine-tuning"].note


def test_gpu_estimate_of_the_paper_configs_needs_no_data(tmp_path):
    """The paper configs point at /data/...: the sizes come from their `estimate` section.
    The fast GTA5 -> Cityscapes config fits in a day of one H100; the literal one does not."""
    out = tmp_path / "fast.json"
    fast = CONFIGS / "gta5_cityscapes_deeplabv2_fast.yaml"
    r = CliRunner().invoke(app, ["estimate", str(fast), "--gpu", "h100", "--json", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert 1 < doc["total_hours"] <= 24
    stages = {s["stage"]: s for s in doc["stages"]}
    assert stages["PTL translation"]["units"] == 60 * 300  # 60 domains x 600 / reuse 2
    assert doc["total_hours"] == pytest.approx(sum(s["hours"] for s in doc["stages"]))
    assert doc["total_flops"] == pytest.approx(doc["total_hours"] * 3600 * 0.3 * 989e12)
    assert "NVIDIA H100" in r.output and "| **total** |" in r.output
    literal = est.run_estimate(
        CONFIGS / "gta5_cityscapes_deeplabv2.yaml", gpu="h100", echo=lambda *_: None
    )
    # 600 domains x 600 images x n reverse steps: two orders of magnitude more
    assert literal["total_hours"] > 50 * doc["total_hours"]


def test_missing_sizes_name_the_keys(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"base: {CONFIGS / 'gta5_cityscapes_deeplabv2.yaml'}\n"
        "estimate: {image_size: null, val_images: null, target_images: null}\n"
        "source: {root: /nonexistent/a}\ntarget: {root: /nonexistent/b}\n"
        "val: {root: /nonexistent/b, split: val}\n"
    )
    with pytest.raises(ConfigError, match="estimate.image_size, estimate.val_images"):
        est.run_estimate(cfg, gpu="h100", echo=lambda *_: None)
    r = CliRunner().invoke(
        app,
        ["estimate", str(cfg), "--gpu", "a100", "--image-size", "512", "1024", "--val-images",
         "10", "--target-images", "20"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "NVIDIA A100" in r.output


def test_measured_rates_time_every_stage(tmp_path, monkeypatch):
    """Without --gpu: each timed unit's FLOPs over its seconds is this machine's rate for the
    stages of its kind; data loading is a row of its own."""
    monkeypatch.setattr(est, "measure", _fake_measure)
    out = tmp_path / "estimate.json"
    res = CliRunner().invoke(
        app, ["estimate", "--processes", "3", "--steps", "2", "--json", str(out), "--device", "cpu"]
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["seconds_per_unit"] == FAKE
    cfg = load_pipeline_config(None, None)
    flops = est.unit_flops(cfg)
    stages = {s["stage"]: s for s in doc["stages"]}
    # source-only: its own timed unit, so hours = iterations x seconds per iteration
    assert stages["source-only training"]["hours"] == pytest.approx(600 * 0.5 / 3600)
    assert stages["DDPM training"]["hours"] == pytest.approx(600 * 0.25 / 3600)
    assert stages["PTL fine-tuning"]["hours"] == pytest.approx(160 * 0.4 / 3600)
    # the judge runs at the source-only rate, half as many iterations
    assert stages["judge training"]["hours"] == pytest.approx(300 * 0.5 / 3600)
    rate = flops["ptl_translation"] / FAKE["ptl_translation"]
    assert stages["PTL translation"]["tflop_per_s"] == pytest.approx(rate / 1e12)
    assert stages["data loading"]["units"] == est.images_read(cfg) > 0
    assert doc["total_hours"] == pytest.approx(sum(s["hours"] for s in doc["stages"]))
    assert "source_only.batch_size=16 is not divisible by 3: that stage runs on 2" in res.output
    assert doc["meta"]["steps"] == 2 and doc["meta"]["processes"] == 3


def test_bad_arguments_are_errors(monkeypatch):
    monkeypatch.setattr(est, "measure", _fake_measure)
    res = CliRunner().invoke(app, ["estimate", "--processes", "0"])
    assert res.exit_code == 2 and "--processes" in res.output
    res = CliRunner().invoke(app, ["estimate", "--gpu", "tpu"])
    assert res.exit_code == 2 and "h100" in res.output


def test_timed_translation_calls_are_even():
    """As many LCG as GSG steps are timed (an odd count over-weights LCG)."""
    assert [est.timed_calls(None, s) for s in (1, 2, 3, 4)] == [2, 2, 4, 4]


def test_block_labels_have_the_requested_classes():
    y = est.block_labels(2, (32, 64), 19, present=12)
    assert y.shape == (2, 32, 64)
    assert len(y[0].unique()) == 12 and int(y.max()) < 19


def test_on_meta_falls_back_to_building_on_the_cpu():
    def needs_values():
        m = nn.Linear(2, 2)
        torch.linspace(0, 1, 3)[1].item()  # what drop-path schedules do
        return m

    m = cost._on_meta(needs_values)
    assert m.weight.device.type == "meta"
