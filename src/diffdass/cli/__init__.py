"""The ``diffdass`` command line (typer)."""
