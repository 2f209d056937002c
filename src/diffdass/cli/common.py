"""Helpers shared by the CLI commands: config loading with flags, error reporting."""

from __future__ import annotations

import functools
import inspect
import os
import shutil
from pathlib import Path
from typing import Annotated

import typer

from diffdass.utils.config import ConfigError

# One convention for every command that reads a config: the YAML file is the positional
# CONFIG, and ``--config FILE`` / ``-c FILE`` says the same (either form; not both).
ConfigArg = Annotated[
    Path | None,
    typer.Argument(
        help="YAML config file of this command; flags and --set override its values.",
        metavar="CONFIG",
        show_default="none: the defaults",
    ),
]
PipelineConfigArg = Annotated[
    Path | None,
    typer.Argument(
        help="Pipeline YAML; flags and --set override its values.",
        metavar="CONFIG",
        show_default="the built-in CPU benchmark",
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="The same as CONFIG, given as an option.", show_default=False
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress bar.", show_default=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override any key of this command's config: --set KEY=VALUE, dotted for nested"
        " keys (repeatable; the keys are those of the command's config.yaml).",
        show_default=False,
    ),
]


def config_path(positional: Path | None, option: Path | None) -> Path | None:
    """The config file of a command: the positional ``CONFIG`` or ``--config`` (the same file
    given both ways is fine; two different files are refused)."""
    if positional is not None and option is not None and Path(positional) != Path(option):
        raise ConfigError(
            f"two config files given: {positional} (CONFIG) and {option} (--config); give one"
        )
    return positional if positional is not None else option


def error_message(exc: BaseException) -> str:
    """One line naming the file and the cause.

    An ``OSError`` raised by the system (``PermissionError``, ``IsADirectoryError``, ...)
    reads ``PATH: Permission denied``; every other error is its own message.
    """
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        where = str(exc.filename)
        if exc.filename2 is not None:
            where += f" -> {exc.filename2}"
        return f"{where}: {exc.strerror}"
    return str(exc)


def friendly_errors(fn):
    """Turn expected user errors into a one-line message and exit code 2 (no traceback).

    Expected errors are bad configs and data, unreadable or missing files, and file-system
    refusals (``OSError``: permissions, an existing folder that must not be replaced, ...).
    ``diffdass --debug CMD ...`` (or ``DIFFDASS_DEBUG=1``) re-raises them with the full
    traceback instead.
    """

    @functools.wraps(fn)
    def wrapper(*args, _ctx: typer.Context | None = None, **kwargs):
        from diffdass.data.folder import DataError

        try:
            return fn(*args, **kwargs)
        except (
            ConfigError,
            DataError,
            OSError,
            FloatingPointError,
            ValueError,
            RuntimeError,
        ) as exc:
            if _ctx is not None and _ctx.find_root().params.get("debug"):
                raise
            typer.secho(f"error: {error_message(exc)}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None

    # typer hands the click context to a parameter annotated ``typer.Context``: declare one
    # on the wrapper, so that it can read the global ``--debug`` option of the app callback
    sig = inspect.signature(fn, eval_str=True)
    ctx_param = inspect.Parameter("_ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
    wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), ctx_param])
    wrapper.__annotations__ = {**fn.__annotations__, "_ctx": typer.Context}
    return wrapper


def check_evaluate_out(out: Path) -> None:
    """``evaluate --out``: a new folder, or one holding an earlier evaluate output; never a run
    folder of another command or a folder inside one (checked before anything runs)."""
    from diffdass.utils.io import read_json
    from diffdass.utils.run import is_run_dir

    out = Path(out)
    for folder in (out, *out.resolve().parents):
        if is_run_dir(folder):
            where = "is" if folder == out else f"is inside {folder}, which is"
            raise ConfigError(
                f"{out}: {where} the run folder of another command (it holds config.yaml); "
                "evaluate writes only to its own folder -- use a folder outside any run"
            )
    if out.is_file():
        raise ConfigError(f"{out}: is a file; --out must be a folder")
    if out.is_dir() and any(out.iterdir()):
        m = out / "metrics.json"
        stage = read_json(m).get("stage") if m.is_file() else None
        if stage != "evaluate":
            raise ConfigError(
                f"{out}: is not empty and holds no earlier evaluate output; evaluate would mix "
                "its files with others -- use a new folder"
            )


def replace_folder(new: Path, dst: Path) -> None:
    """Put the finished folder ``new`` at ``dst``, replacing an earlier one whole: the old
    folder is moved aside, the new one renamed into place, then the old one removed."""
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    if dst.exists():
        dst.rename(old)
    new.rename(dst)
    if old.exists():
        shutil.rmtree(old)
