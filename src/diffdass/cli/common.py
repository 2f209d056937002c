"""Helpers shared by the CLI commands: config loading with flags, error reporting."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from diffdass.utils.config import ConfigError, load_config, parse_set

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML config file; flags override its values.", show_default=False
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override any config key: --set optim.lr=0.01 (repeatable).",
        show_default=False,
    ),
]


def build_config(
    cls, config: Path | None, sets: list[str] | None, flags: dict[str, Any], validate: bool = True
):
    """defaults < YAML < --set < explicit flags."""
    overrides = parse_set(sets)
    overrides.update({k: v for k, v in flags.items() if v is not None})
    return load_config(cls, config, overrides, validate=validate)


def friendly_errors(fn):
    """Turn expected user errors into a one-line message and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from diffdass.data.folder import DataError

        try:
            return fn(*args, **kwargs)
        except (
            ConfigError,
            DataError,
            FileNotFoundError,
            FloatingPointError,
            ValueError,
            RuntimeError,
        ) as exc:
            if "--debug" in sys.argv or __import__("os").environ.get("DIFFDASS_DEBUG"):
                raise
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None

    return wrapper
