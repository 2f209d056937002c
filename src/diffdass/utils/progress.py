"""Progress of a training loop: a tqdm bar on a terminal, plain log lines elsewhere.

Every training loop reports through :class:`Progress`. When stderr is a terminal it draws a
tqdm bar; when it is not (a log file, ``nohup``, a CI job) it writes a plain line instead,
every ``every_fraction`` of the total (10%) or ``every_seconds`` (30 s), whichever comes
first, e.g.::

    train-seg: iteration 120/1200 (10%) loss 0.5321 lr 2.31e-04 img/s 14.2 ETA 0:03:12

The same lines go to the stage's ``run.log`` (through ``logger``) whether or not progress
is shown, so a run's log tells how it went.
"""

from __future__ import annotations

import logging
import sys
import time


def format_seconds(s: float) -> str:
    s = int(round(max(s, 0.0)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}"


def _fmt(key: str, value) -> str:
    name = key.replace("img_s", "img/s")
    if isinstance(value, float):
        value = f"{value:.2e}" if key == "lr" else f"{value:.4g}"
    return f"{name} {value}"


class Progress:
    """Report ``update(steps, **stats)`` calls of a loop of ``total`` steps.

    ``enabled``: show progress on stderr (``--quiet`` turns it off); ``logger``: receives
    the periodic lines in any case; ``run``: a :class:`~diffdass.utils.run.RunDir` whose
    ``position`` is kept current (an interrupt is logged with it).
    """

    def __init__(
        self,
        total: int,
        initial: int = 0,
        desc: str = "",
        enabled: bool = True,
        unit: str = "iteration",
        logger: logging.Logger | None = None,
        run=None,
        every_fraction: float = 0.1,
        every_seconds: float = 30.0,
        stream=None,
    ) -> None:
        self.total, self.n, self.initial = total, initial, initial
        self.desc, self.unit, self.logger, self.run = desc, unit, logger, run
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        try:
            self.tty = bool(self.stream.isatty())
        except (AttributeError, ValueError):
            self.tty = False
        self.step_n = max(1, int(total * every_fraction))
        self.every_seconds = every_seconds
        self.t0 = self.t_last = time.perf_counter()
        self.next_n = (initial // self.step_n + 1) * self.step_n
        self.bar = None
        if enabled and self.tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)
        self.stats: dict = {}
        self._set_position()

    def _set_position(self) -> None:
        if self.run is not None:
            self.run.position = f"{self.unit} {self.n} of {self.total}"

    def update(self, steps: int = 1, /, **stats) -> None:
        self.n += steps
        self.stats = stats
        self._set_position()
        if self.bar is not None:
            # refresh=False: tqdm redraws at its own pace, not at every step
            self.bar.set_postfix(
                {k: _fmt(k, v).split(" ", 1)[1] for k, v in stats.items()}, refresh=False
            )
            self.bar.update(steps)
        now = time.perf_counter()
        if self.n >= self.next_n or now - self.t_last >= self.every_seconds or self.n >= self.total:
            self.next_n = (self.n // self.step_n + 1) * self.step_n
            self.t_last = now
            self._emit(self.line(now))

    def line(self, now: float | None = None) -> str:
        now = time.perf_counter() if now is None else now
        pct = 100 * self.n / max(self.total, 1)
        parts = [f"{self.desc}: {self.unit} {self.n}/{self.total} ({pct:.0f}%)"]
        parts += [_fmt(k, v) for k, v in self.stats.items()]
        done, left = self.n - self.initial, self.total - self.n
        if done > 0 and left > 0:
            parts.append(f"ETA {format_seconds((now - self.t0) / done * left)}")
        elif left <= 0:
            parts.append(f"took {format_seconds(now - self.t0)}")
        return " ".join(parts)

    def _emit(self, line: str) -> None:
        if self.logger is not None:
            self.logger.info(line)
        if self.enabled and self.bar is None:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
