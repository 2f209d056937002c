"""The `diffdass` command line: help texts, error reporting, and a train -> evaluate round trip."""

from __future__ import annotations

import json
import re

import pytest
import typer
from typer.testing import CliRunner

from diffdass.cli.main import app

#: every command of the app, read from the app itself
CLICK_APP = typer.main.get_command(app)
COMMANDS = sorted(CLICK_APP.commands)

runner = CliRunner()


def _plain(text: str) -> str:
    """Output without ANSI colours or rich's box drawing, whitespace collapsed."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def _train_seg(dataset, out, iterations: int, arch: str = "fcn8s_tiny"):
    """`diffdass train-seg` of a tiny segmenter on ``dataset``; returns the CLI result."""
    return runner.invoke(
        app,
        [
            "train-seg",
            "--out",
            str(out),
            "--source-root",
            str(dataset),
            "--arch",
            arch,
            "--iterations",
            str(iterations),
            "--batch-size",
            "2",
            "--quiet",
            "--set",
            "num_workers=0",
        ],
    )


def test_top_level_help_lists_every_command():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    out = _plain(res.output)
    for cmd in COMMANDS:
        assert cmd in out, cmd


def test_the_command_list_is_the_apps():
    assert {"run", "ablate", "estimate", "calibrate-guidance", "models"} <= set(COMMANDS)


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help(cmd):
    """The help shows the command's description and every parameter's help text whole (rich
    markup would silently eat a bracketed phrase such as "[default: ...]")."""
    res = runner.invoke(app, [cmd, "--help"], env={"COLUMNS": "250"})  # no folded words
    assert res.exit_code == 0, res.output
    out = _plain(res.output)
    assert "Usage:" in out
    command = CLICK_APP.commands[cmd]
    assert command.help and " ".join(command.help.split("\n\n")[0].split()) in out
    for param in command.params:
        text = getattr(param, "help", None)
        if text:
            assert " ".join(text.split()) in out, (cmd, param.name, text)


def test_models_lists_architectures_and_unets():
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0
    for name in ("deeplabv2", "fcn8s", "segformer", "ddpm256"):
        assert name in res.output


def test_unknown_config_key_is_a_clear_error(tiny_dataset, tmp_path):
    res = runner.invoke(
        app,
        [
            "train-seg",
            "--out",
            str(tmp_path / "r"),
            "--source-root",
            str(tiny_dataset),
            "--set",
            "optim.lrr=0.1",
        ],
    )
    assert res.exit_code == 2
    assert "lrr" in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_missing_dataset_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    res = runner.invoke(
        app, ["train-seg", "--out", str(tmp_path / "r"), "--source-root", str(missing)]
    )
    assert res.exit_code == 2
    assert str(missing) in _plain(res.output)


def test_train_then_evaluate_round_trip(tiny_dataset, tmp_path):
    out = tmp_path / "r"
    res = _train_seg(tiny_dataset, out, iterations=3)
    assert res.exit_code == 0, res.output
    ckpt = out / "checkpoints" / "final.safetensors"
    assert ckpt.is_file()
    for f in ("config.yaml", "git.txt", "run.log", "metrics.json"):
        assert (out / f).is_file(), f

    ev = tmp_path / "eval"
    res = runner.invoke(
        app,
        [
            "evaluate",
            "--checkpoint",
            str(ckpt),
            "--root",
            str(tiny_dataset),
            "--split",
            "train",
            "--class-sets",
            "all",
            "--out",
            str(ev),
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    metrics = json.loads((ev / "metrics.json").read_text())
    assert set(metrics["miou"]) == {"all4"}
    assert metrics["inference_ms_per_image"] > 0
    assert f"{metrics['miou']['all4']:.1f}" in res.output
    assert "ms/image" in res.output
    assert len(list((ev / "predictions").glob("*.png"))) == 6


def test_evaluate_with_adabn_scores_target_statistics(tiny_dataset, tmp_path):
    """`evaluate --adabn ROOT:SPLIT` = the library's AdaBN then evaluation; the checkpoint
    file stays as it was."""
    import torch

    from diffdass.adaptation.adabn import adabn
    from diffdass.data.scan import scan_split
    from diffdass.evaluation.evaluate import evaluate
    from diffdass.models.factory import load_segmenter

    assert _train_seg(tiny_dataset, tmp_path / "r", 3, arch="unet_small").exit_code == 0
    ckpt = tmp_path / "r" / "checkpoints" / "final.safetensors"
    before = ckpt.read_bytes()
    args = ["evaluate", "--checkpoint", str(ckpt), "--root", str(tiny_dataset), "--split"]
    args += ["train", "--class-sets", "all", "--quiet", "--device", "cpu"]
    plain = runner.invoke(app, [*args, "--out", str(tmp_path / "e0")])
    res = runner.invoke(
        app, [*args, "--adabn", f"{tiny_dataset}:train", "--out", str(tmp_path / "e1")]
    )
    assert plain.exit_code == 0 and res.exit_code == 0, res.output
    got = json.loads((tmp_path / "e1" / "metrics.json").read_text())
    assert got["adabn"]["images"] == 6 and got["adabn"]["images_from"] == f"{tiny_dataset}:train"
    model, _ = load_segmenter(ckpt, "cpu")
    ds = scan_split(tiny_dataset, "train", "required").dataset()
    adabn(model, torch.utils.data.DataLoader(ds, batch_size=16), "cpu")
    want = evaluate(model, ds, ["all"], "cpu", progress=False)["miou"]["all4"]
    assert got["miou"]["all4"] == pytest.approx(want, abs=1e-9)
    no_bn = json.loads((tmp_path / "e0" / "metrics.json").read_text())["miou"]["all4"]
    assert got["miou"]["all4"] != no_bn  # the statistics did change the predictions
    assert ckpt.read_bytes() == before
    fcn = tmp_path / "fcn"
    assert _train_seg(tiny_dataset, fcn, 1).exit_code == 0
    args[2] = str(fcn / "checkpoints" / "final.safetensors")
    res = runner.invoke(app, [*args, "--adabn", str(tiny_dataset)])
    assert res.exit_code == 2 and "no BatchNorm layer" in _plain(res.output)


def test_evaluate_rejects_wrong_class_count(tiny_dataset, tmp_path):
    from conftest import write_folder_dataset

    res = _train_seg(tiny_dataset, tmp_path / "r", iterations=1)
    assert res.exit_code == 0, res.output
    five = write_folder_dataset(tmp_path / "five", split="val", num_classes=5)
    res = runner.invoke(
        app,
        [
            "evaluate",
            "--checkpoint",
            str(tmp_path / "r" / "checkpoints" / "final.safetensors"),
            "--root",
            str(five),
            "--class-sets",
            "all",
            "--quiet",
        ],
    )
    assert res.exit_code == 2
    assert "wrong class count" in _plain(res.output)


def test_help_texts_are_accurate():
    """`run --help` keeps its first sentence whole (rich ate '[benchmark]'); no command's
    help shows a --set example whose key it would reject (train-ddpm has no optim.lr)."""
    text = _plain(runner.invoke(app, ["run", "--help"]).output)
    assert "The whole pipeline: benchmark (if enabled) -> source-only -> DDPM" in text
    for cmd in COMMANDS:
        assert "optim.lr" not in _plain(runner.invoke(app, [cmd, "--help"]).output), cmd


def test_cityscapes_class_set_on_a_custom_dataset_suggests_all():
    from diffdass.evaluation.evaluate import resolve_class_sets

    with pytest.raises(ValueError, match="--class-sets all"):
        resolve_class_sets(["19"], 4)
    assert resolve_class_sets(["all"], 4) == {"all4": (0, 1, 2, 3)}


def test_ablation_results_merge_keeps_rows_of_concurrent_jobs(tmp_path):
    """Two ``diffdass ablate`` jobs on one folder: each merge keeps the other's rows."""
    import multiprocessing as mp

    from diffdass.pipeline.ablate import _merge_results

    path = tmp_path / "ablation.json"
    # job A and job B start from the same (empty) file, each then records its own rows
    a = _merge_results(path, {})
    b = _merge_results(path, {})
    a["0"] = {"source-only g_0": 18.8, "sweep_n: N = 600": 21.0}
    _merge_results(path, a)
    b.setdefault("1", {})["table2: (a) baseline"] = 20.0
    b.setdefault("0", {})["control"] = 19.6
    merged = _merge_results(path, b)
    assert merged == {
        "0": {"source-only g_0": 18.8, "sweep_n: N = 600": 21.0, "control": 19.6},
        "1": {"table2: (a) baseline": 20.0},
    }
    assert json.loads(path.read_text()) == merged
    # many processes writing at once: no row lost
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_merge_one, args=(str(path), i)) for i in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rows = json.loads(path.read_text())["2"]
    assert rows == {f"row {i}": float(i) for i in range(6)}


