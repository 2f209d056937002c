"""Hardening: one-line CLI errors, outputs that never overwrite each other,
``--set`` typing, skipped samples with loader workers, and smaller fixes."""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile

import pytest
import torch
from typer.testing import CliRunner

from diffdass.adaptation.seg_training import TrainSegConfig, pretrained_arg, train_segmenter
from diffdass.cli.main import app
from diffdass.models.factory import build_segmenter
from diffdass.utils.checkpoint import save_checkpoint
from diffdass.utils.config import ConfigError, build_config, load_config, parse_set
from diffdass.utils.run import RunDir

from conftest import write_folder_dataset

runner = CliRunner()


def _plain(text: str) -> str:
    """Output without ANSI colours or rich's box drawing, whitespace collapsed."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def _one_line_error(res, *fragments: str) -> None:
    """Exit code 2, a single ``error:`` line holding every fragment, no exception escaped."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert isinstance(res.exception, SystemExit), res.exception
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def _segmenter_checkpoint(path, num_classes: int = 4):
    """A random fcn8s_tiny checkpoint as train-seg writes it (arch metadata included)."""
    model = build_segmenter("fcn8s_tiny", num_classes)
    meta = {"arch": "fcn8s_tiny", "num_classes": num_classes}
    return save_checkpoint(path, {"model": model}, None, meta)


def _evaluate(ckpt, root, *extra: str):
    args = ["evaluate", "--checkpoint", str(ckpt), "--root", str(root)]
    args += ["--split", "train", "--class-sets", "all", "--quiet", *extra]
    return runner.invoke(app, args)


# --------------------------------------------------------------- 1. one-line errors


@pytest.mark.parametrize("content", [b"", b"this is not a safetensors file"], ids=["empty", "junk"])
def test_unreadable_checkpoint_is_a_one_line_error(tiny_dataset, tmp_path, content):
    ckpt = tmp_path / "bad.safetensors"
    ckpt.write_bytes(content)
    res = _evaluate(ckpt, tiny_dataset)
    _one_line_error(res, str(ckpt), "not a readable safetensors file")


def test_translate_with_an_unreadable_ddpm_checkpoint_is_a_one_line_error(tiny_dataset, tmp_path):
    ddpm = tmp_path / "ddpm.safetensors"
    ddpm.write_bytes(b"\x00" * 3)
    res = runner.invoke(
        app,
        ["translate", "-o", str(tmp_path / "tr"), "--source-root", str(tiny_dataset)]
        + ["--ddpm", str(ddpm), "--guidance", "none", "--quiet"],
    )
    _one_line_error(res, str(ddpm), "not a readable safetensors file")


