"""PNG figures written during training and evaluation (matplotlib, headless).

Only the main process of a multi-process run draws and writes them (`processes.main_only`).
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ssl_vqvae import processes  # noqa: E402


@processes.main_only
def plot_series_rows(
    path: str | pathlib.Path,
    rows: Sequence[tuple[str, np.ndarray]],
    title: str = "",
    max_columns: int = 4,
) -> None:
    """One figure row per (label, series [N, L, C]) pair, the first `max_columns` series each.

    Used for originals vs reconstructions (vs augmented views) and real vs generated samples.
    """
    columns = min(max_columns, min(len(series) for _, series in rows))
    figure, axes = plt.subplots(
        len(rows), columns, figsize=(3 * columns, 2 * len(rows)), squeeze=False, sharex=True
    )
    for row, (label, series) in enumerate(rows):
        for column in range(columns):
            axes[row, column].plot(np.asarray(series[column])[:, 0], lw=1)
            axes[row, column].tick_params(labelsize=6)
        axes[row, 0].set_ylabel(label, fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9)
    save_figure(figure, path)


def save_figure(figure: plt.Figure, path: str | pathlib.Path) -> None:
    """Lays out, writes (creating the folder) and closes a figure."""
    figure.tight_layout()
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