def _merge_one(path: str, i: int) -> None:
    from pathlib import Path

    from diffdass.pipeline.ablate import _merge_results

    for _ in range(20):
        _merge_results(Path(path), {"2": {f"row {i}": float(i)}})


def test_run_command_trains_and_prints_what_the_run_demonstrates(tmp_path, one_thread):
    """`diffdass run CONFIG` end to end on the tiny pipeline of test_pipeline.py: the command
    wires the pipeline and prints the registry's rows and the report's path."""
    import yaml

    from test_pipeline import TINY

    nested: dict = {}
    for key, value in TINY.items():
        *path, last = key.split(".")
        node = nested
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(nested))
    res = runner.invoke(app, ["run", str(config), "--out", str(tmp_path / "run"), "--quiet"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert list(summary["methods"]) == ["source_only", "adabn", "ptl", "oracle"]
    for key in summary["methods"]:
        assert f" {summary['miou'][key]:5.1f}\n" in res.output, key
    assert f"report: {tmp_path / 'run' / 'report.html'}" in res.output
    # every training stage logged its curves (and images) for TensorBoard, the run its scores
    from conftest import read_images, read_scalars

    run = tmp_path / "run"
    seg = read_scalars(run / "source_only" / "tensorboard")
    assert {"loss", "lr"} <= set(seg) and [s for s, _ in seg["loss"]] == [1, 2, 3]
    assert [s for s, _ in read_images(run / "ddpm" / "tensorboard")["samples"]] == [3]
    ptl = read_scalars(run / "ptl" / "tensorboard")
    assert {"loss", "lr", "lr_last", "n"} <= set(ptl) and [s for s, _ in ptl["loss"]] == [1, 2, 3]
    assert [s for s, _ in ptl[f"val_miou/{summary['class_set']}"]] == [1, 2]  # eval_every: 1
    assert [s for s, _ in read_images(run / "ptl" / "tensorboard")["translations"]] == [1, 2, 3]
    scores = read_scalars(run / "tensorboard")
    for key in summary["methods"]:
        (point,) = scores[f"eval/mIoU_{summary['class_set']}/{key}"]
        assert point == (0, pytest.approx(summary["miou"][key], abs=1e-4))


def test_the_flag_table_covers_every_flag_and_names_real_keys():
    """cli/flags.py is the one place flags map to config keys: every command parameter that
    sets a config value is in it, and every key it names is a field of the command's config."""
    import dataclasses
    import typing

    import typer.main

    from diffdass.adaptation.ddpm_training import TrainDDPMConfig
    from diffdass.adaptation.ptl import PTLConfig
    from diffdass.adaptation.seg_training import TrainSegConfig
    from diffdass.adaptation.translation import TranslateConfig
    from diffdass.cli.flags import FLAGS
    from diffdass.pipeline.config import PipelineConfig

    configs = {"train-seg": TrainSegConfig, "train-ddpm": TrainDDPMConfig, "ptl": PTLConfig,
               "translate": TranslateConfig, "run": PipelineConfig,
               "calibrate-guidance": PipelineConfig, "estimate": PipelineConfig}  # fmt: skip
    not_config = {"config", "config_option", "sets", "quiet", "score_with", "gpu", "processes",
                  "steps", "json_out"}  # fmt: skip  # what a command does, not a key
    commands = typer.main.get_command(app).commands
    for name, table in FLAGS.items():
        params = {p.name for p in commands[name].params}
        run_dir = set() if configs[name] is PipelineConfig else {"out"}
        assert set(table) <= params, name
        assert params - set(table) - not_config - run_dir == set(), name
        for key in table.values():
            cls = configs[name]
            for part in key.split("."):
                hints = typing.get_type_hints(cls)
                assert part in {f.name for f in dataclasses.fields(cls)}, (name, key)
                cls = hints[part]
    # a key given both as a flag and with --set is refused, naming the key
    r = runner.invoke(app, ["train-seg", "-o", "/nonexistent/x", "--set", "iterations=5",
                            "--iterations", "7", "--source-root", "/nonexistent/data"])  # fmt: skip
    assert r.exit_code == 2 and "iterations: given both" in _plain(r.output)


def _commands_with_config():
    """``{name: click command}`` of every command (sub-commands included) taking a config."""
    out = {}
    for name, cmd in CLICK_APP.commands.items():
        subs = getattr(cmd, "commands", None)
        for sub_name, sub in (subs or {name: cmd}).items():
            if any(p.name == "config" for p in sub.params):
                out[name if subs is None else f"{name} {sub_name}"] = sub
    return out


def test_every_command_takes_its_config_the_same_two_ways():
    """CONFIG is positional everywhere, and --config / -c is the same file as an option."""
    commands = _commands_with_config()
    assert {"train-seg", "train-ddpm", "translate", "ptl", "run", "calibrate-guidance", "ablate",
            "estimate", "launch-plan", "config show"} <= set(commands)  # fmt: skip
    for name, cmd in commands.items():
        params = {p.name: p for p in cmd.params}
        assert params["config"].param_type_name == "argument", name
        assert not params["config"].required, name
        assert params["config"].metavar == "CONFIG", name
        assert set(params["config_option"].opts) == {"--config", "-c"}, name


def test_train_seg_reads_its_config_positionally_or_with_dash_c(tiny_dataset, tmp_path):
    import yaml

    config = tmp_path / "seg.yaml"
    config.write_text(yaml.safe_dump({"source": {"root": str(tiny_dataset)}, "iterations": 1,
        "batch_size": 2, "num_workers": 0, "model": {"arch": "fcn8s_tiny"}}))  # fmt: skip
    saved = []
    for args in ([str(config)], ["-c", str(config)], ["--config", str(config), str(config)]):
        out = tmp_path / f"r{len(saved)}"
        res = runner.invoke(app, ["train-seg", *args, "-o", str(out), "--quiet"])
        assert res.exit_code == 0, res.output
        saved.append(yaml.safe_load((out / "config.yaml").read_text()))
    assert saved[0]["iterations"] == 1 and saved[0]["model"]["arch"] == "fcn8s_tiny"
    assert saved[0] == saved[1] == saved[2]
    other = tmp_path / "other.yaml"
    other.write_text("iterations: 2\n")
    res = runner.invoke(
        app, ["train-seg", str(config), "-c", str(other), "-o", str(tmp_path / "x")]
    )
    assert res.exit_code == 2 and "two config files given" in _plain(res.output)
    assert not (tmp_path / "x").exists()


def test_config_show_prints_the_resolved_pipeline_config(tmp_path):
    import yaml

    from diffdass.pipeline.config import DEFAULT_CONFIG, fill_config, load_pipeline_config
    from diffdass.utils.config import to_dict

    res = runner.invoke(app, ["config", "show"])
    assert res.exit_code == 0, res.output
    shown = yaml.safe_load(res.output)
    assert shown == to_dict(fill_config(load_pipeline_config(DEFAULT_CONFIG)))
    assert shown["benchmark"]["enabled"] and shown["logging"] == {
        "tensorboard": True,
        "wandb": False,
    }
    # a file, --set and flags, resolved as `run` resolves them; the stages share seed and out
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump({"seed": 5, "benchmark": {"enabled": True},
                                     "source_only": {"iterations": 7}}))  # fmt: skip
    args = [str(config), "--set", "ptl.n_max=50", "-o", str(tmp_path / "o"), "--device", "cpu"]
    res = runner.invoke(app, ["config", "show", *args])
    assert res.exit_code == 0, res.output
    shown = yaml.safe_load(res.output)
    assert shown["source_only"]["iterations"] == 7 and shown["ptl"]["n_max"] == 50
    assert shown["seed"] == shown["source_only"]["seed"] == shown["ptl"]["seed"] == 5
    assert shown["device"] == shown["ddpm"]["device"] == "cpu"
    assert shown["source"]["root"] == str(tmp_path / "o" / "data" / "source")
    same = runner.invoke(app, ["config", "show", "--config", *args])
    assert same.exit_code == 0 and same.output == res.output
    bad = runner.invoke(app, ["config", "show", str(config), "--set", "ptl.nmax=1"])
    assert bad.exit_code == 2 and "nmax" in bad.output and "Traceback" not in bad.output
    missing = runner.invoke(app, ["config", "show", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "nope.yaml" in _plain(missing.output)


def test_help_names_both_methods_and_shows_defaults_whole():
    top = _plain(runner.invoke(app, ["--help"], env={"COLUMNS": "250"}).output)
    for part in ("label-guided diffusion translation with progressive translation learning",
                 "Peng et al., ICCV 2023", "CICLD", "(Yu, Sun, Luo)"):  # fmt: skip
        assert part in top, part
    prepare = _plain(runner.invoke(app, ["prepare", "--help"], env={"COLUMNS": "250"}).output)
    assert "Output folder-format root. [default: (ROOT/diffdass)]" in prepare
    assert "[OPTIONS] {DATASET} {ROOT}" in prepare
    for name in [*COMMANDS, "config show"]:
        text = _plain(runner.invoke(app, [*name.split(), "--help"], env={"COLUMNS": "250"}).output)
        assert "Usage:" in text, name
        assert " ." not in text and "( " not in text, (name, text)  # no swallowed text
        assert "--no-quiet" not in text, name  # one spelling of each switch
        if name in _commands_with_config():
            assert "[OPTIONS] [CONFIG]" in text and "The same as CONFIG" in text, name
