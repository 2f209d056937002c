"""Several processes on CPU (gloo) give the one-process results (same global batch).

One launch of 2 processes (``python -m torch.distributed.run``, the launcher under
``accelerate launch``; loopback only) runs, against the one-process runs of this process:

- ``train-seg`` from scratch (unet_small: BatchNorm, noisy-masked augmentation on);
- ``train-seg`` resumed with 2 processes from the checkpoint of a 1-process run killed
  mid-way (resuming with another process count);
- ``evaluate`` of one fixed checkpoint (images sharded, confusion matrices summed);
- ``train-ddpm`` (timesteps and noise drawn for the global batch);
- ``ptl`` (translation batches shared out and gathered, data-parallel fine-tuning);
- ``translate`` (batches shared out, preview rows gathered).

A second launch of 4 processes runs ``ptl`` at fine-tuning batch 2, which 4 processes do not
divide: translation batches shared out over all 4 (some processes get two), the main process
fine-tunes alone and sends its weights to the others; the translations, losses, weights and
strips are then those of one process up to gathering.

Tolerances. Evaluation and translation: exact (integer pixel counts; the same forward per image). Training:
each step computes the one-process step up to floating-point summation order (BatchNorm
statistics and gradients summed over processes), which drifts over the steps: per-iteration
losses within 1e-3 relative (observed: 1e-5), final weights and BatchNorm statistics within
1e-3 absolute (observed: 7e-5 after 6 SGD steps; the DDPM's 3 Adam steps: 2e-5) and the mIoU
of the final model within 0.5 points (observed: equal). PTL on 4 processes with the main one
fine-tuning: the same tolerances (observed: exact, losses and weights alike)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from diffdass.adaptation.ddpm_training import TrainDDPMConfig, train_ddpm
from diffdass.adaptation.ptl import PTLConfig, run_ptl
from diffdass.adaptation.seg_training import TrainSegConfig, train_segmenter
from diffdass.adaptation.translation import TranslateConfig, translate_dataset
from diffdass.data.folder import FolderDataset
from diffdass.evaluation.evaluate import evaluate
from diffdass.models.factory import load_segmenter
from diffdass.utils import distributed as dist
from diffdass.utils.config import ConfigError, load_config
from diffdass.utils.io import load_tensors, read_json

from conftest import write_folder_dataset

LOSS_RTOL = 1e-3
WEIGHT_ATOL = 1e-3
MIOU_TOL = 0.5

WORKER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    from diffdass.adaptation.seg_training import TrainSegConfig, train_segmenter
    from diffdass.data.folder import FolderDataset
    from diffdass.adaptation.ddpm_training import TrainDDPMConfig, train_ddpm
    from diffdass.evaluation.evaluate import evaluate
    from diffdass.models.factory import load_segmenter
    from diffdass.utils import distributed as dist
    from diffdass.utils.config import load_config

    spec = json.loads(Path(sys.argv[1]).read_text())
    out = Path(spec["out"])
    res = {"world": dist.world_size(), "rank": dist.rank()}
    seg = load_config(TrainSegConfig, None, spec["seg"])
    res["seg"] = train_segmenter(seg, out / "seg2", progress=False)
    res["resumed"] = train_segmenter(seg, out / "resumed", progress=False)
    model, _ = load_segmenter(spec["eval_checkpoint"])
    val = FolderDataset(spec["root"], "val")
    ev = evaluate(model, val, ["all"], "cpu", pred_dir=out / "preds2", n_save=3, progress=False)
    res["eval"] = {k: ev[k] for k in ("miou", "per_class_iou", "pixel_accuracy", "images")}
    ddpm = load_config(TrainDDPMConfig, None, spec["ddpm"])
    res["ddpm"] = train_ddpm(ddpm, out / "ddpm2", progress=False)
    from diffdass.adaptation.ptl import PTLConfig, run_ptl

    res["ptl"] = run_ptl(load_config(PTLConfig, None, spec["ptl"]), out / "ptl2", progress=False)
    from diffdass.adaptation.translation import TranslateConfig, translate_dataset

    tcfg = load_config(TranslateConfig, None, spec["translate"])
    res["translate"] = translate_dataset(tcfg, out / "tr2", progress=False)
    Path(out / f"result_rank{dist.rank()}.json").write_text(json.dumps(res, default=str))
    """
)

