"""One writer per run folder: a second process gets a one-line error naming the holder, the
lock of a killed process is taken over, and the first process's run is untouched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from diffdass.adaptation.seg_training import TrainSegConfig
from diffdass.cli.main import app
from diffdass.utils.run import RunDir, RunLocked

HOLD = """
import sys, time
from diffdass.adaptation.seg_training import TrainSegConfig
from diffdass.utils.run import RunDir
run = RunDir(sys.argv[1], "train-seg")
run.open(TrainSegConfig())
print("locked", flush=True)
time.sleep(120)
"""


def _holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_is_refused_and_a_killed_holder_is_taken_over(tiny_dataset, tmp_path):
    folder = tmp_path / "run"
    proc = _holder(folder)
    try:
        with pytest.raises(RunLocked, match=rf"in use by pid {proc.pid} .*train-seg, since"):
            RunDir(folder, "train-seg").open(TrainSegConfig())
        # the command line says so in one line, exit code 2, and writes nothing
        before = sorted(p.name for p in folder.iterdir())
        args = ["train-seg", "--source-root", str(tiny_dataset), "--iterations", "2"]
        res = CliRunner().invoke(app, [*args, "-o", str(folder), "--set", "device=cpu"])
        assert res.exit_code == 2, res.output
        assert f"in use by pid {proc.pid}" in res.output
        assert len(res.output.strip().splitlines()) == 1
        assert sorted(p.name for p in folder.iterdir()) == before
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # the killed process's lock is gone with it: the folder can be taken over
    run = RunDir(folder, "train-seg").open(TrainSegConfig())
    assert f"pid {os.getpid()}" in (folder / ".lock").read_text()
    run.close()
    # released on close: the same process (or another) may open it again
    with RunDir(folder, "train-seg").open(TrainSegConfig()):
        pass


def test_the_lock_is_released_when_the_stage_ends(tmp_path):
    folder = tmp_path / "run"
    with RunDir(folder, "train-seg").open(TrainSegConfig()):
        with pytest.raises(RunLocked):
            RunDir(folder, "train-seg").open(TrainSegConfig())
    t0 = time.perf_counter()
    with RunDir(folder, "train-seg").open(TrainSegConfig()):
        assert (folder / ".lock").is_file()  # held, naming its holder
    assert time.perf_counter() - t0 < 5
    assert not (folder / ".lock").exists()  # the holder removes it when it ends
    assert not RunDir(folder, "train-seg").evidence()  # the lock file is no evidence of a run


def test_sigterm_stops_a_stage_like_ctrl_c_and_it_resumes(tiny_dataset, tmp_path):
    """SIGTERM (a scheduler's warning) logs where the stage stopped and how it resumes."""
    out = tmp_path / "seg"
    cmd = [sys.executable, "-m", "diffdass.cli.main", "train-seg", "--source-root"]
    cmd += [str(tiny_dataset), "--iterations", "100000", "-o", str(out), "--quiet"]
    cmd += ["--set", "device=cpu", "--set", "checkpoint_every=5", "--set", "num_workers=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while not (out / "checkpoints" / "last.safetensors").is_file():
            assert time.time() < deadline and proc.poll() is None, "no checkpoint written"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (out / "run.log").read_text()
    assert "interrupted at iteration" in log and "re-run the same command" in log
    assert proc.returncode != 0


def test_a_folder_of_another_command_is_named(tiny_dataset, tmp_path):
    from diffdass.adaptation.ddpm_training import TrainDDPMConfig

    folder = tmp_path / "d"
    with RunDir(folder, "train-ddpm").open(TrainDDPMConfig()) as run:
        run.start()
    with pytest.raises(Exception, match=r"holds a train-ddpm run; train-seg would mix"):
        RunDir(folder, "train-seg").open(TrainSegConfig())
