"""The arguments every study over a finished run shares: the run folder and its data."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_run_args(ap: argparse.ArgumentParser) -> None:
    """``--run`` (a `diffdass run` folder) and ``--data`` (its benchmark root)."""
    ap.add_argument("--run", type=Path, default=Path("runs/benchmark"), help="run folder")
    ap.add_argument(
        "--data",
        type=Path,
        default=None,
        help="benchmark root (default: RUN/data; `diffdass ablate` keeps it in OUT/data)",
    )


def data_root(args: argparse.Namespace) -> Path:
    return args.data or args.run / "data"
