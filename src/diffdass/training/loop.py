"""The one training loop every stage runs: segmenter training, the DDPM, PTL, CICLD and DACS.

A stage describes *what* a step does; :class:`TrainLoop` does the rest, the same way for all:

- **resume**: ``checkpoints/last.safetensors`` (when present) is loaded through the stage's
  ``load`` and the loop continues from the step it records; the history is cut to that step,
  so a resumed run writes the same history as an uninterrupted one;
- **checkpoint**: every ``checkpoint_every`` steps (and once at the end) the stage's ``save``
  writes ``last.safetensors``, and the history is written with it, so the two always agree;
- **history**: one JSON row per step (``{"it": step, **stats}``) in ``history_file``;
- **progress**: a bar on a terminal, periodic lines in ``run.log`` (:class:`Progress`),
  with the step's scalar stats and the images per second;
- **hooks**: :class:`Hook` objects called after every step and at the end (the DDPM's sample
  grids and snapshots);
- **curves**: the step's numeric stats and learning rate go to TensorBoard event files in
  ``<run>/tensorboard/`` (and W&B when asked), at the global step, through ``loop.tracker``
  (:mod:`~diffdass.training.tracking`; ``tracking`` switches the outputs);
- **several processes**: every process runs the steps (the stage's ``step`` shards its batch),
  only the main process writes checkpoints, history and hook output; a stage that does not
  shard its step says ``distributed=False`` and is refused under ``accelerate launch``;
- **mixed precision**: a step takes its bf16 context from
  :func:`diffdass.utils.device.autocast` (CUDA; also the CPU with ``amp: bf16``).

Reproducibility is the stage's: its ``step(it, batch)`` must depend only on ``(seed, it)``
and the weights, and ``batches(start)`` must yield the batches of steps ``start..total-1``
(:class:`~diffdass.data.folder.StreamBatchSampler`); the loop then resumes bit for bit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffdass.training.tracking import LoggingConfig, Tracker
from diffdass.utils import distributed as dist
from diffdass.utils.config import ConfigError
from diffdass.utils.io import read_json, write_json
from diffdass.utils.progress import Progress
from diffdass.utils.run import RunDir


class Hook:
    """Called by :class:`TrainLoop` on the main process. Override what you need."""

    def after_step(self, loop: TrainLoop, it: int, stats: dict) -> None:
        """After step ``it`` (0-based) and before its checkpoint is written."""

    def at_end(self, loop: TrainLoop) -> None:
        """After the last step and the last checkpoint."""


@dataclass
class LoopResult:
    """What a finished loop hands back to its stage."""

    history: list[dict]
    start: int  # the step the loop started (or resumed) at
    seconds: float  # wall time of the steps this call ran
    images_per_second: float | None  # over the steps this call ran (``images`` given)


@dataclass
class TrainLoop:
    """Run steps ``start..total-1`` of a stage in run directory ``run`` (see the module).

    ``step(it, batch) -> stats``: one step; ``stats`` (JSON values) make its history row;
    the progress shows its float values, or the keys ``show`` names. ``batches(start)``: the batches of the remaining steps.
    ``save(path, steps_done)`` / ``load(path) -> steps_done``: the resume checkpoint.
    ``images(batch, stats) -> int``: images the step consumed on this process (img/s).
    ``tracking``: TensorBoard / W&B outputs (None: the defaults, TensorBoard on); the curves
    hold every numeric stat at step ``it + 1``, and ``lr`` (read from the stat ``lr_key``).
    Hooks reach the open :class:`Tracker` as ``loop.tracker`` (image grids).
    """

    run: RunDir
    name: str
    total: int
    step: Callable[[int, Any], dict]
    batches: Callable[[int], Iterable]
    save: Callable[[Path, int], Any]
    load: Callable[[Path], int]
    checkpoint_every: int = 1000
    history_file: str = "loss_history.json"
    unit: str = "iteration"
    progress: bool = True
    images: Callable[[Any, dict], int] | None = None
    show: Sequence[str] | None = None
    hooks: Sequence[Hook] = ()
    distributed: bool = True
    resume_hint: str = ""  # appended to the error when a checkpoint is past ``total``
    tracking: LoggingConfig | None = None
    lr_key: str = "lr"
    history: list[dict] = field(default_factory=list)
    tracker: Tracker | None = None  # open while the steps run (main process)

    @property
    def last(self) -> Path:
        return self.run.ckpt_dir / "last.safetensors"

    @property
    def history_path(self) -> Path:
        return self.run.path / self.history_file

    def resume(self) -> int:
        """Load the last checkpoint (if any) and the history up to it; returns the start."""
        if dist.world_size() > 1 and not self.distributed:
            raise ConfigError(
                f"{self.name} trains on one process; run it without `accelerate launch` "
                "(or with --num_processes 1)"
            )
        start = self.load(self.last) if self.last.is_file() else 0
        if start > self.total:
            raise ConfigError(
                f"{self.run.path}: has trained {start} {self.unit}s, more than the "
                f"{self.total} configured" + (f"; {self.resume_hint}" if self.resume_hint else "")
            )
        if start:
            self.run.logger.info("resuming from %s %d of %d", self.unit, start, self.total)
            self.run.resume_point = f"the checkpoint at {self.unit} {start}"
        rows = read_json(self.history_path) if self.history_path.is_file() else []
        self.history = [_row(r) for r in rows][:start]
        return start

    def write(self, steps_done: int) -> None:
        """The resume checkpoint at ``steps_done`` and the history with it (main process)."""
        if dist.is_main():
            self.save(self.last, steps_done)
            write_json(self.history_path, self.history)
        self.run.resume_point = f"the checkpoint at {self.unit} {steps_done}"

    def __call__(self) -> LoopResult:
        """Resume, run the remaining steps, write the last checkpoint; see the module."""
        start = self.resume()
        self.run.start()
        main = dist.is_main()
        bar = Progress(
            self.total,
            start,
            self.name,
            enabled=self.progress and main,
            unit=self.unit,
            logger=self.run.logger if main else None,
            run=self.run,
        )
        # the main process logs, and only when steps remain (a finished run adds no file)
        logs = main and start < self.total
        tracking = (self.tracking or LoggingConfig()) if logs else LoggingConfig(False, False)
        config = self._config() if tracking.wandb else None
        self.tracker = Tracker(self.run.path, tracking, start + 1, self.name, config)
        try:
            return self._steps(start, main, bar)
        finally:
            self.tracker.close()

    def _config(self) -> dict | None:
        """The run's recorded config (W&B's run config)."""
        import yaml

        path = self.run.path / "config.yaml"
        return yaml.safe_load(path.read_text()) if path.is_file() else None

    def _steps(self, start: int, main: bool, bar: Progress) -> LoopResult:
        t0, seen, ips = time.perf_counter(), 0, None
        world = dist.world_size()
        for it, batch in enumerate(self.batches(start), start=start):
            stats = self.step(it, batch)
            self.history.append({"it": it, **stats})
            if self.images is not None:
                seen += self.images(batch, stats) * world
                ips = seen / max(time.perf_counter() - t0, 1e-9)
            if main:
                lr = stats.get(self.lr_key)
                self.tracker.scalars({**stats, **({"lr": lr} if lr is not None else {})}, it + 1)
                for hook in self.hooks:
                    hook.after_step(self, it, stats)
            if (it + 1) % self.checkpoint_every == 0 and it + 1 < self.total:
                self.write(it + 1)
            if self.show is None:
                shown = {k: v for k, v in stats.items() if isinstance(v, float)}
            else:
                shown = {k: stats[k] for k in self.show if k in stats}
            if ips is not None:
                shown["img_s"] = ips
            bar.update(1, **shown)
        bar.close()
        self.write(self.total)
        if main:
            for hook in self.hooks:
                hook.at_end(self)
        return LoopResult(self.history, start, time.perf_counter() - t0, ips)


def first_last(rows: Sequence[dict], key: str, prefix: str = "") -> dict:
    """``{key_first, key_last}``: the mean of ``key`` over the first and the last tenth of
    ``rows`` (at least one row each); NaN without rows."""
    vals = [float(r[key]) for r in rows if r.get(key) is not None]
    k = max(1, len(vals) // 10)
    first = sum(vals[:k]) / k if vals else math.nan
    last = sum(vals[-k:]) / k if vals else math.nan
    return {f"{prefix}{key}_first": first, f"{prefix}{key}_last": last}


def _row(r) -> dict:
    """A history row; ``[it, loss]`` pairs (segmenter runs of earlier versions) become dicts."""
    if isinstance(r, dict):
        return r
    return {"it": int(r[0]), "loss": float(r[1])}
