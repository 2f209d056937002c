"""Training curves for TensorBoard (and W&B): what a stage logs, and where.

Every training stage logs through a :class:`Tracker` that :class:`~diffdass.training.loop.TrainLoop`
opens on the main process: after every step, each numeric value of the step's stats (nested
dicts flattened as ``key/sub``, e.g. ``val_miou/19``) and the learning rate ``lr``, at the
step number (the global iteration, counted from 1; PTL: the domain), plus the image grids a
stage draws (the DDPM's samples, PTL's translations). TensorBoard event files go to
``<run>/tensorboard/``, written by :class:`torch.utils.tensorboard.SummaryWriter`
(``tensorboard --logdir RUN`` shows every stage of a ``diffdass run`` folder); a resumed
stage adds a file that continues the curves at the resumed step (its ``purge_step``:
TensorBoard drops what an interrupted process logged from there on).

``logging`` in a stage's config (or at the top of a ``diffdass run`` config, which shares it
with every stage) switches the outputs: ``tensorboard: true`` (the default) and ``wandb:
false`` (true: also log to Weights & Biases, which needs the ``wandb`` package).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffdass.utils.config import ConfigError

#: the sub-folder of a run directory that holds its TensorBoard event files
TENSORBOARD_DIR = "tensorboard"


@dataclass
class LoggingConfig:
    """Where a training stage logs its curves (see :mod:`diffdass.training.tracking`)."""

    tensorboard: bool = True  # event files in <run>/tensorboard/
    wandb: bool = False  # also Weights & Biases (needs the wandb package)

    def validate(self) -> None:
        if self.wandb:
            import_wandb()


def import_wandb():
    """The ``wandb`` module, or a one-line :class:`ConfigError` when it is not installed."""
    try:
        import wandb
    except ImportError:
        raise ConfigError(
            "logging.wandb: true needs the wandb package, which is not installed "
            "(pip install wandb), or set logging.wandb: false"
        ) from None
    return wandb


def flat_scalars(stats: dict, prefix: str = "") -> dict[str, float]:
    """The numeric values of ``stats`` as ``{tag: float}``; nested dicts become ``key/sub``,
    everything else (strings, lists, None, booleans) is left out."""
    out: dict[str, float] = {}
    for key, value in stats.items():
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_scalars(value, f"{tag}/"))
        elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
            value, (bool, np.bool_)
        ):
            out[tag] = float(value)
    return out


class Tracker:
    """Log scalars and images of run directory ``run_path`` (see the module).

    ``purge_step``: the first step this tracker logs when it continues earlier curves (a
    resumed run: TensorBoard drops what an interrupted process logged from there on);
    ``name``: the stage, W&B's run name and group; ``config``: W&B's run config.
    A tracker with every output off does nothing.
    """

    def __init__(
        self,
        run_path: str | Path,
        settings: LoggingConfig | None = None,
        purge_step: int | None = None,
        name: str = "",
        config: dict | None = None,
    ) -> None:
        settings = settings or LoggingConfig()
        self.run_path = Path(run_path)
        self.tb = None
        self.wandb_run = None
        if settings.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.run_path / TENSORBOARD_DIR), purge_step=purge_step)
        if settings.wandb:
            self.wandb_run = _wandb_run(self.run_path, name, config)

    @property
    def enabled(self) -> bool:
        return self.tb is not None or self.wandb_run is not None

    def scalars(self, stats: dict, step: int) -> dict[str, float]:
        """Log the numeric values of ``stats`` at ``step``; returns what was logged."""
        values = flat_scalars(stats)
        if self.tb is not None and values:
            for tag, value in values.items():
                self.tb.add_scalar(tag, value, step)
            self.tb.flush()  # on disk every step: a killed process leaves its curve behind
        if self.wandb_run is not None and values:
            self.wandb_run.log(values, step=step)
        return values

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """Log a uint8 ``(H, W, 3)`` (or ``(H, W)``) image (a grid of samples) at ``step``."""
        if self.tb is not None:
            image = np.ascontiguousarray(image)
            if image.dtype != np.uint8 or image.ndim not in (2, 3):
                raise ValueError(f"image {tag!r}: expected a uint8 (H, W) or (H, W, C) array")
            self.tb.add_image(tag, image, step, dataformats="HWC" if image.ndim == 3 else "HW")
            self.tb.flush()
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({tag: wandb.Image(image)}, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _wandb_run(run_path: Path, name: str, config: dict | None):
    """A W&B run for ``run_path``; its id is kept in ``<run>/wandb/run_id`` so that a
    resumed stage continues the same W&B run."""
    from diffdass.utils.io import atomic_write_text

    wandb = import_wandb()
    id_file = run_path / "wandb" / "run_id"
    run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:16]
    atomic_write_text(id_file, run_id + "\n")
    return wandb.init(
        project="diffdass",
        name=f"{run_path.name} ({name})" if name and name != run_path.name else run_path.name,
        group=str(run_path.resolve().parent),
        dir=str(run_path),
        id=run_id,
        resume="allow",
        config=config,
    )
