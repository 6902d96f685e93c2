"""A real two-process run on one machine: 2 processes x 2 CPU devices vs 1 process x 4 devices.

The processes run `tests/multiprocess_worker.py` with the `--distributed` flags of every entry
point, connected by `jax.distributed`: coordinator on 127.0.0.1 at a free port, gloo CPU
collectives. The single-process reference runs the same functions in this process, whose 4
devices (conftest) take the same global batch of 16: a tiny stage 1 (ssl.method=none), stage 2
on it, a one-step VIbCReg stage 1, then sampling and encoding with the loaded experiment. The
two-process stage 1 resumes from the reference's step-4 checkpoint, and this process loads the
two-process checkpoints: checkpoints move either way between numbers of processes.

Equal bit for bit: the data stream (each checkpoint's iterator position), the step counts, the
logged steps and names, and whatever the models compute from the same checkpoint (samples, token
ids) in either number of processes. The trained values agree within tolerance: gloo adds the
cross-device sums (gradient, loss and BatchNorm means) of 2 x 2 devices in another order than
the in-process collectives of 4 devices, so already the first loss differs in its last bit.
AdamW's update is about +-lr whatever the gradient's size (exactly lr * sign(g) at the first
step), so roundoff that flips or zeroes a near-zero gradient moves a parameter by up to 2 * lr
per step; the logged losses, averages over everything, agree to about 1e-7 relative. For the SSL
methods the gradient itself differs more: max-pooling the straight-through codewords meets
near-exact ties that the roundoff breaks either way (tests/test_stage1.py::
test_one_step_on_four_devices_equals_one_device), so another position gets the gradient.
"""

import contextlib
import functools
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import chex
import jax
import multiprocess_worker as worker
import numpy as np
import pytest

from ssl_vqvae import layout
from ssl_vqvae.checkpoints import Checkpointer
from ssl_vqvae.metric_log import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 2
LAUNCH_TIMEOUT_S = 420
RESUME_STEP = 4
TIMING_KEY = "train/steps_per_second"  # wall-clock, differs between any two runs
# Tolerances of the logged values, relative but for the probes' accuracies (on 150 test series,
# which flip for series near the decision boundary). Train losses are averages over the steps
# since the last log; evaluations see the parameters after the updates.
TRAIN_RTOL = 1e-4  # largest measured: 5e-7
EVAL_RTOL = 1e-3  # largest measured: 3e-6
PROBE_KEYS = ("eval/svm_accuracy", "eval/knn_accuracy")
PROBE_ATOL = 0.1
SSL_GRAD_NORM_RTOL = 0.5  # the gradient follows the ties; measured: 0.09

Logs = list[tuple[str, str]]  # (stdout, stderr) of each process


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def _launched(arguments: list[str], logs: pathlib.Path) -> Iterator[Callable[[], Logs]]:
    """Starts `python <arguments> --distributed ...` as 2 local processes of 2 CPU devices;
    yields `wait`, which returns their logs once both succeeded and fails the test otherwise.

    Each process leads its own process group, killed with everything in it on leaving the
    context, on the first failure, and once the launch ran for LAUNCH_TIMEOUT_S.
    """
    address = f"127.0.0.1:{_free_port()}"
    xla_flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ["XLA_FLAGS"])
    env = {
        **os.environ,
        "XLA_FLAGS": f"{xla_flags} --xla_force_host_platform_device_count={DEVICES_PER_PROCESS}",
        "JAX_PLATFORMS": "cpu",
        "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
        "JAX_COORDINATOR_BIND_ADDRESS": address,
        "PYTHONPATH": str(ROOT),
    }
    logs.mkdir(parents=True)
    children = []
    try:
        for index in range(NUM_PROCESSES):
            distributed = [
                "--distributed",
                f"--coordinator_address={address}",
                f"--num_processes={NUM_PROCESSES}",
                f"--process_id={index}",
            ]
            with (
                open(logs / f"stdout{index}", "w") as stdout,
                open(logs / f"stderr{index}", "w") as stderr,
            ):
                children.append(
                    subprocess.Popen(
                        [sys.executable, *arguments, *distributed],
                        cwd=ROOT,
                        env=env,
                        stdout=stdout,
                        stderr=stderr,
                        start_new_session=True,
                    )
                )
        yield functools.partial(_wait, children, logs, time.monotonic() + LAUNCH_TIMEOUT_S)
    finally:
        _kill(children)


def _kill(children: list[subprocess.Popen]) -> None:
    for child in children:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


def _wait(children: list[subprocess.Popen], logs: pathlib.Path, deadline: float) -> Logs:
    while any(child.poll() is None for child in children):
        if time.monotonic() > deadline or any(child.poll() for child in children):
            _kill(children)
        time.sleep(0.2)
    outputs = [
        ((logs / f"stdout{i}").read_text(), (logs / f"stderr{i}").read_text())
        for i in range(NUM_PROCESSES)
    ]
    codes = [child.returncode for child in children]
    if codes != [0] * NUM_PROCESSES:
        tails = "".join(f"\n--- process {i}:\n{err[-3000:]}" for i, (_, err) in enumerate(outputs))
        pytest.fail(f"exit codes {codes} (-9: killed after an error or timeout){tails}")
    return outputs


