"""Nothing lost under kill -9, SIGTERM or Ctrl-C; damaged checkpoints; resumes that say so.

The unit tests drive `training.fit` in process with a toy step. The fault test runs the real
trainers (stage 1, stage 2, the FCN/CAS classifier) as subprocesses through the harness of
`benchmarks/fault_soak.py`, kills them (SIGKILL between steps and while a checkpoint is being
written, SIGTERM), reruns the same command and compares the end with an uninterrupted run.
"""

import json
import pathlib
import shutil
import signal
import struct
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2
from tensorboardX.proto.event_pb2 import SessionLog

from ssl_vqvae import artifacts, sharding, train_state, training
from ssl_vqvae.artifacts import DataInfo, ModelSpec
from ssl_vqvae.checkpoints import Checkpointer
from ssl_vqvae.data import Split
from ssl_vqvae.errors import UserError
from ssl_vqvae.input_pipeline import TrainBatches
from ssl_vqvae.metric_log import MetricWriter, read_metrics

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import fault_soak  # noqa: E402

NUM_STEPS = 6
TIMING_KEY = fault_soak.TIMING_KEY


# The toy state is stored under the spec of a real module, so `load_model` can rebuild it.
TOY_SPEC = ModelSpec("FCN", {"num_classes": 2}, DataInfo("toy", 1, 1, 2, 0.0, 1.0))


def _toy_step(state: train_state.TrainState, batch, rng):
    del rng
    loss = jnp.mean(batch["x"])
    return state.replace(step=state.step + 1, params=state.params * 0.5 + loss), {"loss": loss}


def _toy_state(rng=None) -> train_state.TrainState:
    del rng
    return train_state.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=jnp.zeros(()),
        opt_state=jnp.zeros(()),
        variables={"stats": jnp.ones(3)},
    )


def _fit(workdir, num_steps=NUM_STEPS, train_step=_toy_step, **loop_options):
    """A fresh process's `fit` of the toy model: new initial state and batch iterator."""
    split = Split(np.arange(24, dtype=np.float32).reshape(24, 1, 1), np.zeros(24, np.int32))
    options = {"log_every": 2, "eval_every": 3, "checkpoint_every": 2, **loop_options}
    mesh = sharding.make_mesh()
    return training.fit(
        workdir=workdir,
        factory=train_state.StateFactory(_toy_state, jax.random.key(0)),
        spec=TOY_SPEC,
        train_step=train_step,
        batches=TrainBatches(split, 4, seed=0, mesh=mesh),
        mesh=mesh,
        rng=jax.random.key(0),
        loop=training.LoopConfig(num_steps=num_steps, **options),
        evaluate=lambda state, step: {"params": float(state.params)},
    )


def _signalling_step(signum: int, at_step: int, times: int):
    """The toy step that sends itself `signum` `times` times while taking step `at_step`."""

    def train_step(state, batch, rng):
        if int(state.step) + 1 == at_step:
            for _ in range(times):
                signal.raise_signal(signum)
        return _toy_step(state, batch, rng)

    return train_step


def _records(workdir):
    return [{k: v for k, v in r.items() if k != TIMING_KEY} for r in read_metrics(workdir)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    return jax.device_get(_fit(workdir)), _records(workdir)


@pytest.fixture
def guarded_signals():
    """Test handlers on SIGINT / SIGTERM, so a `fit` that failed to take them over records the
    signal instead of killing pytest; yields (received signals, the handler)."""
    received = []

    def handler(signum, frame):
        received.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield received, handler
    for sig, old in previous.items():
        signal.signal(sig, old)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_the_step_in_flight_exits_and_resumes_exactly(
    tmp_path, capsys, uninterrupted, guarded_signals, signum
):
    received, handler = guarded_signals
    # Twice: the second signal (a second Ctrl-C) must not cut the save short.
    with pytest.raises(training.Interrupted) as stopped:
        _fit(tmp_path, train_step=_signalling_step(signum, at_step=3, times=2))
    assert stopped.value.code == 128 + signum and not received
    assert (
        signal.getsignal(signal.SIGINT) is handler and signal.getsignal(signal.SIGTERM) is handler
    )
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "stopped by" in line]
    checkpoint = tmp_path / "checkpoints" / "3"
    assert len(lines) == 1 and f"stopped by {signal.Signals(signum).name}: saved step 3" in lines[0]
    assert str(checkpoint) in lines[0] and "to resume, rerun the same command" in lines[0]
    assert checkpoint.is_dir()

    final = _fit(tmp_path)
    assert f"resumed from step 3 (checkpoint {checkpoint})" in capsys.readouterr().out
    # Step 3 is mid log window (log_every=2): the step-4 record still averages steps 3 and 4.
    state, records = uninterrupted
    chex.assert_trees_all_equal(jax.device_get(final), state)
    assert _records(tmp_path) == records


