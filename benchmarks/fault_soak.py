"""Fault soak: trainers killed at random points and resumed must end as if never interrupted.

Each trainer (stage 1 VIbCReg `:tiny`, stage 2 `:tiny`, the FCN/CAS classifier, all on the
bundled GunPoint set) runs once uninterrupted, then again under a plan of interruptions, each
sent once the run has logged a chosen step: SIGKILL at once, SIGKILL while a checkpoint is
being written (Orbax's temporary step folder exists), or SIGTERM (which must save the step in
flight and exit with 143). After each interruption the same command is rerun, until a run
finishes. The final checkpoint must equal the uninterrupted run's leaf by leaf, and
`metrics.jsonl` must hold the same records (timings aside).

  python benchmarks/fault_soak.py --kills=10 --seed=0 --output=benchmarks/results/fault_soak.json

Reported per trainer: interruptions survived (the rerun resumed and the run ended equal to the
uninterrupted one), and the median resume time: rerun start to the first record of a step after
the restored checkpoint (so it includes interpreter start, imports, restore, and compilation,
which the persistent compilation cache makes a cache read). `tests/test_faults.py` runs the same
harness with fewer interruptions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent import futures

import jax
import numpy as np

from ssl_vqvae.checkpoints import ARRAY_ITEMS, Checkpointer
from ssl_vqvae.metric_log import METRICS_FILE, read_metrics

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_DEVICES = 4
CHECKPOINT_EVERY = 2
TMP_MARKER = ".orbax-checkpoint-tmp"  # in the name of a step folder Orbax is still writing
TIMING_KEY = "train/steps_per_second"  # differs between runs by nature
POLL_SECONDS = 0.01
SAVE_POLL_SECONDS = 0.001  # a tiny checkpoint takes a few hundred ms to write
ATTEMPT_TIMEOUT_SECONDS = 600
CLASSIFIER_STEPS_PER_EPOCH = 2  # GunPoint: 50 series, batch 48 on 4 devices (odd steps round down)

# The FCN/CAS classifier trainer with a checkpoint every 2 steps and a record every step.
CLASSIFIER_ENTRY = (
    "import sys; from ssl_vqvae import data; from ssl_vqvae.evaluation import classifier as c; "
    f"c.CHECKPOINT_EVERY_STEPS, c.LOG_EVERY_STEPS = {CHECKPOINT_EVERY}, 1; "
    "d = data.load_ucr('GunPoint'); "
    "c.fit_classifier(d.train.x, d.train.y, d.test.x, d.test.y, d.num_classes, sys.argv[1], "
    "num_epochs=int(sys.argv[2]))"
)


@dataclasses.dataclass(frozen=True)
class Trainer:
    """One training command under test.

    Attributes:
      name: label in reports.
      command: (experiment folder, steps) -> argv, run from the repository root.
      run_dir: experiment folder -> the folder holding `checkpoints/` and `metrics.jsonl`.
    """

    name: str
    command: Callable[[pathlib.Path, int], list[str]]
    run_dir: Callable[[pathlib.Path], pathlib.Path]


def _train_py(config: str, *overrides: str) -> Callable[[pathlib.Path, int], list[str]]:
    def command(workdir: pathlib.Path, num_steps: int) -> list[str]:
        return [
            sys.executable,
            "train.py",
            f"--config={config}",
            f"--workdir={workdir}",
            f"--config.train.num_steps={num_steps}",
            f"--config.train.checkpoint_every={CHECKPOINT_EVERY}",
            "--config.train.log_every=1",
            *overrides,
        ]

    return command


def trainers(stage1_experiment: pathlib.Path) -> list[Trainer]:
    """Stage 1, stage 2 (on the tokenizer in `stage1_experiment`) and the classifier."""
    return [
        Trainer(
            "stage1",
            _train_py("configs/stage1_vibcreg.py:tiny", "--config.train.plot_every_eval=False"),
            lambda workdir: workdir / "stage1",
        ),
        Trainer(
            "stage2",
            _train_py(
                "configs/stage2_maskgit.py:tiny", f"--config.stage1_workdir={stage1_experiment}"
            ),
            lambda workdir: workdir / "stage2",
        ),
        Trainer(
            "classifier",
            lambda workdir, num_steps: [
                sys.executable,
                "-c",
                CLASSIFIER_ENTRY,
                str(workdir),
                str(num_steps // CLASSIFIER_STEPS_PER_EPOCH),
            ],
            lambda workdir: workdir,
        ),
    ]


@dataclasses.dataclass(frozen=True)
class Interruption:
    """A signal sent once the run has logged `after_step` (and, if `during_save`, once a
    checkpoint is being written after that)."""

    signum: int
    after_step: int
    during_save: bool = False

    @property
    def label(self) -> str:
        name = signal.Signals(self.signum).name
        return f"{name} during a save" if self.during_save else name


def plan_interruptions(
    rng: np.random.Generator, num_steps: int, num_kills: int, during_save: int, sigterm: int
) -> list[Interruption]:
    """`num_kills` interruptions at random steps in [1, num_steps - 2], in step order: `sigterm`
    SIGTERMs, `during_save` SIGKILLs while saving, the rest plain SIGKILLs."""
    kinds = [(signal.SIGTERM, False)] * sigterm + [(signal.SIGKILL, True)] * during_save
    kinds += [(signal.SIGKILL, False)] * (num_kills - len(kinds))
    order = rng.permutation(len(kinds))
    candidates = np.arange(1, num_steps - 1)
    # Distinct steps while there are enough, so the kills spread over the run.
    steps = np.sort(rng.choice(candidates, num_kills, replace=num_kills > len(candidates)))
    return [
        Interruption(int(kinds[i][0]), int(step), kinds[i][1])
        for i, step in zip(order, steps, strict=True)
    ]


@dataclasses.dataclass
class Attempt:
    """One process of a run: what it restored, how it ended, what went wrong."""

    interruption: str | None  # label of the planned interruption; None for the last attempt
    returncode: int
    resumed_from: int | None  # the restored step (0: started fresh)
    resume_seconds: float | None  # process start -> first record of a later step
    killed_while_saving: bool  # an unfinished checkpoint folder was left behind
    newest_checkpoint: int  # after the process ended (0: none)
    problems: list[str]


def subprocess_env(cache_dir: pathlib.Path) -> dict[str, str]:
    """CPU with 4 simulated devices and a shared persistent compilation cache."""
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={NUM_DEVICES}",
        "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "PYTHONUNBUFFERED": "1",  # the driver reads "resumed from step N" as it is printed
    }


def _inode(path: pathlib.Path) -> int | None:
    return path.stat().st_ino if path.exists() else None


def _logged_steps(metrics: pathlib.Path, stale_inode: int | None) -> list[int]:
    """Steps in this process's metrics file: the trainer rewrites the file (new inode) when it
    starts, so the file found before that belongs to the previous process."""
    if _inode(metrics) in (None, stale_inode):
        return []
    lines = metrics.read_text().split("\n")[:-1]
    return [json.loads(line)["step"] for line in lines if line.strip()]


def _saving(checkpoints: pathlib.Path) -> bool:
    return checkpoints.is_dir() and any(TMP_MARKER in name for name in os.listdir(checkpoints))


def _newest_checkpoint(checkpoints: pathlib.Path) -> int:
    """The newest finished checkpoint's step (Orbax renames a step folder to its number when
    the checkpoint is complete); 0 when there is none."""
    names = os.listdir(checkpoints) if checkpoints.is_dir() else []
    return max((int(name) for name in names if name.isdigit()), default=0)


def run_attempt(
    command: list[str],
    run_dir: pathlib.Path,
    env: dict[str, str],
    log_prefix: pathlib.Path,
    interruption: Interruption | None,
) -> Attempt:
    """Starts `command`, sends the planned signal (if any) and waits for the process to end.

    The process must resume from the newest finished checkpoint, and end as the signal says:
    SIGKILL killed, SIGTERM exit status 143 with one line naming the saved step (the newest
    checkpoint afterwards), no signal (or one sent too late to stop a run) status 0.
    """
    expected_start = _newest_checkpoint(run_dir / "checkpoints")
    metrics, checkpoints = run_dir / METRICS_FILE, run_dir / "checkpoints"
    stdout_path, stderr_path = pathlib.Path(f"{log_prefix}.out"), pathlib.Path(f"{log_prefix}.err")
    stale = _inode(metrics)
    started = time.perf_counter()
    with open(stdout_path, "w") as stdout, open(stderr_path, "w") as stderr:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=stdout, stderr=stderr)
        resumed_from, resume_seconds, sent = None, None, False
        try:
            while process.poll() is None:
                if time.perf_counter() - started > ATTEMPT_TIMEOUT_SECONDS:
                    raise TimeoutError(f"{command} ran over {ATTEMPT_TIMEOUT_SECONDS} s")
                if resumed_from is None:
                    resumed_from = _restored_step(stdout_path.read_text())
                steps = _logged_steps(metrics, stale) if resumed_from is not None else []
                if resume_seconds is None and any(s > resumed_from for s in steps):
                    resume_seconds = time.perf_counter() - started
                due = interruption is not None and not sent and steps
                due = due and max(steps) >= interruption.after_step
                if due and interruption.during_save:
                    while process.poll() is None and not _saving(checkpoints):
                        time.sleep(SAVE_POLL_SECONDS)
                if due and process.poll() is None:
                    process.send_signal(interruption.signum)
                    sent = True
                time.sleep(POLL_SECONDS)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
    if resumed_from is None:
        resumed_from = _restored_step(stdout_path.read_text())
    newest = _newest_checkpoint(checkpoints)
    problems = _check_ending(
        interruption if sent else None, process.returncode, stderr_path.read_text(), newest
    )
    if resumed_from != expected_start:
        problems.append(f"resumed from {resumed_from}, expected step {expected_start}")
    return Attempt(
        interruption=None if interruption is None else interruption.label,
        returncode=process.returncode,
        resumed_from=resumed_from,
        resume_seconds=resume_seconds,
        killed_while_saving=_saving(checkpoints),
        newest_checkpoint=newest,
        problems=problems,
    )


def _restored_step(stdout: str) -> int | None:
    if "] started fresh (no checkpoint in " in stdout:
        return 0
    found = re.search(r"\] resumed from step (\d+) \(checkpoint ", stdout)
    return int(found.group(1)) if found else None


def _check_ending(
    interruption: Interruption | None, returncode: int, stderr: str, newest: int
) -> list[str]:
    """What is wrong with how a process ended, given the signal it was sent (if any)."""
    if interruption is None:
        return [] if returncode == 0 else [f"exit status {returncode}; stderr: {stderr[-2000:]}"]
    if interruption.signum == signal.SIGKILL:
        return [] if returncode == -signal.SIGKILL else [f"exit status {returncode} after SIGKILL"]
    problems = []
    if returncode != 128 + interruption.signum:
        problems.append(f"exit status {returncode} after SIGTERM, expected 143")
    lines = re.findall(r".*stopped by SIGTERM: saved step (\d+) in .*", stderr)
    full = [line for line in stderr.splitlines() if "stopped by SIGTERM" in line]
    if len(full) != 1 or "rerun the same command: " not in full[0]:
        problems.append(f"expected one 'stopped by SIGTERM' line with the command, got {full}")
    elif int(lines[0]) != newest or newest < interruption.after_step:
        problems.append(f"SIGTERM line names step {lines[0]}; newest checkpoint {newest}")
    return problems


def compare_runs(reference: pathlib.Path, candidate: pathlib.Path) -> list[str]:
    """Differences between two finished runs: final checkpoint leaf by leaf (exact), metric
    records (exact, timings aside), `summary.json` where the trainer writes one."""
    problems = []
    states = [_final_state(run) for run in (reference, candidate)]
    flat = [dict(jax.tree_util.tree_flatten_with_path(state)[0]) for state in states]
    if flat[0].keys() != flat[1].keys():
        problems.append(f"state trees differ: {set(flat[0]) ^ set(flat[1])}")
    for path in flat[0].keys() & flat[1].keys():
        a, b = flat[0][path], flat[1][path]
        if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b):
            name = jax.tree_util.keystr(path)
            problems.append(f"state leaf {name} differs (max |diff| {_max_diff(a, b)})")
    logs = [
        [{k: v for k, v in record.items() if k != TIMING_KEY} for record in read_metrics(run)]
        for run in (reference, candidate)
    ]
    if [r["step"] for r in logs[0]] != [r["step"] for r in logs[1]]:
        problems.append(
            f"metric steps differ: {[r['step'] for r in logs[0]]} vs {[r['step'] for r in logs[1]]}"
        )
    elif logs[0] != logs[1]:
        problems.append("metric values differ")
    summaries = [run / "summary.json" for run in (reference, candidate)]
    if summaries[0].is_file() and summaries[0].read_text() != summaries[1].read_text():
        problems.append("summary.json differs")
    return problems


def _final_state(run_dir: pathlib.Path):
    checkpointer = Checkpointer(run_dir / "checkpoints", read_only=True)
    try:
        stored = checkpointer.read_stored()
        return {name: stored[name] for name in ARRAY_ITEMS}
    finally:
        checkpointer.close()


def _max_diff(a: np.ndarray, b: np.ndarray) -> float | str:
    if a.shape != b.shape:
        return f"shapes {a.shape} vs {b.shape}"
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))


@dataclasses.dataclass
class Soak:
    """An interrupted run of one trainer compared with its uninterrupted run."""

    trainer: str
    attempts: list[Attempt]
    differences: list[str]  # final state / log against the uninterrupted run

    @property
    def interruptions(self) -> list[Attempt]:
        return self.attempts[:-1]

    def survived(self) -> int:
        """Interruptions that ended as expected and were followed by a clean resume from the
        newest checkpoint, in a run that ended equal to the uninterrupted one."""
        if self.differences:
            return 0
        pairs = zip(self.attempts[:-1], self.attempts[1:], strict=True)
        return sum(not before.problems and not after.problems for before, after in pairs)

    def resume_seconds(self) -> list[float]:
        return [a.resume_seconds for a in self.attempts[1:] if a.resume_seconds is not None]


def run_interrupted(
    trainer: Trainer,
    workdir: pathlib.Path,
    reference: pathlib.Path,
    num_steps: int,
    plan: Sequence[Interruption],
    env: dict[str, str],
) -> Soak:
    """Runs `trainer` into `workdir` under `plan`, rerunning after each interruption, then
    compares with the finished run in `reference` (an experiment folder)."""
    command = trainer.command(workdir, num_steps)
    run_dir = trainer.run_dir(workdir)
    attempts = []
    for index, interruption in enumerate([*plan, None]):
        attempts.append(
            run_attempt(
                command, run_dir, env, workdir.parent / f"{workdir.name}.{index}", interruption
            )
        )
    return Soak(trainer.name, attempts, compare_runs(trainer.run_dir(reference), run_dir))


def run_reference(
    trainer: Trainer, root: pathlib.Path, num_steps: int, env: dict[str, str]
) -> pathlib.Path:
    """The uninterrupted run, in `root/reference_<name>` (returned); raises if it fails."""
    workdir = root / f"reference_{trainer.name}"
    attempt = run_attempt(
        trainer.command(workdir, num_steps),
        trainer.run_dir(workdir),
        env,
        root / f"reference_{trainer.name}-log",
        None,
    )
    if attempt.problems:
        raise RuntimeError(f"uninterrupted {trainer.name} run failed: {attempt.problems}")
    return workdir


def soak(
    root: pathlib.Path,
    num_steps: int,
    plans: dict[str, list[Interruption]],
    cache_dir: pathlib.Path | None = None,
    jobs: int = 3,
) -> list[Soak]:
    """Reference and interrupted runs of every trainer under `root`.

    `cache_dir` holds JAX's persistent compilation cache (default `root/compilation_cache`):
    only the first process of each trainer compiles.

    Up to `jobs` trainers run side by side (stage 2 once the reference stage 1 is trained, as
    its tokenizer): signals are triggered by what a run has written, not by the clock, so a
    loaded machine only slows the runs down (and lengthens the resume times).
    """
    env = subprocess_env(cache_dir or root / "compilation_cache")
    stage1, stage2, classifier = trainers(root / "reference_stage1")

    def interrupted(trainer: Trainer, reference: pathlib.Path) -> Soak:
        workdir = root / f"interrupted_{trainer.name}"
        return run_interrupted(trainer, workdir, reference, num_steps, plans[trainer.name], env)

    def after_stage1(trainer: Trainer) -> Soak:
        stage1_reference.result()
        return interrupted(trainer, run_reference(trainer, root, num_steps, env))

    with futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        stage1_reference = pool.submit(run_reference, stage1, root, num_steps, env)
        runs = [
            pool.submit(
                lambda: interrupted(classifier, run_reference(classifier, root, num_steps, env))
            ),
            pool.submit(after_stage1, stage2),
            # Queued behind the jobs above: it starts once the stage-1 reference is done.
            pool.submit(lambda: interrupted(stage1, stage1_reference.result())),
        ]
        return sorted((run.result() for run in runs), key=lambda result: result.trainer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10, help="interruptions per trainer")
    parser.add_argument("--during_save", type=int, default=3, help="of which SIGKILL mid-save")
    parser.add_argument("--sigterm", type=int, default=2, help="of which SIGTERM")
    parser.add_argument("--steps", type=int, default=20, help="training steps per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=3, help="trainers run side by side")
    parser.add_argument("--workdir", default="", help="keep the runs here (default: a temp dir)")
    parser.add_argument("--output", default="", help="JSON report")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as temporary:
        root = pathlib.Path(args.workdir or temporary).absolute()
        names = [trainer.name for trainer in trainers(root)]
        plans = {
            name: plan_interruptions(rng, args.steps, args.kills, args.during_save, args.sigterm)
            for name in names
        }
        results = soak(root, args.steps, plans, jobs=args.jobs)
    rows = []
    for result in results:
        seconds = result.resume_seconds()
        rows.append(
            {
                "trainer": result.trainer,
                "interruptions": len(result.interruptions),
                "killed_while_saving": sum(a.killed_while_saving for a in result.interruptions),
                "survived": result.survived(),
                "final_state_equal": not result.differences,
                "median_resume_s": statistics.median(seconds) if seconds else None,
                "differences": result.differences,
                "attempts": [dataclasses.asdict(a) for a in result.attempts],
            }
        )
        print(
            f"{result.trainer:>10}: survived {rows[-1]['survived']}/{len(result.interruptions)} "
            f"({rows[-1]['killed_while_saving']} killed mid-save), final state equal: "
            f"{not result.differences}, median resume {rows[-1]['median_resume_s']} s"
        )
        for problem in result.differences + [p for a in result.attempts for p in a.problems]:
            print(f"{'':>12}{problem}")
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.output:
        report = {"args": vars(args), "rows": rows, "seconds": time.perf_counter() - started}
        pathlib.Path(args.output).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
