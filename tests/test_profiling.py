"""`train.profile_steps`: a profiler trace of the chosen steps inside a real run."""

import jax
import jax.numpy as jnp
import numpy as np

from ssl_vqvae import profiling, sharding, train_state, training
from ssl_vqvae.artifacts import DataInfo, ModelSpec
from ssl_vqvae.data import Split
from ssl_vqvae.input_pipeline import TrainBatches

SPEC = ModelSpec("FCN", {"num_classes": 2}, DataInfo("toy", 1, 1, 2, 0.0, 1.0))


def _toy_state(rng):
    del rng
    return train_state.TrainState(jnp.zeros((), jnp.int32), jnp.zeros(()), jnp.zeros(()), {})


def _toy_step(state, batch, rng):
    del rng
    loss = jnp.mean(batch["x"])
    return state.replace(step=state.step + 1, params=state.params + loss), {"loss": loss}


def test_trace_covers_the_steps_after_the_first(monkeypatch, tmp_path):
    events, current = [], {}
    monkeypatch.setattr(
        jax.profiler, "start_trace", lambda d: events.append(("start", current["step"], d))
    )
    monkeypatch.setattr(
        jax.profiler, "stop_trace", lambda: events.append(("stop", current["step"]))
    )
    profiler = profiling.StepProfiler(tmp_path / "profile", num_steps=3, first_step=10)
    for step in range(10, 20):
        current["step"] = step
        profiler.before(step)
        profiler.after(step, jnp.zeros(()))
    # Run resumed at step 10: step 10 compiles; steps 11, 12, 13 are traced.
    assert events == [("start", 11, str(tmp_path / "profile")), ("stop", 13)]
    profiler.close()  # nothing left to stop
    assert len(events) == 2


def test_off_by_default_and_closed_when_the_run_ends_early(monkeypatch, tmp_path):
    events = []
    monkeypatch.setattr(jax.profiler, "start_trace", lambda d: events.append("start"))
    monkeypatch.setattr(jax.profiler, "stop_trace", lambda: events.append("stop"))
    for step in range(5):
        profiling.StepProfiler(tmp_path, num_steps=0, first_step=0).before(step)
    assert events == []
    profiler = profiling.StepProfiler(tmp_path, num_steps=100, first_step=0)
    profiler.before(1)
    profiler.close()
    assert events == ["start", "stop"]


def test_fit_writes_a_trace(tmp_path, capsys):
    split = Split(np.arange(16, dtype=np.float32).reshape(16, 1, 1), np.zeros(16, np.int32))
    mesh = sharding.make_mesh()
    training.fit(
        workdir=tmp_path,
        factory=train_state.StateFactory(_toy_state, jax.random.key(0)),
        spec=SPEC,
        train_step=_toy_step,
        batches=TrainBatches(split, 4, 0, mesh),
        mesh=mesh,
        rng=jax.random.key(0),
        loop=training.LoopConfig(
            num_steps=5, log_every=5, eval_every=100, checkpoint_every=5, profile_steps=2
        ),
    )
    traces = list((tmp_path / profiling.PROFILE_DIR).rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    assert f"wrote a profile of 2 steps to {tmp_path / profiling.PROFILE_DIR}" in (
        capsys.readouterr().out
    )