def test_fresh_start_says_so(tmp_path, capsys):
    _fit(tmp_path, num_steps=1)
    assert f"started fresh (no checkpoint in {tmp_path / 'checkpoints'})" in capsys.readouterr().out


def _crash_at(step: int):
    def train_step(state, batch, rng):
        if int(state.step) + 1 == step:
            raise RuntimeError("crash")
        return _toy_step(state, batch, rng)

    return train_step


@pytest.mark.parametrize("minutes, expected", [(1e-9, 3), (0.0, None)])
def test_wall_clock_checkpoints(tmp_path, minutes, expected):
    """With a step interval longer than the run, only the clock saves before a crash."""
    with pytest.raises(RuntimeError, match="crash"):
        _fit(
            tmp_path,
            train_step=_crash_at(4),
            checkpoint_every=1000,
            checkpoint_every_minutes=minutes,
        )
    checkpointer = Checkpointer(tmp_path / "checkpoints", read_only=True)
    assert checkpointer.latest_step() == expected
    checkpointer.close()


def _state_data_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
    files = [path for path in (step_dir / "model" / "d").iterdir() if path.is_file()]
    assert files
    return files


def _truncate(step_dir: pathlib.Path) -> None:
    for path in _state_data_files(step_dir):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble(step_dir: pathlib.Path) -> None:
    for path in _state_data_files(step_dir):
        data = bytearray(path.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
        path.write_bytes(bytes(data))


def _remove_manifest(step_dir: pathlib.Path) -> None:
    (step_dir / "model" / "manifest.ocdbt").unlink()


def _garble_record(step_dir: pathlib.Path) -> None:
    (step_dir / "record" / "metadata").write_text('{"batches": {"epo')


DAMAGES = {
    "truncated": _truncate,
    "garbled": _garble,
    "missing file": _remove_manifest,
    "garbled record": _garble_record,
}


@pytest.fixture
def trained_to_4(tmp_path):
    """A run interrupted after its step-4 checkpoint (checkpoints 2 and 4, records to 4)."""
    _fit(tmp_path, num_steps=4)
    return tmp_path


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_latest_checkpoint_falls_back_to_the_previous(
    trained_to_4, capsys, uninterrupted, damage
):
    checkpoints = trained_to_4 / "checkpoints"
    DAMAGES[damage](checkpoints / "4")
    final = _fit(trained_to_4)
    out = capsys.readouterr().out
    reports = [line for line in out.splitlines() if "unreadable" in line]
    assert len(reports) == 1
    assert f"checkpoint {checkpoints / '4'} is unreadable (" in reports[0]
    assert reports[0].endswith("using the previous one (step 2)")
    assert f"resumed from step 2 (checkpoint {checkpoints / '2'})" in out
    state, records = uninterrupted
    chex.assert_trees_all_equal(jax.device_get(final), state)
    assert _records(trained_to_4) == records  # steps 3 and 4 logged once, by the rerun
    # The damaged step was deleted and saved again by the rerun.
    checkpointer = Checkpointer(checkpoints, read_only=True)
    assert int(checkpointer.read_stored(4)["train"]["step"]) == 4
    checkpointer.close()


def test_half_written_step_folder_falls_back(trained_to_4, capsys, uninterrupted):
    """A step folder holding only part of a checkpoint (as a non-atomic file system leaves)."""
    checkpoints = trained_to_4 / "checkpoints"
    (checkpoints / "6").mkdir()
    shutil.copy(checkpoints / "4" / "_CHECKPOINT_METADATA", checkpoints / "6")
    shutil.copytree(checkpoints / "4" / "record", checkpoints / "6" / "record")
    final = _fit(trained_to_4)
    out = capsys.readouterr().out
    assert f"checkpoint {checkpoints / '6'} is unreadable (" in out
    assert "using the previous one (step 4)" in out and "resumed from step 4" in out
    chex.assert_trees_all_equal(jax.device_get(final), uninterrupted[0])


def test_no_readable_checkpoint_is_a_one_line_user_error(trained_to_4, capsys):
    checkpoints = trained_to_4 / "checkpoints"
    for step in ("2", "4"):
        _remove_manifest(checkpoints / step)
    with pytest.raises(UserError) as error:
        _fit(trained_to_4)
    message = str(error.value)
    assert "\n" not in message and f"no readable checkpoint in {checkpoints}" in message
    assert "no earlier checkpoint left" in capsys.readouterr().out


def test_loading_the_model_of_a_damaged_run_is_a_one_line_user_error(trained_to_4):
    _remove_manifest(trained_to_4 / "checkpoints" / "4")
    with pytest.raises(UserError, match="checkpoints/4 is unreadable") as error:
        artifacts.load_model(trained_to_4, sharding.make_mesh())
    assert "\n" not in str(error.value)


def test_a_fallback_needs_two_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="max_to_keep=1"):
        Checkpointer(tmp_path, max_to_keep=1)


