"""The prepared GPU check's dry run: the same steps on the CPU at tiny sizes, every step run,
at most 8 files written (what the GPU machine can send back)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable)
    p = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    files = sorted(f.name for f in (tmp_path / "out").rglob("*") if f.is_file())
    assert files == [
        "env.json",
        "estimates.json",
        "gpu_check.log",
        "gpu_check.md",
        "run.json",
        "speed.json",
    ]
    est = json.loads((tmp_path / "out" / "estimates.json").read_text())
    assert len(est) == 6  # the three GTA5 configs, fast and literal
    for name, doc in est.items():
        assert doc["measured"]["total_hours"] > 0, name
        stages = {s["stage"] for s in doc["measured"]["stages"]}
        assert {"PTL translation", "DDPM training", "data loading"} <= stages, name
    speed = json.loads((tmp_path / "out" / "speed.json").read_text())
    assert set(speed) == {"batch1", "batch8"}
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["status"] == "finished" and "ptl" in run["summary"]["miou"]
    assert "| gta5_cityscapes_deeplabv2_fast |" in (tmp_path / "out" / "gpu_check.md").read_text()


def test_the_gpu_check_refuses_to_run_without_a_gpu(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    if gpu_check.torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