PTL_WORKER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    from diffdass.adaptation.ptl import PTLConfig, run_ptl
    from diffdass.utils import distributed as dist
    from diffdass.utils.config import load_config

    spec = json.loads(Path(sys.argv[1]).read_text())
    out = Path(spec["out"])
    res = {"world": dist.world_size(), "rank": dist.rank()}
    res["ptl"] = run_ptl(load_config(PTLConfig, None, spec["ptl"]), out / "ptl4", progress=False)
    Path(out / f"result_rank{dist.rank()}.json").write_text(json.dumps(res, default=str))
    """
)


def _seg_over(root) -> dict:
    return {
        "source.root": str(root),
        "model.arch": "unet_small",
        "model.pretrained": "none",
        # SGD (the paper's): Adam's first steps, lr * g / |g|, turn float noise in the
        # gradients of near-zero-gradient weights into lr-sized weight differences
        "optim.name": "sgd",
        "optim.lr": 0.01,
        "optim.momentum": 0.9,
        "optim.head_lr_mult": 1.0,
        "iterations": 6,
        "batch_size": 4,
        "num_workers": 0,
        "checkpoint_every": 3,
        "noisy_masked.prob": 0.5,
        "noisy_masked.max_timestep": 300,
        "aug.hflip": True,
    }


def _ddpm_over(root) -> dict:
    return {
        "target.root": str(root),
        "unet": "tiny",
        "iterations": 3,
        "batch_size": 4,
        "lr": 0.0005,
        "ema_decay": 0.9,
        "num_timesteps": 100,
        "sample_every": 1000,
        "sample_steps": 2,
        "n_samples": 1,
        "checkpoint_every": 2,
        "num_workers": 0,
    }


def _ptl_over(root, init, ddpm) -> dict:
    return {
        "source.root": str(root),
        "init": str(init),
        "ddpm": str(ddpm),
        "domains": "spread",
        "n_max": 20,
        "num_domains": 2,
        "reverse_steps": 2,
        "iterations_per_domain": 2,
        "batch_size": 4,
        "translate_batch_size": 4,  # 2 translation batches per domain: one per process
        "aug.crop": [32, 48],
        "strip_images": 1,
        "optim.name": "sgd",
        "optim.lr": 0.005,
        "optim.momentum": 0.9,
        "noisy_masked.prob": 0.5,
        "guidance.chunk_size": 64,
        "num_workers": 0,
    }


def _train_tiny(tmp_path) -> tuple[Path, dict, dict]:
    """The tiny labeled dataset (12 train, 6 val images of 32x48) and the one-process
    segmenter (``seg1``) and DDPM (``ddpm1``) trained on it in this process (call it with
    one torch thread, as the workers have). Returns the dataset root and both runs' metrics."""
    root = write_folder_dataset(tmp_path / "ds", n=12, size=(32, 48))
    write_folder_dataset(tmp_path / "ds", split="val", n=6, size=(32, 48), seed=1)
    seg = train_segmenter(
        load_config(TrainSegConfig, None, _seg_over(root)), tmp_path / "seg1", progress=False
    )
    ddpm = train_ddpm(
        load_config(TrainDDPMConfig, None, _ddpm_over(root)), tmp_path / "ddpm1", progress=False
    )
    return root, seg, ddpm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(script, spec_path, nproc: int, timeout: int = 150) -> None:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        MASTER_ADDR="127.0.0.1",
        GLOO_SOCKET_IFNAME="lo",
        TORCHELASTIC_ERROR_FILE="",
        PYTHONWARNINGS="ignore",
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--nnodes=1",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(script),
        str(spec_path),
    ]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-6000:]


def _history(run) -> list[float]:
    return [row["loss"] for row in read_json(run / "loss_history.json")]


