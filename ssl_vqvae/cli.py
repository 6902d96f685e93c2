"""Shared plumbing of the command-line entry points (train.py, sample.py, evaluate.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import app, logging

# Errors we raise ourselves with a one-line, actionable message: print it, no traceback.
USER_ERRORS = (FileNotFoundError, ValueError, FloatingPointError)


def run(main: Callable[[list[str]], None]) -> None:
    """`app.run(main)`, quieting Orbax's INFO logs and turning user errors into one line."""

    def wrapped(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        logging.set_verbosity(logging.WARNING)
        try:
            main(argv)
        except USER_ERRORS as error:
            sys.exit(f"error: {error}")

    app.run(wrapped)
