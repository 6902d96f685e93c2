"""`train.profile_steps`: a `jax.profiler` trace of a few steps inside a real run.

The trace starts after the run's first step (which compiles) and covers `num_steps` steps, each
waited for, so the timeline shows the device work of whole steps: open `<stage>/profile/` with
TensorBoard's profile plugin or Perfetto (the `.xplane.pb` / `.trace.json.gz` files).
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax

PROFILE_DIR = "profile"


class StepProfiler:
    """Starts and stops the trace around steps `first_step + 1 .. first_step + num_steps`.

    Args:
      directory: where the trace goes.
      num_steps: steps to trace (0: never trace).
      first_step: the step this run starts from (a resumed run counts from its checkpoint).
    """

    def __init__(self, directory: pathlib.Path, num_steps: int, first_step: int):
        self.directory, self.num_steps = directory, num_steps
        self.start = first_step + 1
        self.tracing = False

    def before(self, step: int) -> None:
        """Called before taking step `step` (0-based count of steps taken)."""
        if self.num_steps and step == self.start:
            self.directory.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.directory))
            self.tracing = True

    def after(self, step: int, state: Any) -> None:
        """Called after step `step` with its new state; ends the trace after the last one."""
        if self.tracing:
            jax.block_until_ready(state)
            if step + 1 == self.start + self.num_steps:
                self.close()
                print(f"wrote a profile of {self.num_steps} steps to {self.directory}")

    def close(self) -> None:
        """Stops a trace still running (a run that ended or stopped early)."""
        if self.tracing:
            jax.profiler.stop_trace()
            self.tracing = False
