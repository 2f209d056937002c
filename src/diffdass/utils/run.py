"""Run directories: every stage writes its resolved config, git revision, log, metrics and
checkpoints into one directory, so a result can always be traced and resumed.

::

    RUN/config.yaml       resolved configuration (defaults < YAML < flags)
    RUN/git.txt           git revision (and "dirty" if the tree had changes) of the code
    RUN/run.log           log of every invocation (appended on resume)
    RUN/metrics.json      final metrics of the stage
    RUN/checkpoints/      safetensors checkpoints (``last.safetensors`` and named ones)
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

from diffdass.utils.config import ConfigError, dump_yaml, to_dict
from diffdass.utils.io import atomic_write_text, read_json, write_json

PACKAGE_ROOT = Path(__file__).resolve().parents[3]


def git_revision(cwd: str | Path | None = None) -> str:
    """``<sha>`` or ``<sha>-dirty`` of the diffdass source tree, ``unknown`` outside git."""
    cwd = Path(cwd) if cwd else PACKAGE_ROOT
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return f"{sha}-dirty" if dirty else sha
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class RunDir:
    """A stage's output directory.

    ``strict_config=True`` (default) refuses to resume a run whose saved config differs
    from the new one in anything but ``ignore_keys`` (e.g. the number of iterations may
    grow), because mixing two configs in one run would make its results meaningless.
    """

    def __init__(self, path: str | Path, stage: str) -> None:
        self.path = Path(path)
        self.stage = stage
        self.ckpt_dir = self.path / "checkpoints"

    def open(self, config, resume_ignore: tuple[str, ...] = ()) -> RunDir:
        if self.metrics_path.is_file() and not is_run_dir(self.path):
            raise ConfigError(
                f"{self.path}: holds the output of another command (metrics.json but no "
                f"config.yaml); {self.stage} would overwrite it -- use a new output directory"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        self.ckpt_dir.mkdir(exist_ok=True)
        cfg_path = self.path / "config.yaml"
        new = dump_yaml(config)
        if cfg_path.is_file():
            import yaml

            old_d = yaml.safe_load(cfg_path.read_text()) or {}
            new_d = to_dict(config)
            try:  # keys a newer version added count as unchanged when they keep their default
                defaults = to_dict(type(config)())
            except TypeError:
                defaults = {}
            diff = _diff(old_d, new_d, ignore=resume_ignore, defaults=defaults)
            if diff:
                raise ConfigError(
                    f"{self.path}: holds a run with a different config ({'; '.join(diff[:5])}); "
                    "use a new output directory or restore the old settings"
                )
        atomic_write_text(cfg_path, new)
        atomic_write_text(self.path / "git.txt", git_revision() + "\n")
        self.logger = setup_logging(self.path / "run.log", name=f"diffdass.{self.stage}")
        self.logger.info("%s: %s (git %s)", self.stage, " ".join(sys.argv), git_revision())
        return self

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.json"

    def write_metrics(self, metrics: dict) -> Path:
        return write_json(self.metrics_path, metrics)

    def read_metrics(self) -> dict | None:
        return read_json(self.metrics_path) if self.metrics_path.is_file() else None


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a stage's run directory (:meth:`RunDir.open` writes ``config.yaml``
    into every one, and no other command writes that file).

    Commands that write loose outputs (``diffdass evaluate``) refuse such a directory, so that
    no command's ``metrics.json`` replaces another's.
    """
    return (Path(path) / "config.yaml").is_file()


def _diff(old, new, ignore=(), prefix="", defaults=None) -> list[str]:
    out = []
    if isinstance(old, dict) and isinstance(new, dict):
        defaults = defaults if isinstance(defaults, dict) else {}
        for k in sorted(set(old) | set(new)):
            key = f"{prefix}{k}"
            if key in ignore:
                continue
            if k not in old and k in defaults and new.get(k) == defaults[k]:
                continue  # a key added by a newer version, at its default
            out += _diff(old.get(k), new.get(k), ignore, key + ".", defaults.get(k))
        return out
    if old != new:
        out.append(f"{prefix.rstrip('.')}: {old!r} -> {new!r}")
    return out


def setup_logging(log_file: str | Path | None = None, name: str = "diffdass") -> logging.Logger:
    """Log to ``log_file`` (appending) and to stderr. Idempotent per file."""
    root = logging.getLogger("diffdass")
    root.setLevel(logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    if not any(getattr(h, "_diffdass_console", False) for h in root.handlers):
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(fmt)
        sh.setLevel(logging.WARNING)
        sh._diffdass_console = True  # type: ignore[attr-defined]
        root.addHandler(sh)
    if log_file is not None:
        log_file = str(Path(log_file).resolve())
        if not any(getattr(h, "baseFilename", None) == log_file for h in root.handlers):
            fh = logging.FileHandler(log_file)
            fh.setFormatter(fmt)
            root.addHandler(fh)
    return logging.getLogger(name)


class Timer:
    """Wall-clock timer: ``with Timer() as t: ...; t.seconds``."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
