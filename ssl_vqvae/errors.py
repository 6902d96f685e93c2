"""The project's exceptions for bad input: one-line messages, printed without a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(ValueError):
    """Bad input (flag, config value, data file, workdir) that the user can fix.

    The message is one line naming the culprit (flag, config field or file:line) and what was
    expected; `cli.run` prints it as `error: <message>` and exits with status 1. Subclasses
    ValueError so callers of the Python API can keep catching ValueError.
    """


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder that the user named, or that an earlier stage should have written, is
    absent; also a FileNotFoundError for callers of the Python API."""


class TrainingDivergedError(UserError, FloatingPointError):
    """A logged metric turned NaN or infinite: a setting to change (learning rate, data), named
    in one line with the step range; the last checkpoint before it is kept."""


def did_you_mean(value: object, choices: Iterable[str]) -> str:
    """`"; did you mean 'x'?"` for the closest of `choices` to `value`, or "" if none is close."""
    matches = difflib.get_close_matches(str(value), [str(choice) for choice in choices], n=1)
    return f"; did you mean {matches[0]!r}?" if matches else ""
