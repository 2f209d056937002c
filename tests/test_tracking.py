"""Training curves: the TensorBoard event files every training stage writes (read back with
TensorBoard's own EventAccumulator), the switch that turns them off, resuming, and W&B on request."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from typer.testing import CliRunner

from diffdass.cli.main import app
from diffdass.training.tracking import LoggingConfig, Tracker, flat_scalars
from diffdass.utils.config import ConfigError
from test_training_loop import Stop, toy_loop

from conftest import event_files, read_images, read_scalars

runner = CliRunner()


def test_tensorboard_reads_the_scalars_and_images_and_a_resume_drops_the_orphans(tmp_path):
    with Tracker(tmp_path, purge_step=1) as tr:
        tr.scalars({"loss": 1.5, "lr": 0.25, "phase": "a"}, 1)
        tr.scalars({"loss": 1.0}, 2)
        tr.scalars({"loss": 0.75}, 3)  # an interrupted process logged past its checkpoint
        tr.image("grid", np.zeros((4, 6, 3), np.uint8), 2)
        tr.image("gray", np.zeros((5, 7), np.uint8), 2)
    tb = tmp_path / "tensorboard"
    assert read_images(tb) == {"grid": [(2, (4, 6))], "gray": [(2, (5, 7))]}
    with Tracker(tmp_path, purge_step=3) as tr:  # resumed at step 3
        tr.scalars({"loss": 0.5}, 3)
    assert len(event_files(tb)) == 2
    assert read_scalars(tb) == {"loss": [(1, 1.5), (2, 1.0), (3, 0.5)], "lr": [(1, 0.25)]}
    with Tracker(tmp_path) as tr, pytest.raises(ValueError, match="uint8"):
        tr.image("grid", np.zeros((4, 6, 3), np.float32), 4)


def test_only_numeric_stats_are_logged_nested_ones_by_path():
    stats = {"phase": "adv", "loss": 0.5, "n": 3, "parts": [1.0, 2.0], "ok": True,
             "none": None, "val_miou": {"19": 40.0, "16": np.float32(42.0)}}  # fmt: skip
    assert flat_scalars(stats) == {"loss": 0.5, "n": 3.0, "val_miou/19": 40.0, "val_miou/16": 42.0}


def test_the_loop_logs_every_step_and_a_resumed_loop_continues_the_curve(tmp_path):
    toy_loop(tmp_path / "a", total=5)
    curves = read_scalars(tmp_path / "a" / "tensorboard")
    assert set(curves) == {"loss", "lr"}  # the string stat "tag" is left out
    assert [s for s, _ in curves["loss"]] == [1, 2, 3, 4, 5]
    assert curves["lr"] == [(s, pytest.approx(0.1)) for s in range(1, 6)]
    with pytest.raises(Stop):
        toy_loop(tmp_path / "b", total=5, stop_at=4)  # logged steps 1-4, checkpoint at 3
    toy_loop(tmp_path / "b", total=5)
    resumed = read_scalars(tmp_path / "b" / "tensorboard")
    assert [s for s, _ in resumed["loss"]] == [1, 2, 3, 4, 5]  # step 4 once, the resumed one
    assert resumed["loss"] == curves["loss"]  # bit for bit, as the loop resumes
    toy_loop(tmp_path / "b", total=5)  # finished: nothing to log, no new file
    assert len(event_files(tmp_path / "b" / "tensorboard")) == 2


def test_logging_off_writes_no_event_file(tmp_path):
    toy_loop(tmp_path / "off", total=2, tracking=LoggingConfig(tensorboard=False))
    assert not (tmp_path / "off" / "tensorboard").exists()


def _train_seg(ds, out, *extra):
    args = ["train-seg", "-o", str(out), "--source-root", str(ds), "--arch", "fcn8s_tiny"]
    args += ["--iterations", "2", "--batch-size", "2", "--quiet", "--set", "num_workers=0"]
    return runner.invoke(app, [*args, *extra])


def test_train_seg_logs_its_curves_unless_switched_off(tiny_dataset, tmp_path):
    res = _train_seg(tiny_dataset, tmp_path / "on")
    assert res.exit_code == 0, res.output
    curves = read_scalars(tmp_path / "on" / "tensorboard")
    assert {"loss", "lr", "augmented"} <= set(curves)
    assert [s for s, _ in curves["loss"]] == [1, 2]
    res = _train_seg(tiny_dataset, tmp_path / "off", "--set", "logging.tensorboard=false")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "off" / "checkpoints" / "final.safetensors").is_file()
    assert not (tmp_path / "off" / "tensorboard").exists()


def test_wandb_asked_for_but_not_installed_is_a_one_line_error(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ConfigError, match="needs the wandb package"):
        LoggingConfig(wandb=True).validate()
    res = _train_seg(tiny_dataset, tmp_path / "w", "--set", "logging.wandb=true")
    assert res.exit_code == 2
    assert "needs the wandb package" in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_wandb_gets_the_same_scalars_and_keeps_its_run_id_on_resume(tmp_path, monkeypatch):
    calls = []

    class Run:
        def log(self, values, step):
            calls.append(("log", step, dict(values)))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls.append(("init", kw)) or Run()
    fake.Image = lambda img: ("image", img.shape)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    settings = LoggingConfig(tensorboard=False, wandb=True)
    with Tracker(tmp_path, settings, name="toy") as tr:
        tr.scalars({"loss": 0.5, "phase": "a"}, 3)
        tr.image("samples", np.zeros((2, 2, 3), np.uint8), 3)
    with Tracker(tmp_path, settings, name="toy"):
        pass
    inits = [c[1] for c in calls if c[0] == "init"]
    assert len(inits) == 2 and inits[0]["id"] == inits[1]["id"] and inits[0]["resume"] == "allow"
    assert ("log", 3, {"loss": 0.5}) in calls
    assert ("log", 3, {"samples": ("image", (2, 2, 3))}) in calls
    assert calls.count(("finish",)) == 2
    assert not (tmp_path / "tensorboard").exists()
