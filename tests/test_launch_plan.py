"""`diffdass launch-plan`: the pipeline's long stages as stand-alone commands, then one
`diffdass run` that finds them finished and gives the numbers of a plain `diffdass run`."""

from __future__ import annotations

import shlex

import pytest
from typer.testing import CliRunner

from diffdass.cli.main import app
from diffdass.pipeline.config import fill_config
from diffdass.pipeline.launch import launch_stages, stage_processes
from diffdass.pipeline.stages import run_pipeline
from diffdass.utils.config import dump_yaml
from diffdass.utils.io import read_json
from test_pipeline import tiny_config

runner = CliRunner()


def _invoke(args: list[str]) -> str:
    r = runner.invoke(app, args)
    assert r.exit_code == 0, (args, r.output)
    return r.output


def _commands(output: str) -> list[list[str]]:
    """The plan's command lines as argument lists of `diffdass` (the launcher stripped: one
    process here; several processes give the same results, tests/test_distributed.py)."""
    out = []
    for line in output.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        words = shlex.split(line.split("   #")[0])
        if words[0] == "accelerate":
            words = words[words.index("diffdass.cli.main") + 1 :]
        else:
            assert words[0] == "diffdass", line
            words = words[1:]
        out.append(words)
    return out


@pytest.mark.slow
def test_the_plan_reproduces_a_plain_run(tmp_path):
    over = {"ptl.guidance.scale": "auto", "calibration.strengths": [0.1], "calibration.images": 2}
    over |= {"calibration.target_images": 2, "calibration.judge_iterations": 2}
    plain = run_pipeline(tiny_config(tmp_path / "plain", **over), False, lambda *_: None)

    cfg = tiny_config(tmp_path / "staged", **over)
    config = tmp_path / "staged.yaml"
    config.write_text(dump_yaml(cfg))
    plan = tmp_path / "plan"
    first = _invoke(["launch-plan", str(config), "-d", str(plan), "--processes", "4"])
    assert "make-benchmark" in first and "calibrate-guidance" in first
    assert "# ptl: its config needs the guidance calibration" in first
    cmds = _commands(first)
    assert [c[0] for c in cmds] == [
        "make-benchmark",
        "train-seg",  # g_0
        "train-seg",  # the oracle
        "train-ddpm",
        "train-seg",  # the judge
        "calibrate-guidance",
        "run",
    ]
    for c in cmds[:-1]:
        _invoke(c)
    second = _invoke(["launch-plan", str(config), "-d", str(plan), "--processes", "4"])
    (ptl_cmd,) = [c for c in _commands(second) if c[0] == "ptl"]
    _invoke(ptl_cmd)
    stages = ["source_only", "oracle", "ddpm", "judge", "ptl"]
    ckpt = {s: tmp_path / "staged" / s / "checkpoints" / "final.safetensors" for s in stages}
    before = {s: p.stat().st_mtime_ns for s, p in ckpt.items()}
    _invoke(_commands(second)[-1])  # diffdass run CONFIG
    assert {s: p.stat().st_mtime_ns for s, p in ckpt.items()} == before  # none retrained
    staged = read_json(tmp_path / "staged" / "summary.json")
    assert staged["miou"] == plain["miou"]


def test_stage_processes_keep_the_global_batch(tmp_path):
    cfg = fill_config(tiny_config(tmp_path / "run", **{"ddpm.batch_size": 4}))
    procs = {s.name: stage_processes(s, 8) for s in launch_stages(cfg) if s.config is not None}
    # segmenter batch 2: 2 processes; DDPM batch 4: 4; PTL shares translation batches: 8
    assert procs["source_only"] == 2 and procs["ddpm"] == 4
    assert procs.get("ptl", 8) == 8
