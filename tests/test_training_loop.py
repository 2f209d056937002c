"""The one training loop (diffdass.training): resume bit for bit, checkpoint cadence, history,
hooks, and the refusals."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from diffdass.training import Hook, TrainLoop, first_last
from diffdass.utils.checkpoint import load_checkpoint, save_checkpoint
from diffdass.utils.config import ConfigError
from diffdass.utils.io import read_json
from diffdass.utils.run import RunDir


@dataclass
class ToyConfig:
    total: int = 10


class Stop(Exception):
    pass


def toy_loop(path, total=10, stop_at=None, hooks=(), every=3, tracking=None):
    """A linear model fitted by SGD on batches drawn from (seed, it): the loop's contract."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    run = RunDir(path, "toy")
    saves = []

    def batches(start):
        for it in range(start, total):
            g = torch.Generator().manual_seed(it)
            yield torch.randn(8, 4, generator=g)

    def step(it, x):
        if it == stop_at:
            raise Stop
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss.item(), "lr": 0.1, "tag": "a"}

    def save(p, it):
        saves.append(it)
        save_checkpoint(p, {"model": model}, opt, {"iteration": it})

    def load(p):
        return int(load_checkpoint(p, {"model": model}, opt)["iteration"])

    loop = TrainLoop(
        run, "toy", total, step, batches, save, load, checkpoint_every=every, hooks=hooks,
        progress=False, images=lambda x, _: x.shape[0], tracking=tracking,
    )  # fmt: skip
    with run.open(ToyConfig()):
        result = loop()
    return model, result, saves


def test_a_resumed_loop_ends_where_an_uninterrupted_one_does(tmp_path):
    straight, res, saves = toy_loop(tmp_path / "a")
    assert saves == [3, 6, 9, 10]  # every 3 steps, then the end
    assert [r["it"] for r in res.history] == list(range(10))
    assert res.history[0]["tag"] == "a" and res.images_per_second > 0
    with pytest.raises(Stop):
        toy_loop(tmp_path / "b", stop_at=7)
    # the interrupted run wrote its checkpoint and history at step 6
    assert [r["it"] for r in read_json(tmp_path / "b" / "loss_history.json")] == list(range(6))
    resumed, res_b, saves_b = toy_loop(tmp_path / "b")
    assert res_b.start == 6 and saves_b == [9, 10]
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    assert res_b.history == res.history
    assert read_json(tmp_path / "b" / "loss_history.json") == res.history
    assert "resuming from iteration 6 of 10" in (tmp_path / "b" / "run.log").read_text()


def test_hooks_see_every_step_before_its_checkpoint_and_the_end(tmp_path):
    seen = []

    class Record(Hook):
        def after_step(self, loop, it, stats):
            seen.append((it, loop.last.is_file()))

        def at_end(self, loop):
            seen.append(("end", len(loop.history)))

    toy_loop(tmp_path / "h", total=4, hooks=[Record()], every=2)
    # step 1's hook runs before the checkpoint of step 2 is written
    assert seen == [(0, False), (1, False), (2, True), (3, True), ("end", 4)]


def test_a_checkpoint_past_the_total_is_refused(tmp_path):
    toy_loop(tmp_path / "r", total=6)
    with pytest.raises(ConfigError, match="has trained 6 iterations, more than the 4"):
        toy_loop(tmp_path / "r", total=4)


def test_first_last_means_a_tenth_at_each_end():
    rows = [{"loss": float(i)} for i in range(20)]
    assert first_last(rows, "loss") == {"loss_first": 0.5, "loss_last": 18.5}
    assert first_last([{"loss": 2.0}], "loss", "x_") == {"x_loss_first": 2.0, "x_loss_last": 2.0}
    nan = first_last([], "loss")["loss_first"]
    assert nan != nan
