"""Reading one UCR archive file: tab-separated rows ``label<TAB>v1<TAB>v2...`` (SPEC §1).

Plain and gzipped files are told apart by their bytes, not their name. Every defect of a file
(unreadable gzip, wrong column count, non-numeric or infinite value, a column without any
number...) is a one-line `UserError` naming `file:line`.
"""

from __future__ import annotations

import gzip
import io
import pathlib
from collections.abc import Sequence

import numpy as np

from ssl_vqvae.errors import UserError

GZIP_MAGIC = b"\x1f\x8b"


def _read_text(path: pathlib.Path) -> str:
    """The text of a file, gunzipped when its bytes are gzip whatever its name says."""
    raw = path.read_bytes()
    if raw.startswith(GZIP_MAGIC):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise UserError(
                f"{path}: unreadable gzip data ({error}); expected a complete .tsv.gz file "
                "(truncated download?)"
            ) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(
            f"{path}: not a text file (byte {error.start} is not UTF-8); expected "
            "tab-separated rows 'label<TAB>v1<TAB>v2...', plain or gzipped"
        ) from None


def read_ucr_file(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads one UCR `.tsv` (plain or gzipped, told apart by content): label column, then values.

    Returns:
      (labels float64 [num_series], values float64 [num_series, length]); missing values are NaN.
    """
    rows = [line for line in _read_text(path).splitlines() if line.strip()]
    if not rows:
        raise UserError(f"{path}: empty file, expected tab-separated rows 'label<TAB>v1<TAB>v2...'")
    width = len(rows[0].split("\t"))
    if width < 2:
        raise UserError(f"{path}:1: expected a label and at least one value separated by tabs")
    for line_number, row in enumerate(rows, start=1):
        fields = row.split("\t")
        if len(fields) != width:
            raise UserError(
                f"{path}:{line_number}: expected {width} tab-separated columns "
                f"(as in row 1), got {len(fields)}"
            )
    try:
        table = np.loadtxt(io.StringIO("\n".join(rows)), delimiter="\t", dtype=np.float64, ndmin=2)
    except ValueError as error:
        line_number = _first_non_numeric_row(rows)
        raise UserError(
            f"{path}:{line_number}: non-numeric value; expected numbers or NaN ({error})"
        ) from None
    _check_numbers(table, path)
    return table[:, 0], table[:, 1:]


def _check_numbers(table: np.ndarray, path: pathlib.Path) -> None:
    """Rejects infinite values and value columns without a single number (e.g. trailing tabs)."""
    infinite = np.argwhere(np.isinf(table))
    if infinite.size:
        row, column = infinite[0] + 1
        raise UserError(
            f"{path}:{row}: column {column} is {table[row - 1, column - 1]}; expected finite "
            "numbers (NaN or an empty field for a missing value)"
        )
    empty = np.flatnonzero(np.all(np.isnan(table[:, 1:]), axis=0))
    if empty.size:
        raise UserError(
            f"{path}: column {empty[0] + 2} holds no number in any row; expected at least one "
            "value per column (a trailing tab on every line?)"
        )


def _first_non_numeric_row(rows: Sequence[str]) -> int:
    for line_number, row in enumerate(rows, start=1):
        try:
            [float(field) for field in row.split("\t")]
        except ValueError:
            return line_number
    return 0