def _close_weights(a_path, b_path, atol: float) -> float:
    a, b = load_tensors(a_path), load_tensors(b_path)
    assert a.keys() == b.keys()
    worst = 0.0
    for k in a:
        if a[k].is_floating_point():
            worst = max(worst, float((a[k].float() - b[k].float()).abs().max()))
        else:
            assert torch.equal(a[k], b[k]), k
    assert worst <= atol, worst
    return worst


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers (OMP_NUM_THREADS=1)
    try:
        # one-process references, in this process
        root, one, ddpm1 = _train_tiny(tmp_path)
        seg_over, ddpm_over = _seg_over(root), _ddpm_over(root)
        cfg = load_config(TrainSegConfig, None, seg_over)
        # a 1-process run killed at iteration 4 (its last checkpoint: iteration 3) ...
        from diffdass.adaptation import seg_training

        orig = seg_training.SegTrainer.step

        def step_then_die(self, it, batches):
            if it == 4:
                raise KeyboardInterrupt
            return orig(self, it, batches)

        seg_training.SegTrainer.step = step_then_die
        try:
            with pytest.raises(KeyboardInterrupt):
                train_segmenter(cfg, tmp_path / "resumed", progress=False)
        finally:
            seg_training.SegTrainer.step = orig
        ckpt = tmp_path / "seg1" / "checkpoints" / "final.safetensors"
        ptl_over = _ptl_over(root, ckpt, tmp_path / "ddpm1" / "checkpoints" / "final.safetensors")
        run_ptl(load_config(PTLConfig, None, ptl_over), tmp_path / "ptl1", progress=False)
        tr_over = {
            "source.root": str(root),
            "ddpm": ptl_over["ddpm"],
            "segmenter": str(ckpt),
            "n": 10,
            "respace_steps": 2,
            "batch_size": 4,
            "limit": 8,  # 2 batches: one per process
            "preview": 5,  # rows from both processes' batches
            "device": "cpu",
        }
        translate_dataset(load_config(TranslateConfig, None, tr_over), tmp_path / "tr1", False)
        model, _ = load_segmenter(ckpt)
        val = FolderDataset(root, "val")
        ev1 = evaluate(model, val, ["all"], "cpu", progress=False)
    finally:
        torch.set_num_threads(threads)

    # ... resumed, and everything else run, by 2 processes
    spec = {
        "out": str(tmp_path),
        "root": str(root),
        "seg": seg_over,
        "ddpm": ddpm_over,
        "ptl": ptl_over,
        "translate": tr_over,
        "eval_checkpoint": str(ckpt),
    }
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    _launch(script, spec_path, 2)
    res = [json.loads((tmp_path / f"result_rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in res] == [2, 2] and [r["rank"] for r in res] == [0, 1]

    # evaluation: exact, on every process
    for r in res:
        assert r["eval"]["miou"] == ev1["miou"]
        assert r["eval"]["per_class_iou"] == ev1["per_class_iou"]
        assert r["eval"]["pixel_accuracy"] == ev1["pixel_accuracy"]
        assert r["eval"]["images"] == 6
    assert sorted(p.name for p in (tmp_path / "preds2").iterdir()) == [
        "img000.png",
        "img001.png",
        "img002.png",
    ]

    # train-seg from scratch: per-iteration losses, weights, target mIoU
    h1, h2 = _history(tmp_path / "seg1"), _history(tmp_path / "seg2")
    assert len(h1) == len(h2) == 6
    for a, b in zip(h1, h2, strict=True):
        assert b == pytest.approx(a, rel=LOSS_RTOL)
    assert res[0]["seg"]["loss_last"] == pytest.approx(one["loss_last"], rel=LOSS_RTOL)
    assert res[0]["seg"]["processes"] == 2 and "processes" not in one
    assert res[1]["seg"]["loss_last"] == res[0]["seg"]["loss_last"]  # every rank agrees
    _close_weights(ckpt, tmp_path / "seg2" / "checkpoints" / "final.safetensors", WEIGHT_ATOL)
    model2, _ = load_segmenter(tmp_path / "seg2" / "checkpoints" / "final.safetensors")
    ev2 = evaluate(model2, val, ["all"], "cpu", progress=False)
    assert abs(ev2["miou"]["all4"] - ev1["miou"]["all4"]) <= MIOU_TOL
    # written once, by the main process: one run.log line per invocation
    log = (tmp_path / "seg2" / "run.log").read_text()
    assert log.count(" (git ") == 1
    assert json.loads((tmp_path / "seg2" / "metrics.json").read_text())["processes"] == 2

    # resumed with 2 processes after 3 iterations of 1 process
    assert "resuming from iteration 3" in (tmp_path / "resumed" / "run.log").read_text()
    hr = _history(tmp_path / "resumed")
    for a, b in zip(h1, hr, strict=True):
        assert b == pytest.approx(a, rel=LOSS_RTOL)
    _close_weights(ckpt, tmp_path / "resumed" / "checkpoints" / "final.safetensors", WEIGHT_ATOL)

    # train-ddpm
    d2 = res[0]["ddpm"]
    assert d2["loss_first"] == pytest.approx(ddpm1["loss_first"], rel=LOSS_RTOL)
    assert d2["loss_last"] == pytest.approx(ddpm1["loss_last"], rel=LOSS_RTOL)
    _close_weights(
        tmp_path / "ddpm1" / "checkpoints" / "last.safetensors",
        tmp_path / "ddpm2" / "checkpoints" / "last.safetensors",
        WEIGHT_ATOL,
    )

    # ptl: the same translations (strips written once), losses per domain, weights
    d1, d2 = (read_json(tmp_path / r / "domains.json") for r in ("ptl1", "ptl2"))
    assert [d["translated_images"] for d in d2] == [d["translated_images"] for d in d1] == [8, 8]
    for a, b in zip(d1, d2, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=LOSS_RTOL)
    strips = sorted(p.name for p in (tmp_path / "ptl2" / "strips").rglob("*.png"))
    assert strips == sorted(p.name for p in (tmp_path / "ptl1" / "strips").rglob("*.png"))
    assert res[0]["ptl"]["processes"] == 2
    _close_weights(
        tmp_path / "ptl1" / "checkpoints" / "final.safetensors",
        tmp_path / "ptl2" / "checkpoints" / "final.safetensors",
        WEIGHT_ATOL,
    )

    # translate: the same images, the same preview sheet, counted once
    assert res[0]["translate"]["translated"] == res[1]["translate"]["translated"] == 8
    imgs1 = sorted((tmp_path / "tr1" / "dataset").rglob("*.png"))
    imgs2 = sorted((tmp_path / "tr2" / "dataset").rglob("*.png"))
    assert [p.relative_to(tmp_path / "tr1") for p in imgs1] == [
        p.relative_to(tmp_path / "tr2") for p in imgs2
    ]
    assert len(imgs1) == 16
    for a, b in zip(imgs1, imgs2, strict=True):
        assert np.array_equal(_png(a), _png(b)), a.name
    sheet = "previews/sheet.png"
    assert np.array_equal(_png(tmp_path / "tr1" / sheet), _png(tmp_path / "tr2" / sheet))


@pytest.mark.slow
def test_four_processes_not_dividing_the_batch_match_one(tmp_path, one_thread):
    """PTL at batch 2 on 4 processes: translation shared out, fine-tuning on the main one."""
    root, _, _ = _train_tiny(tmp_path)
    over = _ptl_over(
        root,
        tmp_path / "seg1" / "checkpoints" / "final.safetensors",
        tmp_path / "ddpm1" / "checkpoints" / "final.safetensors",
    )
    over.update(
        {
            "iterations_per_domain": 3,
            "batch_size": 2,  # not divisible by 4 processes: the main process fine-tunes
            "translate_batch_size": 1,  # 6 batches per domain: processes 0, 1 get two each
            "strip_images": 2,  # the default: one batch
        }
    )
    one = run_ptl(load_config(PTLConfig, None, over), tmp_path / "ptl1", progress=False)
    assert "processes" not in one and "finetuning" not in one

    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps({"out": str(tmp_path), "ptl": over}))
    script = tmp_path / "worker.py"
    script.write_text(PTL_WORKER)
    _launch(script, spec_path, 4)
    res = [json.loads((tmp_path / f"result_rank{r}.json").read_text()) for r in range(4)]
    assert [r["world"] for r in res] == [4] * 4 and [r["rank"] for r in res] == [0, 1, 2, 3]
    for r in res:
        assert r["ptl"]["processes"] == 4 and r["ptl"]["finetuning"] == "main process"
    written = json.loads((tmp_path / "ptl4" / "metrics.json").read_text())
    assert written["processes"] == 4 and written["finetuning"] == "main process"

    d1, d4 = (read_json(tmp_path / r / "domains.json") for r in ("ptl1", "ptl4"))
    assert [d["translated_images"] for d in d4] == [d["translated_images"] for d in d1] == [6, 6]
    for a, b in zip(d1, d4, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=LOSS_RTOL)
        assert b["loss_ada"] == pytest.approx(a["loss_ada"], rel=LOSS_RTOL)
    _close_weights(
        tmp_path / "ptl1" / "checkpoints" / "final.safetensors",
        tmp_path / "ptl4" / "checkpoints" / "final.safetensors",
        WEIGHT_ATOL,
    )
    # the strips: 2 images x (source + 2 domains), written once, the one-process pixels
    strips1 = sorted((tmp_path / "ptl1" / "strips").rglob("*.png"))
    strips4 = sorted((tmp_path / "ptl4" / "strips").rglob("*.png"))
    assert len(strips1) == 6
    assert [p.relative_to(tmp_path / "ptl1") for p in strips1] == [
        p.relative_to(tmp_path / "ptl4") for p in strips4
    ]
    for a, b in zip(strips1, strips4, strict=True):
        assert np.array_equal(_png(a), _png(b)), a


def test_single_process_needs_no_setup(monkeypatch):
    """No launcher: rank 0 of 1, accelerate untouched, collectives return their input."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not dist.launched()
    assert (dist.world_size(), dist.rank(), dist.is_main()) == (1, 0, True)
    t = torch.arange(3.0)
    assert dist.all_reduce_sum(t) is t
    assert dist.gather_objects([1, 2]) == [1, 2]
    assert dist.shard(list(range(5))) == [0, 1, 2, 3, 4]
    assert dist.shard(list(range(5)), 1, 2) == [1, 3]
    assert dist.local_batch_size(6) == 6
    model = torch.nn.BatchNorm2d(3)
    assert dist.sync_batchnorm(model) is model
    dist.barrier()


def test_sharded_batches_cover_the_global_batch():
    from diffdass.data.folder import StreamBatchSampler

    inner = StreamBatchSampler(10, 4, seed=0, start=0, stop=5)
    shards = [list(dist.ShardedBatchSampler(inner, r, 2)) for r in (0, 1)]
    assert [a + b for a, b in zip(*shards, strict=True)] == list(inner)


def test_batch_not_divisible_is_an_error(monkeypatch):
    monkeypatch.setattr(dist, "world_size", lambda: 3)
    with pytest.raises(ConfigError, match="not divisible by the 3 processes"):
        dist.local_batch_size(4)


def _png(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def test_all_reduce_sum_runs_on_the_collective_device(monkeypatch):
    """NCCL reduces only tensors on the process's GPU: ``all_reduce_sum`` moves any tensor to
    the collective device and returns the sum on the caller's device (translation's counters
    are CPU tensors). The collective device is faked as ``meta`` to tell the two apart."""
    import accelerate.utils

    seen = []

    def fake_reduce(t, reduction):
        seen.append((t.device, reduction))
        return torch.full(t.shape, 7, dtype=t.dtype)  # what the other processes added

    monkeypatch.setattr(dist, "launched", lambda: True)
    monkeypatch.setattr(dist, "collective_device", lambda: torch.device("meta"))
    monkeypatch.setattr(accelerate.utils, "reduce", fake_reduce)
    out = dist.all_reduce_sum(torch.tensor(3))
    assert seen == [(torch.device("meta"), "sum")]
    assert out.device == torch.device("cpu") and int(out) == 7


def test_collectives_go_through_the_device_safe_wrappers():
    """Only utils/distributed.py calls torch.distributed or accelerate's collectives; every
    other module uses its wrappers, which place tensors on the collective device."""
    import re

    src = Path(dist.__file__).resolve().parents[1]
    pattern = re.compile(r"torch\.distributed\.(all_reduce|broadcast|all_gather|reduce|gather)|"
                         r"accelerate\.utils import .*(reduce|gather)")  # fmt: skip
    offenders = [
        str(f.relative_to(src))
        for f in src.rglob("*.py")
        if f.name != "distributed.py" and pattern.search(f.read_text())
    ]
    assert offenders == []
