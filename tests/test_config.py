"""Typed YAML configs and atomic I/O."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest

from diffdass.utils.config import ConfigError, load_config, parse_set, to_dict
from diffdass.utils.io import atomic_write_text, write_json


@dataclass
class Inner:
    lr: float = 0.1
    sizes: list[int] | None = None


@dataclass
class Outer:
    name: str = "x"
    steps: int = 10
    flag: bool = False
    inner: Inner = field(default_factory=Inner)

    def validate(self):
        if self.steps < 0:
            raise ConfigError("steps must be >= 0")


def test_precedence_defaults_yaml_flags(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("steps: 20\ninner:\n  lr: 0.5\n  sizes: [2, 3]\n")
    cfg = load_config(Outer, p, {"inner.lr": 0.25, "name": None})
    assert (
        cfg.steps == 20 and cfg.inner.lr == 0.25 and cfg.inner.sizes == [2, 3] and cfg.name == "x"
    )
    assert to_dict(cfg) == {
        "name": "x",
        "steps": 20,
        "flag": False,
        "inner": {"lr": 0.25, "sizes": [2, 3]},
    }


def test_unknown_key_lists_valid_ones(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("inner:\n  lrr: 1\n")
    with pytest.raises(ConfigError, match=r"inner.lrr.*valid keys under 'inner.': lr, sizes"):
        load_config(Outer, p)


def test_type_errors_name_the_key():
    with pytest.raises(ConfigError, match="steps"):
        load_config(Outer, None, {"steps": "many"})
    with pytest.raises(ConfigError, match="flag"):
        load_config(Outer, None, {"flag": "maybe"})
    with pytest.raises(ConfigError, match="steps must be"):
        load_config(Outer, None, {"steps": -1})


def test_set_strings_are_yaml_scalars():
    sets = parse_set(["a.b=1e-3", "c=true", "d=[1, 2]", "e=text"])
    assert {k: v.value for k, v in sets.items()} == {
        "a.b": 1e-3,
        "c": True,
        "d": [1, 2],
        "e": "text",
    }
    with pytest.raises(ConfigError):
        parse_set(["novalue"])
    cfg = load_config(Outer, None, parse_set(["flag=yes", "inner.sizes=[4, 5]"]))
    assert cfg.flag is True and cfg.inner.sizes == [4, 5]


def test_missing_or_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "nope.yaml")
    (tmp_path / "b.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Outer, tmp_path / "b.yaml")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "m.json"
    write_json(p, {"a": 1})
    with pytest.raises(TypeError):
        write_json(p, {"a": object()})
    assert p.read_text().strip().startswith("{") and '"a": 1' in p.read_text()
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []
    atomic_write_text(p, "x")
    assert p.read_text() == "x"


def test_shipped_configs_load_and_validate():
    from pathlib import Path

    from diffdass.pipeline.config import DEFAULT_CONFIG, PipelineConfig, fill_config

    files = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.yaml"))
    fast = [f for f in files if f.name.endswith("_fast.yaml")]
    paper = [f for f in files if "_cityscapes_" in f.name and f not in fast]
    assert len(paper) == len(fast) == 6  # {GTA5, SYNTHIA} x {DeepLab-V2, FCN-8s, SegFormer}
    assert [f.name for f in files if f not in paper + fast] == [
        "benchmark_study.yaml",
        "cicld_benchmark.yaml",
        "cicld_gta5.yaml",
        "cicld_study.yaml",
        "cicld_synthia.yaml",
        "custom_small.yaml",
    ]
    for f in [*files, DEFAULT_CONFIG]:
        cfg = fill_config(load_config(PipelineConfig, f, validate=False))
        if f in paper:
            # the paper's settings
            assert cfg.ptl.n_max == 600 and cfg.ptl.iterations_per_domain == 300
            assert cfg.ptl.batch_size == 2 and cfg.ptl.optim.lr == 2.5e-4
            assert cfg.ptl.lr_schedule == "constant"  # the paper: no decay across domains
            # the strength in resolution-free units, calibrated without target labels
            assert cfg.ptl.guidance.is_auto and cfg.ptl.guidance.reduction == "sum"
            assert cfg.source_only.iterations == 20000 and cfg.source_only.optim.lr == 2.5e-4
            assert cfg.ddpm.lr == 2e-5 and cfg.ddpm.batch_size == 4
        if f in fast:
            # the paper's recipe on a cheaper PTL schedule (docs/performance.md)
            assert cfg.ptl.domains == "spread" and cfg.ptl.n_max == 600
            assert cfg.ptl.reverse_steps and cfg.ptl.translation_reuse > 1
            assert cfg.ptl.guidance.lcg_mode == "single_pass"
            assert cfg.ptl.batch_size == 2 and cfg.ptl.optim.lr == 2.5e-4
            assert cfg.source_only.iterations == 20000


def test_a_config_inherits_its_base(tmp_path):
    """`base:` loads another file first and merges this file's keys over it, section by
    section; a cycle or a missing base is a one-line error."""
    from diffdass.pipeline.config import PipelineConfig

    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "root.yaml").write_text(
        "seed: 3\nsource_only: {iterations: 50, batch_size: 4}\ndacs: {iterations: 9}\n"
    )
    (tmp_path / "mid.yaml").write_text("base: common/root.yaml\nsource_only: {iterations: 70}\n")
    (tmp_path / "leaf.yaml").write_text("base: mid.yaml\nout: runs/leaf\ndacs: null\n")
    cfg = load_config(PipelineConfig, tmp_path / "leaf.yaml", validate=False)
    assert (cfg.seed, cfg.out) == (3, "runs/leaf")
    assert (cfg.source_only.iterations, cfg.source_only.batch_size) == (70, 4)
    assert cfg.dacs is None  # a section set to null in the child is removed
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(PipelineConfig, tmp_path / "a.yaml", validate=False)
    # a list of bases: merged in order, then this file
    (tmp_path / "overlay.yaml").write_text("source_only: {batch_size: 8}\nseed: 5\n")
    (tmp_path / "two.yaml").write_text("base: [mid.yaml, overlay.yaml]\nseed: 6\n")
    cfg = load_config(PipelineConfig, tmp_path / "two.yaml", validate=False)
    assert (cfg.seed, cfg.source_only.iterations, cfg.source_only.batch_size) == (6, 70, 8)
    (tmp_path / "bad.yaml").write_text("base: [mid.yaml, 3]\n")
    with pytest.raises(ConfigError, match="or a list of them"):
        load_config(PipelineConfig, tmp_path / "bad.yaml", validate=False)
    (tmp_path / "c.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml: config file not found"):
        load_config(PipelineConfig, tmp_path / "c.yaml", validate=False)


def test_the_paper_configs_are_their_base_plus_a_few_lines():
    from pathlib import Path

    configs = Path(__file__).resolve().parents[1] / "configs"
    literal = sorted(set(configs.glob("*_cityscapes_*.yaml")) - set(configs.glob("*_fast.yaml")))
    assert len(literal) == 6
    for f in literal:
        settings = [ln for ln in f.read_text().splitlines() if ln and not ln.startswith("#")]
        assert settings[0] == "base: base/peng2023.yaml", f.name
        assert len(settings) <= 16, f.name
        # each has a fast version: the literal config with the fast schedule overlaid
        fast = f.with_name(f.stem + "_fast.yaml")
        settings = [ln for ln in fast.read_text().splitlines() if ln and not ln.startswith("#")]
        assert settings[0] == f"base: [{f.name}, base/fast.yaml]", fast.name
        assert len(settings) <= 2, fast.name