def _stage_dir(root: pathlib.Path, stage: str = "stage1", experiment=worker.EXPERIMENT_DIR):
    return root / experiment / stage


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """`{"single": (root, outputs), "two": (root, outputs per process), "logs": Logs}`.

    The two-process run starts from a copy of the reference's stage 1 at step 4 and runs while
    the reference trains its other stages.
    """
    single, two = tmp_path_factory.mktemp("single"), tmp_path_factory.mktemp("two")
    worker.train_tokenizer(single)
    shutil.copytree(_stage_dir(single), _stage_dir(two))
    for step in (_stage_dir(two) / "checkpoints").iterdir():
        if step.name.isdigit() and int(step.name) > RESUME_STEP:
            shutil.rmtree(step)
    logs = two.parent / "two_logs"
    with _launched(["tests/multiprocess_worker.py", f"--root={two}"], logs) as wait:
        worker.train_others(single)
        single_outputs = worker.use(single)
        two_logs = wait()
    two_outputs = []
    for index in range(NUM_PROCESSES):
        with np.load(two / f"process{index}.npz") as stored:
            two_outputs.append(dict(stored))
    return {"single": (single, single_outputs), "two": (two, two_outputs), "logs": two_logs}


def _checkpoint(stage_dir: pathlib.Path, step: int) -> dict:
    checkpointer = Checkpointer(stage_dir / "checkpoints", read_only=True)
    try:
        return checkpointer.read_stored(step)
    finally:
        checkpointer.close()


def _assert_runs_close(
    actual: pathlib.Path, expected: pathlib.Path, step: int, grad_norm_rtol: float = TRAIN_RTOL
) -> None:
    """Two runs of one stage: the checkpoint of `step` and the logs (see module docstring)."""
    got, want = _checkpoint(actual, step), _checkpoint(expected, step)
    assert got["record"] == want["record"]  # data position, log window, evaluator state
    assert got["model_spec"] == want["model_spec"]
    assert int(got["train"]["step"]) == int(want["train"]["step"]) == step
    learning_rate = layout.read_config(actual).optim.learning_rate
    chex.assert_trees_all_close(
        got["model"]["params"], want["model"]["params"], atol=2 * learning_rate * step
    )
    records = [read_metrics(path) for path in (actual, expected)]
    assert [sorted(r) for r in records[0]] == [sorted(r) for r in records[1]]
    for got_record, want_record in zip(*records, strict=True):
        assert got_record["step"] == want_record["step"]
        for key in got_record.keys() - {"step", TIMING_KEY}:
            if key in PROBE_KEYS:
                tolerance = {"atol": PROBE_ATOL}
            elif key == "train/grad_norm":
                tolerance = {"rtol": grad_norm_rtol}
            else:
                tolerance = {"rtol": TRAIN_RTOL if key.startswith("train/") else EVAL_RTOL}
            np.testing.assert_allclose(got_record[key], want_record[key], **tolerance, err_msg=key)


def test_two_processes_train_as_one_process(runs):
    (two, _), (single, _) = runs["two"], runs["single"]
    assert f"resumed from step {RESUME_STEP}" in runs["logs"][0][0]  # the reference's step
    _assert_runs_close(_stage_dir(two), _stage_dir(single), worker.STAGE1_STEPS)
    _assert_runs_close(_stage_dir(two, "stage2"), _stage_dir(single, "stage2"), worker.STAGE2_STEPS)


def test_ssl_method_agrees_within_tolerance(runs):
    actual, expected = (
        _stage_dir(runs[name][0], experiment=worker.VIBCREG_DIR) for name in ("two", "single")
    )
    _assert_runs_close(actual, expected, worker.VIBCREG_STEPS, SSL_GRAD_NORM_RTOL)


def test_sampling_and_encoding_run_sharded_across_processes(runs):
    """Both processes get exactly what this process gets from their checkpoints."""
    two, outputs = runs["two"]
    expected = worker.use(two)
    assert jax.process_count() == 1 and jax.device_count() == NUM_PROCESSES * DEVICES_PER_PROCESS
    for process_outputs in outputs:
        chex.assert_trees_all_equal(process_outputs, expected)
    assert expected["samples"].shape[0] == worker.NUM_SAMPLES
    assert len(np.unique(expected["tokens"])) > 1


def _written_files(root: pathlib.Path) -> list[str]:
    """The files of the experiments under `root`, sorted; a checkpoint step as its items (their
    insides are Orbax's, e.g. one OCDBT folder per process) and an event file as `<events>`."""
    files = set()
    for path in root.rglob("*"):
        parts = path.relative_to(root).parts
        if "checkpoints" in parts:
            files.add("/".join(parts[: parts.index("checkpoints") + 3]))  # .../<step>/<item>
        elif path.is_file() and parts[0] in (worker.EXPERIMENT_DIR, worker.VIBCREG_DIR):
            name = "<events>" if path.name.startswith("events.out.tfevents") else path.name
            files.add("/".join((*parts[:-1], name)))
    return sorted(files)


def test_only_process_0_writes_and_prints(runs):
    two, single = runs["two"][0], runs["single"][0]
    assert _written_files(two) == _written_files(single)
    # Stage 1 continued the reference's log; stage 2 and the VIbCReg stage 1 began here.
    for stage_dir in (_stage_dir(two, "stage2"), _stage_dir(two, experiment=worker.VIBCREG_DIR)):
        assert len(list((stage_dir / "tensorboard").iterdir())) == 1
    for stage_dir in (
        *(two / worker.EXPERIMENT_DIR).iterdir(),
        *(two / worker.VIBCREG_DIR).iterdir(),
    ):
        lines = (stage_dir / "metrics.jsonl").read_text().splitlines()
        assert len(set(lines)) == len(lines)  # a train and an eval record per step, once each
    (out0, err0), (out1, err1) = runs["logs"]
    assert "[stage1] GunPoint" in out0 and "[stage2] GunPoint" in out0
    assert "stage2: 100%|" in err0  # tqdm's progress bar
    assert out1 == ""
    assert "%|" not in err1
