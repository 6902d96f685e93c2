"""Run logging: one JSON line per logged step plus TensorBoard event files."""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Mapping

import jax
import numpy as np
from tensorboardX import SummaryWriter


class MetricWriter:
    """Appends `{"step": s, **metrics}` to `<workdir>/metrics.jsonl` and mirrors scalars to TB.

    Only process 0 writes, so a multi-host run keeps one log.
    """

    def __init__(self, workdir: str | pathlib.Path):
        self.workdir = pathlib.Path(workdir)
        self._active = jax.process_index() == 0
        if not self._active:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.workdir / "metrics.jsonl", "a")
        self._tb = SummaryWriter(str(self.workdir / "tensorboard"))

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


def read_metrics(workdir: str | pathlib.Path) -> list[dict[str, float]]:
    """All records of `<workdir>/metrics.jsonl`, in order."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def check_finite(metrics: Mapping[str, float], first_step: int, last_step: int) -> None:
    """Fails loudly, naming the step range, when a logged metric is NaN or infinite."""
    bad = {key: value for key, value in metrics.items() if not math.isfinite(float(value))}
    if bad:
        raise FloatingPointError(
            f"non-finite metrics {bad} between steps {first_step} and {last_step}; "
            "lower optim.learning_rate or check the data for extreme values"
        )
