"""``diffdass estimate``: the table's structure and the projection's arithmetic.

Nothing is timed here (speed is measured by the command, never by tests): the measurement is
replaced by fixed seconds per unit.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from diffdass.cli.main import app
from diffdass.pipeline import estimate as est

FAKE = {
    "source_only": 0.5,
    "ddpm": 0.25,
    "ptl_translation": 2.0,
    "ptl_finetune": 0.4,
    "evaluation": 0.01,
}


def _fake_measure(cfg, steps, device):
    return dict(FAKE)


def _rows(sets=None, processes=1):
    cfg = est.load_pipeline_config(None, sets)
    return {r.stage: r for r in est.project(cfg, FAKE, processes)}, cfg


def test_rows_of_the_benchmark_config():
    rows, cfg = _rows()
    assert list(rows) == [
        "source-only training",
        "oracle training",
        "DDPM training",
        "PTL translation",
        "PTL fine-tuning",
        "evaluation",
    ]
    so = rows["source-only training"]
    assert so.units == cfg.source_only.iterations == 600
    assert so.hours == pytest.approx(600 * 0.5 / 3600)
    # PTL: 4 domains, 40 iterations x batch 8 / reuse 8 = 40 images = 3 batches of 16, 6 calls
    assert rows["PTL translation"].units == 3 * 4 * 6
    assert rows["PTL fine-tuning"].units == 4 * 40
    # evaluation: g_0, AdaBN, oracle, g_N and 3 intermediate PTL evaluations, 100 images
    assert est.evaluations(cfg) == 7
    assert rows["evaluation"].units == 700


def test_projected_hours_scale_with_iterations():
    rows, _ = _rows()
    rows2, _ = _rows(
        [
            "source_only.iterations=1200",
            "ddpm.iterations=1200",
            "ptl.iterations_per_domain=80",
        ]
    )
    for stage in ("source-only training", "oracle training", "DDPM training", "PTL fine-tuning"):
        assert rows2[stage].hours == pytest.approx(2 * rows[stage].hours), stage
    # twice the fine-tuning samples per domain: 80 images to translate, 5 batches of 16 (was 3)
    assert rows2["PTL translation"].units == 5 * 4 * 6
    assert rows2["PTL translation"].hours == pytest.approx(5 / 3 * rows["PTL translation"].hours)


def test_n_process_projection():
    rows, _ = _rows(processes=4)
    for stage in ("source-only training", "DDPM training", "PTL fine-tuning"):
        assert rows[stage].hours_n == pytest.approx(rows[stage].hours / 4), stage
    # 3 translation batches per domain on 4 processes: one batch time per domain
    assert rows["PTL translation"].units_per_process == 1 * 4 * 6
    assert rows["evaluation"].units_per_process == 25 * 7
    rows1, _ = _rows(processes=1)
    for r in rows1.values():
        assert r.hours_n == pytest.approx(r.hours)


def test_cli_table_and_json(tmp_path, monkeypatch):
    monkeypatch.setattr(est, "measure", _fake_measure)
    out = tmp_path / "estimate.json"
    res = CliRunner().invoke(
        app, ["estimate", "--processes", "3", "--steps", "2", "--json", str(out), "--device", "cpu"]
    )
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    header = next(line for line in lines if line.startswith("| stage"))
    assert "hours, 1 process" in header and "hours, 3 processes (projection)" in header
    table = [line for line in lines if line.startswith("| ") and "---" not in line]
    assert len(table) == 1 + 6 + 1  # header, stages, total
    assert table[-1].startswith("| **total**")
    assert "linear scaling" in res.output
    # batch 16 / 8 / 8 are not divisible by 3: the run would be refused, and the table says so
    assert "source_only.batch_size=16 is not divisible by 3" in res.output
    doc = json.loads(out.read_text())
    assert doc["seconds_per_unit"] == FAKE
    assert doc["meta"]["processes"] == 3 and doc["meta"]["steps"] == 2
    assert doc["total_hours"] == pytest.approx(sum(r["hours"] for r in doc["rows"]))
    assert doc["total_hours_n"] < doc["total_hours"]


def test_without_ptl_only_segmenter_rows(monkeypatch):
    rows, _ = _rows(["ptl=null", "oracle=null"])
    assert list(rows) == ["source-only training", "evaluation"]


def test_bad_arguments_are_errors(monkeypatch):
    monkeypatch.setattr(est, "measure", _fake_measure)
    res = CliRunner().invoke(app, ["estimate", "--processes", "0"])
    assert res.exit_code == 2 and "--processes" in res.output


def test_block_labels_have_the_requested_classes():
    y = est.block_labels(2, (32, 64), 19, present=12)
    assert y.shape == (2, 32, 64)
    assert len(y[0].unique()) == 12 and int(y.max()) < 19
