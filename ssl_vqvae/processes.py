"""The processes of a multi-process run, and what only the main one does.

A run over several hosts (a TPU pod, a SLURM job, or local CPU processes) runs the same program
in every process, connected by `jax.distributed`. The computation is collective, so every
process takes every step, evaluation and checkpoint save (Orbax writes the shared files once).
Everything else a run writes (logs, plots, config records, reports, samples) and its console
output come from process 0 alone; the package asks which process it runs in only through
`is_main`, `main_only` and `write_once`.
"""

from __future__ import annotations

import functools
import os
import pathlib
import sys
from collections.abc import Callable
from typing import ParamSpec

import jax
import numpy as np
from jax.experimental import multihost_utils

from ssl_vqvae.errors import UserError

P = ParamSpec("P")
STDOUT_FD = 1


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Connects this process to the others (`jax.distributed.initialize`); call before any JAX
    computation. Arguments left None are detected on SLURM, TPU pods, Open MPI and Kubernetes
    (`coordinator_address` also from `$JAX_COORDINATOR_ADDRESS`). On CPU the processes exchange
    data through gloo, JAX's default CPU collectives.

    The standard output of every process but the main one (Python's and that of native code,
    such as gloo's connection messages) goes to /dev/null from here on, so prints and progress
    lines appear once; errors (stderr) still show from every process.

    Raises:
      UserError: the arguments are incomplete or inconsistent and cannot be detected.
    """
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    except (ValueError, TypeError) as error:
        raise UserError(
            f"jax.distributed.initialize: {str(error).rstrip('.')}; outside SLURM, TPU pods, "
            "Open MPI and Kubernetes pass --coordinator_address=<host of process 0>:<port>, "
            "--num_processes and --process_id"
        ) from None
    if not is_main():
        sys.stdout.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, STDOUT_FD)
        os.close(devnull)


def is_main() -> bool:
    """Whether this is process 0, the one that writes (True in a single-process run)."""
    return jax.process_index() == 0


def main_only(write: Callable[P, None]) -> Callable[P, None]:
    """Decorates a function that only writes files: it runs on the main process, and is a no-op
    on the others (which computed the same values)."""

    @functools.wraps(write)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> None:
        if is_main():
            write(*args, **kwargs)

    return wrapped


@main_only
def write_once(path: pathlib.Path, text: str) -> None:
    """Writes a small text file from the main process, atomically (a temporary file renamed into
    place), so that another process reading it meanwhile sees the old or the new file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def barrier(name: str) -> None:
    """Waits until every process arrives here (no-op in a single-process run)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def to_host(array: jax.Array | np.ndarray) -> np.ndarray:
    """The whole value of an array as numpy, in every process.

    An array split over the devices of several processes (e.g. a batch-sharded output) is
    gathered across them; anything else is read where it is.
    """
    if isinstance(array, jax.Array) and not (
        array.is_fully_addressable or array.is_fully_replicated
    ):
        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(array)