def _tensorboard_events(directory: pathlib.Path) -> list[event_pb2.Event]:
    """Every event of the TFRecord event files in `directory` (length, crc, data, crc)."""
    events = []
    for path in sorted(directory.iterdir()):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            events.append(event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length]))
            offset += 12 + length + 4
    return events


def test_metric_writer_drops_records_after_the_resume_step(tmp_path):
    lines = [json.dumps({"step": s, "train/loss": float(s)}) for s in (1, 2, 3, 4, 5)]
    lines.insert(3, json.dumps({"step": 3, "eval/x": 1.0}))
    # An unfinished last line, as a process killed while writing leaves it.
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 6, "tra')
    MetricWriter(tmp_path, resume_step=3).close()
    assert [(r["step"], sorted(r)) for r in read_metrics(tmp_path)] == [
        (1, ["step", "train/loss"]),
        (2, ["step", "train/loss"]),
        (3, ["step", "train/loss"]),
        (3, ["eval/x", "step"]),
    ]
    # TensorBoard hides the interrupted run's events from step 4 on (a purge marker).
    starts = [
        event.step
        for event in _tensorboard_events(tmp_path / "tensorboard")
        if event.HasField("session_log") and event.session_log.status == SessionLog.START
    ]
    assert starts == [4]


# ----------------------------------------------------------------------------- real trainers

SOAK_STEPS = 10
SOAK_SEED = 0


@pytest.fixture(scope="module")
def soaked(tmp_path_factory, request):
    """Each trainer killed by SIGKILL while saving a checkpoint and by SIGTERM, at random steps
    (fixed seed), resumed each time, next to an uninterrupted run. (More and plainer kills:
    `benchmarks/fault_soak.py`.) The compilation cache lives in pytest's cache folder, so a
    second session compiles nothing."""
    rng = np.random.default_rng(SOAK_SEED)
    plans = {
        name: fault_soak.plan_interruptions(rng, SOAK_STEPS, 2, during_save=1, sigterm=1)
        for name in ("stage1", "stage2", "classifier")
    }
    cache_dir = request.config.cache.mkdir("fault_soak_compilation_cache")
    results = fault_soak.soak(tmp_path_factory.mktemp("faults"), SOAK_STEPS, plans, cache_dir)
    return {result.trainer: result for result in results}


def test_interrupted_trainers_end_as_the_uninterrupted_ones(soaked):
    """One test for the three trainers: parametrized, pytest-xdist could run the soak on up to
    three workers."""
    assert sorted(soaked) == ["classifier", "stage1", "stage2"]
    for trainer, result in soaked.items():
        assert not result.differences, trainer  # final checkpoint leaf by leaf, metrics, summary
        problems = [attempt.problems for attempt in result.attempts]
        assert problems == [[]] * len(result.attempts), trainer
        labels = [attempt.interruption for attempt in result.interruptions]
        assert sorted(labels) == ["SIGKILL during a save", "SIGTERM"], trainer
        assert result.interruptions[labels.index("SIGKILL during a save")].killed_while_saving
        assert result.survived() == 2, trainer


def test_divergence_is_a_one_line_user_error_naming_the_steps():
    """A NaN metric stops the run with a message the CLI prints as one line, not a traceback."""
    from ssl_vqvae.errors import UserError
    from ssl_vqvae.metric_log import check_finite

    check_finite({"loss": 1.0}, 1, 50)
    with pytest.raises(UserError, match=r"non-finite metrics .*'loss'.* steps 51 and 100") as info:
        check_finite({"loss": float("nan"), "grad_norm": 2.0}, 51, 100)
    assert isinstance(info.value, FloatingPointError)
    assert "grad_norm" not in str(info.value)
