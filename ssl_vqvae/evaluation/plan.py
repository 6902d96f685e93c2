"""What an evaluation will do and roughly how long it takes, said before it starts.

The two FCN trainings dominate an evaluation on a CPU (the thesis protocol's CAS classifier is
1000 epochs over ~1000 synthetic series). The estimate times a few steps of the FCN update
(`classifier.compile_step`) at each training's batch shape on this machine, after compiling it
once, so it reflects this machine and its load; it leaves out sampling, probes and compiles.

Budgets: `thesis` is SPEC §5's protocol (1000-epoch FCNs); `quick` is an explicit, much
cheaper smoke budget whose numbers are not comparable with published ones.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssl_vqvae import pipeline, sharding, train_state
from ssl_vqvae.data import UCRDataset
from ssl_vqvae.evaluation import classifier
from ssl_vqvae.evaluation.fcn import FCN

TIMED_STEPS = 3


@dataclasses.dataclass(frozen=True)
class Budget:
    """Epochs of the FID/IS FCN and of the CAS FCN."""

    fcn_epochs: int
    cas_epochs: int


BUDGETS = {
    "thesis": Budget(fcn_epochs=classifier.DEFAULT_EPOCHS, cas_epochs=classifier.DEFAULT_EPOCHS),
    "quick": Budget(fcn_epochs=300, cas_epochs=30),
}


@dataclasses.dataclass(frozen=True)
class Training:
    """One FCN training of the plan: its steps and the measured seconds per step."""

    name: str
    epochs: int
    steps_per_epoch: int
    seconds_per_step: float
    cached: bool = False

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def seconds(self) -> float:
        return 0.0 if self.cached else self.steps * self.seconds_per_step

    def describe(self) -> str:
        if self.cached:
            return f"{self.name}: cached, {self.steps} steps not rerun"
        return (
            f"{self.name}: {self.epochs} epochs x {self.steps_per_epoch} steps = {self.steps} "
            f"steps x {1000 * self.seconds_per_step:.0f} ms ~ {_duration(self.seconds)}"
        )


def step_seconds(
    num_classes: int, length: int, channels: int, num_examples: int, mesh: jax.sharding.Mesh
) -> float:
    """Median wall time of the FCN update at its training batch shape, after one warm-up."""
    batch = pipeline.global_batch_size(classifier.BATCH_SIZE, num_examples, mesh.size)
    model = FCN(num_classes=num_classes)
    optimizer = train_state.make_optimizer(optax.constant_schedule(0.0), classifier.WEIGHT_DECAY)
    example = jax.ShapeDtypeStruct((1, length, channels), jnp.float32)
    init = train_state.module_init(model, optimizer, example, train=False)
    state = train_state.StateFactory(init, jax.random.key(0)).initialise(mesh)
    step = classifier.compile_step(model, optimizer, mesh)
    rng = np.random.default_rng(0)
    host = {
        "x": rng.standard_normal((batch, length, channels)).astype(np.float32),
        "y": rng.integers(0, num_classes, batch).astype(np.int32),
    }
    data = sharding.shard_batch(host, mesh)
    times = []
    for _ in range(TIMED_STEPS + 1):
        start = time.perf_counter()
        state, metrics = step(state, data, jax.random.key(0))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def fcn_trainings(
    dataset: UCRDataset,
    mesh: jax.sharding.Mesh,
    epochs: Budget,
    num_synthetic: int,
    fcn_cached: bool,
) -> list[Training]:
    """The FID/IS FCN (on the real train split) and the CAS FCN (on the synthetic set)."""
    trainings = []
    for name, num_examples, length, num_epochs, cached in (
        ("FID/IS FCN", len(dataset.train), dataset.length, epochs.fcn_epochs, fcn_cached),
        ("CAS FCN", num_synthetic, 2 * (dataset.length // 2), epochs.cas_epochs, False),
    ):
        seconds = (
            0.0
            if cached
            else step_seconds(dataset.num_classes, length, dataset.channels, num_examples, mesh)
        )
        per_epoch = classifier.steps_per_epoch(num_examples, classifier.BATCH_SIZE, mesh.size)
        trainings.append(Training(name, num_epochs, per_epoch, seconds, cached))
    return trainings


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def describe(trainings: list[Training], budget_name: str) -> str:
    """One line per training and the total, as printed before the evaluation starts."""
    total = sum(t.seconds for t in trainings)
    lines = [f"[evaluate] plan ({budget_name} budget), estimated {_duration(total)} of training:"]
    lines += [f"[evaluate]   {t.describe()}" for t in trainings]
    return "\n".join(lines)