def test_read_only_output_folder_is_a_one_line_error(tiny_dataset, tmp_path, monkeypatch):
    ckpt = _segmenter_checkpoint(tmp_path / "g.safetensors")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    mkstemp = tempfile.mkstemp

    def refusing_mkstemp(*args, dir=None, **kw):  # what the OS does (root ignores the mode)
        if dir is not None and str(dir).startswith(str(ro)):
            raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir, ".x.tmp"))
        return mkstemp(*args, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", refusing_mkstemp)
    try:
        res = _evaluate(ckpt, tiny_dataset, "--out", str(ro / "ev"))
    finally:
        ro.chmod(0o755)
    _one_line_error(res, str(ro / "ev"), "Permission denied")
    assert list(ro.iterdir()) == []  # nothing left behind
    assert ".tmp" not in res.output  # the output is named, not the temporary file


def test_make_benchmark_into_a_foreign_folder_is_a_one_line_error(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    res = runner.invoke(app, ["make-benchmark", str(tmp_path / "mine")])
    _one_line_error(res, str(tmp_path / "mine"), "not a generated benchmark")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no lock file left behind


def test_an_option_and_a_set_of_the_same_key_are_refused(tiny_dataset, tmp_path):
    """`--iterations 2 --set iterations=abc` used to exit 0 (the flag silently won)."""
    args = ["train-seg", "--source-root", str(tiny_dataset), "-o", str(tmp_path / "r")]
    res = runner.invoke(app, [*args, "--iterations", "2", "--set", "iterations=abc"])
    _one_line_error(res, "iterations", "given both as an option and with --set")
    assert not (tmp_path / "r").exists()


def test_config_errors_show_values_not_internal_objects(tiny_dataset, tmp_path):
    args = ["train-seg", "--source-root", str(tiny_dataset), "-o", str(tmp_path / "r")]
    res = runner.invoke(app, [*args, "--set", "optim.lrr=3"])
    _one_line_error(res, "unknown config key(s) optim.lrr", "valid keys under 'optim.'")
    assert "SetValue" not in res.output
    res = runner.invoke(app, [*args, "--set", "iterations=abc"])
    _one_line_error(res, "iterations: cannot use 'abc'")
    assert "SetValue" not in res.output and "<class" not in res.output


def test_debug_option_shows_the_traceback(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert "--debug" in _plain(runner.invoke(app, ["--help"]).output)
    res = runner.invoke(app, ["--debug", "make-benchmark", str(tmp_path / "mine")])
    assert isinstance(res.exception, FileExistsError)
    res = runner.invoke(
        app, ["make-benchmark", str(tmp_path / "mine")], env={"DIFFDASS_DEBUG": "1"}
    )
    assert isinstance(res.exception, FileExistsError)


def test_os_errors_read_path_and_cause():
    from diffdass.cli.common import error_message

    exc = PermissionError(errno.EACCES, "Permission denied", "/data/out")
    assert error_message(exc) == "/data/out: Permission denied"
    assert error_message(FileNotFoundError("/x: checkpoint not found")) == (
        "/x: checkpoint not found"
    )


# ------------------------------------------- 2. evaluate never replaces a run's metrics


def _train_seg_run(root, out):
    """A train-seg run directory as RunDir leaves it (config, log, metrics)."""
    cfg = load_config(TrainSegConfig, None, {"source.root": str(root), "model.arch": "fcn8s_tiny"})
    run = RunDir(out, "train-seg").open(cfg)
    run.write_metrics({"stage": "train-seg", "iterations": 1})
    return cfg, run


def test_evaluate_refuses_a_training_run_directory(tiny_dataset, tmp_path):
    _, run = _train_seg_run(tiny_dataset, tmp_path / "r")
    before = run.metrics_path.read_text()
    ckpt = _segmenter_checkpoint(run.ckpt_dir / "final.safetensors")
    res = _evaluate(ckpt, tiny_dataset, "--out", str(run.path))
    _one_line_error(res, str(run.path), "run folder of another command")
    assert run.metrics_path.read_text() == before
    assert not (run.path / "predictions").exists()
    # nor a folder inside a run (its checkpoints/, samples/, or a new sub-folder)
    for inside in (run.ckpt_dir, run.path / "eval"):
        res = _evaluate(ckpt, tiny_dataset, "--out", str(inside))
        _one_line_error(res, str(inside), f"inside {run.path.resolve()}")
    assert not (run.path / "eval").exists()
    assert not (run.ckpt_dir / "predictions").exists()
    assert "run folder" in _plain(runner.invoke(app, ["evaluate", "--help"]).output)


def test_evaluate_replaces_its_own_output_whole_and_refuses_a_foreign_folder(
    tiny_dataset, tmp_path
):
    """A second evaluate into the same folder replaces the first one's output whole (no
    prediction of the first checkpoint left beside the second's); a folder holding other
    files is refused."""
    a = _segmenter_checkpoint(tmp_path / "a.safetensors")
    b = _segmenter_checkpoint(tmp_path / "b.safetensors")
    ev = tmp_path / "ev"
    assert _evaluate(a, tiny_dataset, "--out", str(ev), "--save-predictions", "6").exit_code == 0
    assert len(list((ev / "predictions").glob("*.png"))) == 6
    assert _evaluate(b, tiny_dataset, "--out", str(ev), "--save-predictions", "2").exit_code == 0
    assert len(list((ev / "predictions").glob("*.png"))) == 2
    assert json.loads((ev / "metrics.json").read_text())["checkpoint"] == str(b)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no leftovers
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    res = _evaluate(a, tiny_dataset, "--out", str(foreign))
    _one_line_error(res, str(foreign), "not empty")
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    res = _evaluate(a, tiny_dataset, "--input-size", "0x0")
    _one_line_error(res, "--input-size", "positive")


def test_a_stage_refuses_a_folder_holding_evaluate_output(tiny_dataset, tmp_path):
    ckpt = _segmenter_checkpoint(tmp_path / "g.safetensors")
    ev = tmp_path / "ev"
    assert _evaluate(ckpt, tiny_dataset, "--out", str(ev)).exit_code == 0
    before = (ev / "metrics.json").read_text()
    with pytest.raises(ConfigError, match="another command"):
        _train_seg_run(tiny_dataset, ev)
    assert (ev / "metrics.json").read_text() == before
    assert not (ev / "config.yaml").exists()


# ------------------------------------------------------------------- 3. --set typing


def test_set_keeps_the_text_of_string_fields():
    cfg = build_config(
        TrainSegConfig,
        None,
        ["source.split=2e1", "source.root=1e5", "model.arch=010", "model.pretrained=no"],
        {},
        validate=False,
    )
    assert cfg.source.split == "2e1"
    assert cfg.source.root == "1e5"
    assert cfg.model.arch == "010"
    assert cfg.model.pretrained == "no" and pretrained_arg(cfg.model.pretrained) is False


def test_set_still_parses_numbers_booleans_and_lists():
    cfg = load_config(
        TrainSegConfig,
        None,
        parse_set(
            ["optim.lr=1e-3", "iterations=2e1", "batch_size=4", "amp=no", "aug.crop=[8, 16]"]
        ),
        validate=False,
    )
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.iterations == 20 and isinstance(cfg.iterations, int)
    assert cfg.batch_size == 4
    assert cfg.amp is False
    assert cfg.aug.crop == [8, 16]
    with pytest.raises(ConfigError, match="iterations"):
        load_config(TrainSegConfig, None, parse_set(["iterations=1e-3"]), validate=False)


# ------------------------------------------------ 4. skipped samples and loader workers


def test_skipped_samples_reach_metrics_with_loader_workers(tmp_path):
    root = write_folder_dataset(tmp_path / "ds", n=6)
    bad = root / "train" / "images" / "img002.png"
    bad.write_bytes(b"not a png")
    cfg = load_config(
        TrainSegConfig,
        None,
        {
            "source.root": str(root),
            "model.arch": "fcn8s_tiny",
            "iterations": 3,  # 3 batches of 2 = one pass over the 6 samples
            "batch_size": 2,
            "num_workers": 2,
            "on_error": "skip",
            "noisy_masked.prob": 0.0,
            "device": "cpu",
        },
    )
    metrics = train_segmenter(cfg, tmp_path / "run", progress=False)
    assert metrics["skipped_samples"] == [str(bad)]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["skipped_samples"] == [str(bad)]


# --------------------------------------------------------------------- 5. smaller ones


def test_report_plots_leave_the_matplotlib_backend_alone():
    import matplotlib

    from diffdass.evaluation.report import _miou_along_n, _per_class_plot, sweep_plot

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        assert _per_class_plot(["a", "b"], {"g0": {"a": 10.0, "b": 20.0}})[:4] == b"\x89PNG"
        domains = [{"n": 1, "val_miou": {"19": 30.0}}]
        assert _miou_along_n(domains, 20.0, "19")[:4] == b"\x89PNG"
        assert sweep_plot({"0": {"sweep_n: N = 100": 1.0}})[:4] == b"\x89PNG"
        assert matplotlib.get_backend().lower() == "svg"
    finally:
        matplotlib.use(before)


def test_unknown_device_is_a_config_error_listing_valid_ones(tiny_dataset, tmp_path):
    from diffdass.utils.device import resolve_device

    with pytest.raises(ConfigError, match=r"'gpu'.*auto, cpu, cuda, cuda:N, mps"):
        resolve_device("gpu")
    assert resolve_device("cpu") == torch.device("cpu")
    res = _evaluate(tmp_path / "none.safetensors", tiny_dataset, "--device", "gpu")
    _one_line_error(res, "gpu", "auto, cpu, cuda, cuda:N, mps")


def test_no_imagenet_weights_advice_uses_the_config_value():
    with pytest.raises(ValueError, match="no ImageNet weights") as info:
        build_segmenter("fcn8s_tiny", 4, pretrained=True)
    msg = str(info.value)
    assert "--pretrained none" in msg and "pretrained: none" in msg


def test_checkpoints_get_the_mode_of_other_outputs(tmp_path):
    from diffdass.utils.io import write_json

    mask = os.umask(0)
    os.umask(mask)
    ckpt = save_checkpoint(tmp_path / "c.safetensors", {"model": torch.nn.Linear(2, 2)})
    js = write_json(tmp_path / "m.json", {})
    assert ckpt.stat().st_mode & 0o777 == 0o666 & ~mask
    assert js.stat().st_mode & 0o777 == 0o666 & ~mask


def test_path_spellings_are_not_a_config_change_and_non_ascii_stays_readable(tmp_path, monkeypatch):
    from diffdass.utils.config import dump_yaml
    from diffdass.utils.run import _diff

    data = tmp_path / "daten_straße"
    data.mkdir()
    monkeypatch.chdir(tmp_path)
    old = {"source": {"root": str(data), "split": "train"}}
    assert _diff(old, {"source": {"root": "daten_straße", "split": "train"}}) == []
    assert _diff(old, {"source": {"root": "./daten_straße/", "split": "train"}}) == []
    assert _diff(old, {"source": {"root": str(data), "split": "val"}}) == [
        "source.split: 'train' -> 'val'"
    ]
    (tmp_path / "other").mkdir()
    assert _diff(old, {"source": {"root": "other", "split": "train"}})
    text = dump_yaml(old)
    assert "straße" in text and "\\x" not in text
