"""Run directories: every stage writes its resolved config, git revision, log, metrics and
checkpoints into one directory, so a result can always be traced and resumed.

::

    RUN/config.yaml       resolved configuration (defaults < YAML < flags), written once the
                          stage really starts (see docs/run_directories.md)
    RUN/git.txt           git revision (and "dirty" if the tree had changes) of the code
    RUN/stage.txt         the command that owns the folder (train-seg, train-ddpm, ptl, ...)
    RUN/run.log           log of every invocation of this stage (appended on resume)
    RUN/metrics.json      final metrics of the stage
    RUN/checkpoints/      safetensors checkpoints (``last.safetensors`` and named ones)
    RUN/.lock             held (an exclusive ``flock``) by the one process writing the folder;
                          it names that process (pid, command, start time); removed when it
                          ends (a killed process leaves it, and the next command takes it over)
"""

from __future__ import annotations

import fcntl
import logging
import os
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
    """A stage's output directory (the contract: docs/run_directories.md).

    Life of a run directory:

    1. :meth:`check` (reads only): refuses a folder that holds another command's output, and
       a *started* run (:meth:`started`: a checkpoint, ``metrics.json`` or one of the stage's
       ``artifacts`` exists) whose saved config differs from the new one in anything but
       ``resume_ignore`` -- mixing two configs in one run would make its results meaningless.
       A folder whose stage never started takes any config.
    2. :meth:`open`: creates the folder, takes its lock (one writer at a time: a second
       process gets a one-line error naming the holder; the lock of a killed process is
       released by the operating system and taken over), checks again under the lock, and
       logs to ``run.log`` (until :meth:`close`, which also releases the lock).
    3. :meth:`start`: records ``config.yaml`` and ``git.txt``; a stage calls it right before
       its first real work, so a failed attempt (bad data, bad settings) never locks the
       folder. :meth:`write_metrics` starts the run too.
    """

    #: relative glob patterns whose match marks a started run (besides the defaults)
    DEFAULT_ARTIFACTS: tuple[str, ...] = ("metrics.json", "checkpoints/*")

    def __init__(self, path: str | Path, stage: str, artifacts: tuple[str, ...] = ()) -> None:
        self.path = Path(path)
        self.stage = stage
        self.ckpt_dir = self.path / "checkpoints"
        self.artifacts = self.DEFAULT_ARTIFACTS + tuple(artifacts)
        self.logger = logging.getLogger(f"diffdass.{stage}")
        self.position: str | None = None  # e.g. "iteration 9 of 12" (for an interrupt)
        self.resume_point: str | None = None  # e.g. "iteration 8" (the last checkpoint)
        self._config = None
        self._handler: logging.Handler | None = None
        self._lock = None  # the open lock file while this process holds the folder

    # ---------------------------------------------------------------- state
    def evidence(self) -> list[str]:
        """The files that show this stage has started (relative paths)."""
        found = []
        for pattern in self.artifacts:
            found += sorted(
                str(p.relative_to(self.path))
                for p in self.path.glob(pattern)
                if p.is_file() and not p.name.startswith(".")  # not a temporary file
            )
        return found

    def started(self) -> bool:
        return bool(self.evidence())

    def owner(self) -> str | None:
        """The command that owns the folder (``stage.txt``; None for a new folder or one
        written by an older version)."""
        f = self.path / "stage.txt"
        return f.read_text(encoding="utf-8").strip() or None if f.is_file() else None

    def config_diff(self, config, resume_ignore: tuple[str, ...] = ()) -> list[str]:
        """Differences of ``config`` to the saved ``config.yaml`` (none without one)."""
        cfg_path = self.path / "config.yaml"
        if not cfg_path.is_file():
            return []
        import yaml

        old_d = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
        new_d = to_dict(config)
        try:  # keys a newer version added count as unchanged when they keep their default
            defaults = to_dict(type(config)())
        except TypeError:
            defaults = {}
        return _diff(old_d, new_d, ignore=resume_ignore, defaults=defaults)

    def check(
        self,
        config,
        resume_ignore: tuple[str, ...] = (),
        hints: dict[str, str] | None = None,
        allow=None,
    ) -> None:
        """Refuse what :meth:`open` must not take (see the class docstring); writes nothing.

        ``hints``: advice appended when a key differs; ``allow(key)``: a difference in
        ``key`` is accepted (e.g. the settings of a pipeline stage that has not started).
        """
        if self.metrics_path.is_file() and not is_run_dir(self.path):
            raise ConfigError(
                f"{self.path}: holds the output of another command (metrics.json but no "
                f"config.yaml); {self.stage} would overwrite it -- use a new output directory"
            )
        owner = self.owner()
        if owner is not None and owner != self.stage:
            raise ConfigError(
                f"{self.path}: holds a {owner} run; {self.stage} would mix its files with it -- "
                "use a new output directory"
            )
        evidence = self.evidence()
        if not evidence:
            return  # nothing was produced under the saved config: a new attempt may differ
        diff = [d for d in self.config_diff(config, resume_ignore) if not (allow and allow(d))]
        if diff:
            keys = {d.split(":", 1)[0] for d in diff}
            advice = "".join(f"; {hints[k]}" for k in sorted(keys) if hints and k in hints)
            shown = "; ".join(diff[:5]) + (f"; ... ({len(diff) - 5} more)" if len(diff) > 5 else "")
            raise ConfigError(
                f"{self.path}: holds a {self.stage} run with a different config ({shown})"
                f"{advice}; it has started ({', '.join(evidence[:3])}), so it can only be resumed "
                "with its own settings -- use a new output directory (-o NEW_DIR), restore the "
                f"old settings (see {self.path / 'config.yaml'}) to resume it, or delete "
                f"{self.path} to start over"
            )

    # ------------------------------------------------------------- lifecycle
    def open(
        self,
        config,
        resume_ignore: tuple[str, ...] = (),
        hints: dict[str, str] | None = None,
        allow=None,
    ) -> RunDir:
        """:meth:`check`, then create the folder, lock it, check again under the lock (another
        process may have written it meanwhile) and log to ``run.log``."""
        self.check(config, resume_ignore, hints, allow)
        self.path.mkdir(parents=True, exist_ok=True)
        self.acquire()
        try:
            self.check(config, resume_ignore, hints, allow)
        except BaseException:
            self.release()
            raise
        self.ckpt_dir.mkdir(exist_ok=True)
        self._config = config
        self.logger = self._attach_log()
        self.logger.info("%s: %s (git %s)", self.stage, " ".join(sys.argv), git_revision())
        return self

    def start(self) -> None:
        """Record ``config.yaml`` and ``git.txt``: the stage's first real work begins."""
        if self._config is None:
            return
        atomic_write_text(self.path / "config.yaml", dump_yaml(self._config))
        atomic_write_text(self.path / "git.txt", git_revision() + "\n")
        atomic_write_text(self.path / "stage.txt", self.stage + "\n")
        self._config = None

    def acquire(self) -> None:
        """Take the folder's exclusive lock (``RUN/.lock``) or raise ``RunLocked`` naming the
        process that holds it. Re-entrant for this object."""
        if self._lock is not None:
            return
        path = self.path / ".lock"
        while True:
            fh = open(path, "a+", encoding="utf-8")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                fh.close()
                raise RunLocked(
                    f"{self.path}: in use by {holder}; wait for it to end, or use another "
                    "output folder (-o)"
                ) from None
            # the holder removes the file when it releases: a lock on a removed file is no
            # lock, so take it again on the file now at the path
            try:
                same = os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            fh.close()
        fh.seek(0)
        fh.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        fh.write(f"pid {os.getpid()} ({' '.join(sys.argv)[:200]}), {self.stage}, since {started}\n")
        fh.flush()
        self._lock = fh

    def release(self) -> None:
        """Release the folder's lock and remove its file (while still holding it, so that a
        process waiting on the old file takes the lock again on a new one)."""
        if self._lock is not None:
            (self.path / ".lock").unlink(missing_ok=True)
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def close(self) -> None:
        """Stop logging to ``run.log`` (later stages' lines stay out of it) and release the
        folder's lock."""
        self._detach_log()
        self.release()

    def _detach_log(self) -> None:
        if self._handler is not None:
            logging.getLogger("diffdass").removeHandler(self._handler)
            self._handler.close()
            self._handler = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
                where = self.position or "before its first step"
                how = (
                    f"it continues from {self.resume_point}"
                    if self.resume_point
                    else "it starts again from the beginning (no checkpoint yet)"
                )
                self.logger.warning(
                    "%s interrupted at %s; re-run the same command with the same output "
                    "folder and settings to resume: %s",
                    self.stage,
                    where,
                    how,
                )
            elif exc is not None:
                self._log_to_files(
                    logging.ERROR, f"{self.stage} failed: {type(exc).__name__}: {exc}"
                )
        finally:
            self.close()

    def _attach_log(self) -> logging.Logger:
        setup_logging(None)  # the console handler
        root = logging.getLogger("diffdass")
        log_file = str((self.path / "run.log").resolve())
        self._detach_log()
        fh = logging.FileHandler(log_file)
        fh.setFormatter(_FORMAT)
        fh._diffdass_file = True  # type: ignore[attr-defined]
        root.addHandler(fh)
        self._handler = fh
        return logging.getLogger(f"diffdass.{self.stage}")

    def _log_to_files(self, level: int, msg: str) -> None:
        """A record for the open ``run.log`` files only (the console shows the error itself)."""
        record = self.logger.makeRecord(self.logger.name, level, __file__, 0, msg, (), None)
        for h in logging.getLogger("diffdass").handlers:
            if getattr(h, "_diffdass_file", False):
                h.handle(record)

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.json"

    def write_metrics(self, metrics: dict) -> Path:
        self.start()
        return write_json(self.metrics_path, metrics)

    def read_metrics(self) -> dict | None:
        return read_json(self.metrics_path) if self.metrics_path.is_file() else None


class RunLocked(ConfigError):
    """Another process holds the run folder (its lock file names it)."""


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
    if old != new and not _same_path(old, new):
        out.append(f"{prefix.rstrip('.')}: {old!r} -> {new!r}")
    return out


def _same_path(a, b) -> bool:
    """Two spellings of one file-system path (``runs/x`` and ``/work/runs/x``, ``./a`` and
    ``a``): not a config change. Only strings that name an existing path are compared this
    way, so ``"train"`` and ``"val"`` stay different values."""
    if not (isinstance(a, str) and isinstance(b, str) and a and b):
        return False
    pa, pb = Path(a), Path(b)
    if not (pa.exists() and pb.exists()):
        return False
    try:
        return pa.resolve() == pb.resolve()
    except OSError:
        return False


_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")


def setup_logging(log_file: str | Path | None = None, name: str = "diffdass") -> logging.Logger:
    """Log to ``log_file`` (appending) and warnings to stderr. Idempotent per file.

    A :class:`RunDir` attaches its own ``run.log`` handler and removes it when its stage ends;
    a handler added here stays until the process ends."""
    root = logging.getLogger("diffdass")
    root.setLevel(logging.INFO)
    fmt = _FORMAT
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
