"""The library pieces the study scripts of ``studies/`` run, whose numbers the docs quote: they
must compute what the library computes (CICLD's inference) and show what they claim (panels,
the strength-study tables)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tests.conftest import write_folder_dataset
from tests.test_cicld import K, tiny_net

from diffdass.data.labels import colorize, default_palette
from diffdass.models.cicld import CICLDSegmenter

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_cicld_inference_matches_the_segmenter_and_the_label_condition_acts():
    from diffdass.evaluation import cicld_probe as ci

    net = tiny_net()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = torch.randint(0, K, (2, 32, 32))
    with torch.no_grad():
        for cond in ("self", "none"):
            ref = CICLDSegmenter(net, 200, 2, cond, seed=0).eval()(x)
            assert torch.equal(ci.predict(net, x, None, 200, 2, cond), ref)
        none = ci.predict(net, x, y, 200, 2, "none")
        label = ci.predict(net, x, y, 200, 2, "label")
        other = ci.predict(net, x, (y + 1) % K, 200, 2, "label")
    assert not torch.allclose(none, label)  # the ground truth really conditions the pass
    assert not torch.allclose(label, other)  # and it is the given label that does


def test_cicld_inference_probe_reports_the_condition_effect(tmp_path):
    from diffdass.evaluation import cicld_probe as ci

    write_folder_dataset(tmp_path / "d", "val", n=3, size=(32, 32), num_classes=K)
    from diffdass.data.scan import scan_split

    ds = scan_split(tmp_path / "d", "val", "required").dataset()
    probe = ci.probe_condition(tiny_net(), ds, 2, 200, 2)  # concatenated label embedding
    assert probe["max_logit_change"] > 0
    assert 0.0 <= probe["argmax_changed_pct"] <= 100.0
    assert "mid_norm_o" not in probe  # no Eq. 5 middle block to look into
    probe = ci.probe_condition(tiny_net(condition_mode="eq5"), ds, 2, 200, 2)
    assert probe["max_logit_change"] > 0
    assert probe["mid_norm_o"] > 0 and probe["mid_norm_c"] > 0 and probe["mid_norm_delta"] > 0
    assert ci.probe_condition(tiny_net(condition=False), ds, 2, 200, 2) == {}


def test_prediction_panel_layout_and_label_colours(tmp_path):
    from diffdass.evaluation import panel as pp

    write_folder_dataset(tmp_path / "d", "val", n=3, size=(16, 24), num_classes=K)
    ev = tmp_path / "eval" / "predictions"
    ev.mkdir(parents=True)
    stems = sorted(p.stem for p in (tmp_path / "d" / "val" / "images").glob("*.png"))
    for s in stems[:2]:  # the column has two of the three images
        Image.new("RGB", (24, 16), (255, 0, 0)).save(ev / f"{s}.png")
    panel = pp.build_panel(tmp_path / "d", "val", [("m", ev.parent)], images=4, scale=2)
    assert panel.size == (3 * 24 * 2, 2 * 16 * 2 + 14)  # 3 columns, the 2 shared stems
    arr = np.asarray(panel)[14:]
    label = np.asarray(Image.open(tmp_path / "d" / "val" / "labels" / f"{stems[0]}.png"))
    want = colorize(label, default_palette(19))
    assert np.array_equal(arr[0:32:2, 48:96:2], want)  # row 0, column "label"
    assert (arr[:32, 96:] == [255, 0, 0]).all()  # the model's column
    with pytest.raises(FileNotFoundError, match="predictions"):
        pp.build_panel(tmp_path / "d", "val", [("x", tmp_path / "missing")], 1, 1)


def test_strength_study_tables(tmp_path):
    """The strength-study tables read an ablate folder: the calibration's won-back share, the
    sweep (strength 0 = row (b), the chosen strength = the full row) and paired differences."""
    import json

    from diffdass.pipeline import strength_study as st

    cal = {
        "chosen_strength": 0.08,
        "source_consistency": {"judge_consistency": 30.0, "oracle_consistency": 20.0},
        "points": [
            {"strength": 0.0, "distance": 400.0, "judge_consistency": 10.0,
             "oracle_consistency": 12.0, "rms_change_vs_unguided": None},
            {"strength": 0.08, "distance": 440.0, "judge_consistency": 20.0,
             "oracle_consistency": 16.0, "rms_change_vs_unguided": 0.07},
        ],
    }  # fmt: skip
    res = {
        "0": {st.FULL: 21.0, st.ROW_A: 20.0, st.ROW_B: 19.5, st.ADABN: 20.5},
        "1": {st.FULL: 22.0, st.ROW_A: 20.0, st.ROW_B: 21.0, st.ADABN: 21.5},
    }
    (tmp_path / "ablation.json").write_text(json.dumps(res))
    for seed in ("0", "1"):
        d = tmp_path / f"seed{seed}" / "base" / "calibration"
        d.mkdir(parents=True)
        (d / "calibration.json").write_text(json.dumps(cal))
    results, cals = st.load(tmp_path)
    t = st.calibration_table(cals)
    assert (
        "| 0 | 0.08 | 30.0 / 10.0 / 20.0 | 50% | 20.0 / 12.0 / 16.0 | 50% | 400 -> 440 (+10%)" in t
    )
    sweep = st.sweep_table(results, cals)
    assert "| 0 | 20.2 +- 1.1 (19.5, 21.0) |" in sweep  # row (b)
    assert "| 0.08 | 21.5 +- 0.7 (21.0, 22.0) |" in sweep  # the full method
    bn = {
        "0": {"source-only g_0": 20.0, st.FULL: 22.0},
        "1": {"source-only g_0": 21.0, st.FULL: 22.5},
    }
    on_top = st.on_top_table(results, bn)
    assert (
        "| AdaBN (g_0 with target BN statistics) |  | 20.5 +- 0.7 (20.0, 21.0) | 1.8 +- 0.4"
        in on_top
    )
    rows = st.rows_table(results)
    assert (
        "| table2: (a) baseline phi^N, then training | 20.0 +- 0.0 | 20.0, 20.0 | 1.5 +- 0.7"
        in rows
    )
