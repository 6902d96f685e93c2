"""Run logging: one JSON line per logged step plus TensorBoard event files."""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Mapping

import numpy as np
from tensorboardX import SummaryWriter

from ssl_vqvae import processes
from ssl_vqvae.errors import TrainingDivergedError

METRICS_FILE = "metrics.jsonl"


class MetricWriter:
    """Appends `{"step": s, **metrics}` to `<workdir>/metrics.jsonl` and mirrors scalars to TB.

    Only process 0 writes, so a multi-host run keeps one log.

    Args:
      workdir: the run's folder.
      resume_step: the step training continues from (0 for a fresh run). The trainer logs a
        step's records before saving that step's checkpoint, so the records of steps after
        `resume_step` come from an interrupted run and will be logged again: they are dropped
        (and hidden from TensorBoard), which leaves each step in the log once, as in an
        uninterrupted run.
    """

    def __init__(self, workdir: str | pathlib.Path, resume_step: int):
        self.workdir = pathlib.Path(workdir)
        self._active = processes.is_main()
        if not self._active:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / METRICS_FILE
        if path.is_file():
            _drop_records_after(path, resume_step)
        self._jsonl = open(path, "a")
        self._tb = SummaryWriter(str(self.workdir / "tensorboard"), purge_step=resume_step + 1)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self._active:
            return
        scalars = {key: float(np.asarray(value)) for key, value in metrics.items()}
        self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
        self._jsonl.flush()
        for key, value in scalars.items():
            self._tb.add_scalar(key, value, int(step))

    def close(self) -> None:
        if not self._active:
            return
        self._jsonl.close()
        self._tb.close()


def _drop_records_after(path: pathlib.Path, step: int) -> None:
    """Rewrites a metrics file without its records of later steps, atomically.

    A process killed while writing leaves at most an unfinished last line (no newline): dropped.
    """
    lines = path.read_text().split("\n")[:-1]
    kept = [line + "\n" for line in lines if line.strip() and json.loads(line)["step"] <= step]
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(kept))
    os.replace(temporary, path)


def read_metrics(workdir: str | pathlib.Path) -> list[dict[str, float]]:
    """All records of `<workdir>/metrics.jsonl`, in order."""
    path = pathlib.Path(workdir) / METRICS_FILE
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def check_finite(metrics: Mapping[str, float], first_step: int, last_step: int) -> None:
    """Fails loudly, naming the step range, when a logged metric is NaN or infinite."""
    bad = {key: value for key, value in metrics.items() if not math.isfinite(float(value))}
    if bad:
        raise TrainingDivergedError(
            f"non-finite metrics {bad} between steps {first_step} and {last_step}; "
            "lower optim.learning_rate or check the data for extreme values"
        )
