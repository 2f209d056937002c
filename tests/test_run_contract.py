"""The run-directory contract (docs/run_directories.md).

1. a failed attempt never locks its output folder; every stage is checked before work;
2. a changed iteration count is refused, never mislabelled;
3. every file a stage reads is checked up front (cached; ``on_error: skip`` covers it all);
4. plain progress lines without a terminal, one log per stage, interrupts logged.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from diffdass.adaptation import seg_training
from diffdass.adaptation.seg_training import TrainSegConfig, train_segmenter
from diffdass.cli.main import app
from diffdass.data.folder import DataError
from diffdass.data.scan import CACHE_NAME, scan_split
from diffdass.utils.checkpoint import read_meta, save_checkpoint
from diffdass.utils.config import ConfigError, load_config
from diffdass.utils.io import save_image
from diffdass.utils.progress import Progress

from conftest import write_folder_dataset

runner = CliRunner()


def _cfg(root, **kw) -> TrainSegConfig:
    over = {
        "source.root": str(root),
        "model.arch": "fcn8s_tiny",
        "iterations": 3,
        "batch_size": 2,
        "optim.lr": 0.01,
        "num_workers": 0,
        "checkpoint_every": 2,
        "noisy_masked.prob": 0.0,
        "device": "cpu",
    }
    over.update(kw)
    return load_config(TrainSegConfig, None, over)


def _train_seg_cli(root, out, *extra: str):
    args = ["train-seg", "-o", str(out), "--source-root", str(root), "--arch", "fcn8s_tiny"]
    args += ["--batch-size", "2", "--device", "cpu", "--quiet"]
    args += ["--set", "num_workers=0", "--set", "noisy_masked.prob=0", *extra]
    return runner.invoke(app, args)


def _count_steps(monkeypatch) -> dict:
    calls = {"n": 0}
    orig = seg_training.SegTrainer.step

    def counting(self, it, batches):
        calls["n"] += 1
        return orig(self, it, batches)

    monkeypatch.setattr(seg_training.SegTrainer, "step", counting)
    return calls


# ------------------------------------------------ 1. a failed attempt never locks the folder


def test_failed_train_seg_attempt_does_not_lock_the_folder(tmp_path):
    good = write_folder_dataset(tmp_path / "good", n=4)
    unlabeled = write_folder_dataset(tmp_path / "unlabeled", n=4, labels=False)
    out = tmp_path / "run"
    res = _train_seg_cli(unlabeled, out, "--iterations", "2")
    assert res.exit_code == 2 and "has no label" in res.output, res.output
    assert not (out / "config.yaml").exists()  # nothing recorded for a stage that never started
    res = _train_seg_cli(good, out, "--iterations", "2")  # the corrected command
    assert res.exit_code == 0, res.output
    assert str(good) in (out / "config.yaml").read_text()


def _tiny_ddpm(path, size=(32, 48)):
    from diffdass.models.unet import build_unet

    unet = build_unet("tiny", sample_size=size)
    meta = {"unet": "tiny", "sample_size": list(size), "num_timesteps": 1000, "iteration": 1}
    return save_checkpoint(path, {"ema": unet}, None, meta)


def test_failed_translate_attempt_does_not_lock_the_folder(tmp_path):
    src = write_folder_dataset(tmp_path / "src", n=2)
    ddpm = _tiny_ddpm(tmp_path / "ddpm.safetensors")
    out = tmp_path / "t"
    args = ["translate", "-o", str(out), "--source-root", str(src), "--ddpm", str(ddpm)]
    args += ["--guidance", "none", "--device", "cpu", "--quiet"]
    args += ["--set", "sampler.variance=fixed_small", "--set", "preview=0"]
    res = runner.invoke(app, [*args, "--n", "5000"])
    assert res.exit_code == 2 and "5000" in res.output and "timesteps" in res.output, res.output
    assert not (out / "config.yaml").exists()
    res = runner.invoke(app, [*args, "--n", "2"])
    assert res.exit_code == 0, res.output
    assert len(list((out / "dataset" / "train" / "images").glob("*.png"))) == 2


def test_pipeline_checks_every_stage_before_the_first_one(tmp_path, monkeypatch):
    from diffdass.pipeline import methods
    from diffdass.pipeline import stages as pipeline
    from test_pipeline import tiny_config

    out = tmp_path / "run"
    bad = tiny_config(out, **{"ptl.aug.crop": None})
    ran = []
    monkeypatch.setattr(methods, "train_segmenter", lambda *a, **k: ran.append(a) or 1 / 0)
    with pytest.raises(ConfigError, match="ptl.aug"):
        pipeline.run_pipeline(bad, progress=False, echo=lambda *_: None)
    assert ran == []  # source-only never started
    assert not (out / "config.yaml").exists()
    # the corrected command is accepted: it gets as far as the first stage
    with pytest.raises(ZeroDivisionError):
        pipeline.run_pipeline(tiny_config(out), progress=False, echo=lambda *_: None)
    assert len(ran) == 1


def test_pipeline_settings_of_a_stage_not_yet_started_may_change(tmp_path):
    from diffdass.pipeline.config import fill_config
    from diffdass.pipeline.stages import PIPELINE_ARTIFACTS, _unstarted_sections
    from diffdass.utils.run import RunDir
    from test_pipeline import tiny_config

    out = tmp_path / "run"
    cfg = fill_config(tiny_config(out))
    run = RunDir(out, "run", artifacts=PIPELINE_ARTIFACTS).open(cfg)
    run.start()
    run.close()
    (out / "source_only" / "checkpoints").mkdir(parents=True)
    (out / "source_only" / "checkpoints" / "last.safetensors").write_bytes(b"x")
    allow = _unstarted_sections(out)
    ptl_changed = fill_config(tiny_config(out, **{"ptl.iterations_per_domain": 5}))
    RunDir(out, "run", artifacts=PIPELINE_ARTIFACTS).check(ptl_changed, allow=allow)
    so_changed = fill_config(tiny_config(out, **{"source_only.optim.lr": 0.5}))
    with pytest.raises(ConfigError) as e:
        RunDir(out, "run", artifacts=PIPELINE_ARTIFACTS).check(so_changed, allow=allow)
    msg = str(e.value)
    assert "different config" in msg and "source_only.optim.lr: 0.01 -> 0.5" in msg
    assert "-o" in msg and "source_only/checkpoints/last.safetensors" in msg


# ----------------------------------------------------- 2. a changed iteration count


def test_train_seg_refuses_a_changed_iteration_count(tmp_path):
    root = write_folder_dataset(tmp_path / "ds", n=4)
    out = tmp_path / "r"
    res = _train_seg_cli(root, out, "--iterations", "6")
    assert res.exit_code == 0, res.output
    final = out / "checkpoints" / "final.safetensors"
    before = final.read_bytes()
    for n in ("4", "8"):
        res = _train_seg_cli(root, out, "--iterations", n)
        assert res.exit_code == 2, res.output
        text = " ".join(res.output.split())
        assert f"iterations: 6 -> {n}" in text and "poly" in text and "new output" in text, text
    assert final.read_bytes() == before
    assert read_meta(final)["iteration"] == 6
    assert json.loads((out / "metrics.json").read_text())["iterations"] == 6
    assert "iterations: 6" in (out / "config.yaml").read_text()


def test_ddpm_refuses_to_shrink_a_finished_run(tmp_path):
    from diffdass.adaptation.ddpm_training import TrainDDPMConfig, train_ddpm

    root = write_folder_dataset(tmp_path / "ds", n=4, size=(16, 32), labels=False)
    over = {
        "target.root": str(root),
        "unet": "tiny",
        "iterations": 3,
        "batch_size": 2,
        "sample_every": 1000,
        "num_workers": 0,
        "device": "cpu",
    }
    train_ddpm(load_config(TrainDDPMConfig, None, over), tmp_path / "d", progress=False)
    final = tmp_path / "d" / "checkpoints" / "final.safetensors"
    before = final.read_bytes()
    with pytest.raises(ConfigError, match="trained 3 iterations.*iterations=2"):
        train_ddpm(
            load_config(TrainDDPMConfig, None, over | {"iterations": 2}),
            tmp_path / "d",
            progress=False,
        )
    assert final.read_bytes() == before and read_meta(final)["iteration"] == 3


def test_ptl_refuses_a_changed_domain_schedule(tmp_path):
    from diffdass.adaptation.ptl import PTLConfig, run_ptl

    src = write_folder_dataset(tmp_path / "ds", n=2)
    base = {
        "source.root": str(src),
        "init": "g0.safetensors",
        "ddpm": "ddpm.safetensors",
        "aug.crop": [32, 48],
        "n_max": 4,
        "iterations_per_domain": 2,
    }
    out = tmp_path / "p"
    from diffdass.utils.run import RunDir

    run = RunDir(out, "ptl").open(load_config(PTLConfig, None, base))
    run.start()
    run.close()
    (out / "checkpoints" / "last.safetensors").write_bytes(b"x")  # a started run
    with pytest.raises(ConfigError, match="iterations_per_domain: 2 -> 3"):
        run_ptl(load_config(PTLConfig, None, base | {"iterations_per_domain": 3}), out)


# --------------------------------------------------------------- 3. the up-front scan


def _set_label_id(root, stem, value):
    path = root / "train" / "labels" / f"{stem}.png"
    lbl = np.array(Image.open(path))
    lbl[1, 1] = value
    save_image(path, lbl)
    return path


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("problem", ["label_id", "truncated"])
def test_bad_data_is_found_before_training(tmp_path, monkeypatch, problem):
    root = write_folder_dataset(tmp_path / "ds", n=6)
    if problem == "label_id":
        bad, cause = _set_label_id(root, "img004", 9), "outside the class set"
    else:
        bad, cause = root / "train" / "images" / "img004.png", "unreadable image"
        _truncate(bad)
    calls = _count_steps(monkeypatch)
    out = tmp_path / "run"
    with pytest.raises(DataError) as e:
        train_segmenter(_cfg(root, iterations=200), out, progress=False)
    assert str(bad) in str(e.value) and cause in str(e.value)
    assert calls["n"] == 0 and not out.exists()  # nothing trained, nothing written


def test_skip_covers_everything_the_scan_detects(tmp_path):
    root = write_folder_dataset(tmp_path / "ds", n=8)
    imgs = root / "train" / "images"
    (root / "train" / "labels" / "img001.png").unlink()  # an image without a label
    _set_label_id(root, "img002", 7)  # an unknown id
    _truncate(imgs / "img003.png")  # a truncated image
    save_image(root / "train" / "labels" / "img004.png", np.zeros((8, 8), np.uint8))  # size
    m = train_segmenter(_cfg(root, on_error="skip"), tmp_path / "run", progress=False)
    assert sorted(m["skipped_samples"]) == [str(imgs / f"img00{i}.png") for i in (1, 2, 3, 4)]
    log = (tmp_path / "run" / "run.log").read_text()
    assert "has no label" in log and "does not match image" in log


def test_scan_is_cached_by_path_size_and_mtime(tmp_path):
    root = write_folder_dataset(tmp_path / "ds", n=6)
    first = scan_split(root, "train")
    assert first.probed == 12 and (root / CACHE_NAME).is_file()
    import diffdass.data.scan as scan_mod

    scan_mod._memory.clear()  # a new process: only the cache file is left
    again = scan_split(root, "train")
    assert again.probed == 0 and len(again.samples) == 6
    path = _set_label_id(root, "img000", 200)
    os.utime(path, ns=(1, 1))  # a changed file is looked at again, whatever its mtime
    with pytest.raises(DataError, match="img000.png: label ids \\[200\\]"):
        scan_split(root, "train")


def test_pipeline_scans_every_split_before_the_first_stage(tmp_path, monkeypatch):
    from diffdass.data.benchmark import generate_benchmark
    from diffdass.pipeline import methods
    from diffdass.pipeline import stages as pipeline
    from test_pipeline import tiny_config

    data = tmp_path / "data"
    generate_benchmark(
        data, n_source=8, n_target_train=8, n_target_val=4, height=32, width=64, progress=False
    )
    bad = sorted((data / "target" / "val" / "images").glob("*.png"))[1]
    _truncate(bad)
    ran = []
    monkeypatch.setattr(methods, "train_segmenter", lambda *a, **k: ran.append(a))
    cfg = tiny_config(tmp_path / "run", **{"benchmark.root": str(data)})
    with pytest.raises(DataError, match=str(bad)):
        pipeline.run_pipeline(cfg, progress=False, echo=lambda *_: None)
    assert ran == [] and not (tmp_path / "run" / "config.yaml").exists()


# --------------------------------------------------------------------------- 4. logs


def test_progress_without_a_terminal_writes_plain_lines(tmp_path, capsys):
    root = write_folder_dataset(tmp_path / "ds", n=4)
    train_segmenter(_cfg(root, iterations=20), tmp_path / "run", progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("train-seg: iteration")]
    assert 5 <= len(lines) <= 11, err
    assert "iteration 2/20" in lines[0] and "loss" in lines[0] and "lr" in lines[0]
    assert "img/s" in lines[0] and "ETA" in lines[0]
    assert "train-seg: iteration 20/20" in (tmp_path / "run" / "run.log").read_text()


def test_progress_lines_every_fraction_and_every_interval():
    s = io.StringIO()
    p = Progress(1000, 0, "x", stream=s, every_seconds=1e9)
    for _ in range(1000):
        p.update(1, loss=1.0)
    assert len(s.getvalue().splitlines()) == 10
    s = io.StringIO()
    p = Progress(1000, 0, "x", stream=s, every_seconds=0.0)
    for _ in range(5):
        p.update(1)
    assert len(s.getvalue().splitlines()) == 5


def test_each_stage_logs_to_its_own_file(tmp_path):
    root = write_folder_dataset(tmp_path / "ds", n=4)
    train_segmenter(_cfg(root, iterations=2), tmp_path / "a", progress=False)
    train_segmenter(_cfg(root, iterations=2), tmp_path / "b", progress=False)
    a = (tmp_path / "a" / "run.log").read_text()
    assert str(tmp_path / "b" / "checkpoints") not in a
    assert a.count("done:") == 1


def test_an_interrupt_is_logged_with_the_position_and_how_to_resume(tmp_path, monkeypatch):
    root = write_folder_dataset(tmp_path / "ds", n=4)
    orig = seg_training.SegTrainer.step

    def step_then_interrupt(self, it, batches):
        if it == 5:
            raise KeyboardInterrupt
        return orig(self, it, batches)

    monkeypatch.setattr(seg_training.SegTrainer, "step", step_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_segmenter(_cfg(root, iterations=8, checkpoint_every=4), tmp_path / "r", False)
    log = (tmp_path / "r" / "run.log").read_text()
    assert "interrupted at iteration 5 of 8" in log
    assert "re-run the same command" in log and "checkpoint at iteration 4" in log


def test_ptl_settings_the_calibration_does_not_read_may_change_after_it(tmp_path):
    """After the calibration ran (and before PTL), PTL's training settings may still change;
    its guidance and depth settings may not (the calibration read them)."""
    from diffdass.pipeline.stages import _unstarted_sections

    out = tmp_path / "run"
    (out / "calibration").mkdir(parents=True)
    (out / "calibration" / "calibration.json").write_text("{}")
    allow = _unstarted_sections(out)
    assert allow("ptl.iterations_per_domain: 40 -> 80")
    assert allow("ptl.optim.lr: 0.0003 -> 0.001")
    assert not allow("ptl.guidance.arrangement: 'alternate' -> 'random'")
    assert not allow("ptl.n_max: 300 -> 600")
    assert not allow("calibration.images: 24 -> 32")
    (out / "ptl" / "checkpoints").mkdir(parents=True)
    (out / "ptl" / "checkpoints" / "last.safetensors").write_bytes(b"x")
    assert not allow("ptl.iterations_per_domain: 40 -> 80")  # PTL has started


def test_the_sweep_settings_may_change_after_the_judge_but_not_after_the_calibration(tmp_path):
    """A finished judge does not freeze the sweep (strengths, images, tolerance): only its own
    settings (seed offset, iterations) are tied to it; once the calibration ran, all are."""
    from diffdass.pipeline.stages import _unstarted_sections

    out = tmp_path / "run"
    (out / "judge" / "checkpoints").mkdir(parents=True)
    (out / "judge" / "checkpoints" / "final.safetensors").write_bytes(b"x")
    allow = _unstarted_sections(out)
    assert allow("calibration.strengths: [0.01] -> [0.02]")
    assert allow("calibration.tolerance: 0.2 -> 0.1")
    assert allow("ptl.guidance.input: 'x_t' -> 'x0'")
    assert not allow("calibration.judge_iterations: None -> 100")
    assert not allow("calibration.judge_seed_offset: 1000 -> 7")
    (out / "calibration").mkdir()
    (out / "calibration" / "calibration.json").write_text("{}")
    assert not allow("calibration.strengths: [0.01] -> [0.02]")
