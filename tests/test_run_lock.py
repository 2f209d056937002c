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
        pass
    assert time.perf_counter() - t0 < 5
    assert not RunDir(folder, "train-seg").evidence()  # the lock file is no evidence of a run
