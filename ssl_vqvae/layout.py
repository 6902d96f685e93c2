"""The on-disk layout of one experiment (one workdir, one folder per stage), and its guard.

```
<workdir>/stage1/   config.json, config_history.jsonl, checkpoints/, metrics.jsonl,
                    tensorboard/, plots/
<workdir>/stage2/   (same)
<workdir>/samples/  samples.npz, samples.png
<workdir>/eval/     report.json, report.md, plots
```

A stage folder belongs to one run: `check_run_dir` refuses, before anything is written, a config
that differs from the stored `config.json` in a field that changes the model, the data or the
optimisation (resuming would mix settings, or fail on a checkpoint of another shape).
`--overwrite` moves the old folder aside (`stage1.old-<time>`), never deletes it. The fields of
`MUTABLE_FIELDS` (step budget, logging, evaluation, checkpoint and plot intervals) may change;
each accepted change is printed and appended to `config_history.jsonl`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import secrets
from typing import Any

import ml_collections

from ssl_vqvae import config_lib, data, pipeline, training
from ssl_vqvae.errors import MissingInputError, UserError

CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"
# Fields that may differ between runs of one stage folder: they decide how long to train and
# what to log, not what is trained. Every other field is fixed for the folder's lifetime.
MUTABLE_FIELDS = frozenset(
    {
        "train.num_steps",
        "train.num_epochs",
        "train.log_every",
        "train.eval_every_epochs",
        "train.checkpoint_every",
        "train.checkpoint_every_minutes",
        "train.probe_every",
        "train.plot_every_eval",
        "data.eval_batch_size",
        "sampling.num_steps",
        "sampling.choice_temperature",
        "sampling.guidance_scale",
        "sampling.mask_unused_codes",
    }
)
# A change of these trains the weights further, so later stages must notice (see `run_id`).
BUDGET_FIELDS = frozenset({"train.num_steps", "train.num_epochs"})
# Values a stage adds to its stored config itself: never part of a request.
RESOLVED_FIELDS = frozenset(
    {"run_id", "resolved_variant", "stage1_dir", "stage1_run_id", "code_usage"}
)
_ABSENT = "(absent)"


def stage_dir(workdir: str | pathlib.Path, stage: str) -> pathlib.Path:
    return pathlib.Path(workdir).expanduser().absolute() / stage


def write_config(config: ml_collections.ConfigDict, directory: pathlib.Path) -> None:
    """Stores the resolved config so later stages and tools need nothing but the workdir."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(config.to_json(indent=2) + "\n")


def _read_json(path: pathlib.Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(
            f"{path}: not a readable config ({error}); expected the JSON that train.py writes"
        ) from None


def read_config(directory: pathlib.Path) -> ml_collections.ConfigDict:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise MissingInputError(
            f"{path} does not exist; is {directory.parent} an experiment workdir with a trained "
            f"{directory.name}? (run train.py with a {directory.name} config first)"
        )
    return ml_collections.ConfigDict(_read_json(path))


def set_resolved(config: ml_collections.ConfigDict, **values: Any) -> None:
    """Adds values the stage resolved itself (see RESOLVED_FIELDS) to `config`."""
    with config.unlocked():
        for name, value in values.items():
            setattr(config, name, value)


def load_dataset(config: ml_collections.ConfigDict) -> data.UCRDataset:
    return data.load_ucr(config.data.dataset, config.data.root or None, config.data.variable_length)


def check_writable(path: pathlib.Path) -> None:
    """Fails unless `path` and its parent are writable folders, or can be created as such."""
    for folder in dict.fromkeys(_first_existing(p) for p in (path, path.parent)):
        if not folder.is_dir():
            raise UserError(f"{folder} is a file; expected a folder to write into (or a new path)")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UserError(f"{folder} is not writable; expected a folder you can write into")


def _first_existing(path: pathlib.Path) -> pathlib.Path:
    return next(p for p in (path, *path.parents) if p.exists())


def config_differences(
    stored: dict[str, Any], requested: dict[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """`{field: (stored, requested)}` for every differing field but RESOLVED_FIELDS."""
    old, new = config_lib.flatten(stored), config_lib.flatten(requested)
    return {
        path: (old.get(path, _ABSENT), new.get(path, _ABSENT))
        for path in sorted(old.keys() | new.keys())
        if path.split(".")[0] not in RESOLVED_FIELDS
        and old.get(path, _ABSENT) != new.get(path, _ABSENT)
    }


def describe(differences: dict[str, tuple[Any, Any]]) -> str:
    """`field: stored -> requested, ...` on one line."""
    return ", ".join(f"{path}: {old!r} -> {new!r}" for path, (old, new) in differences.items())


@dataclasses.dataclass(frozen=True)
class RunCheck:
    """What `check_run_dir` found in a stage folder; `begin_run` acts on it.

    Attributes:
      run_dir: the stage folder.
      stored: its config.json, or None for a new folder (or one to be moved aside).
      changes: accepted differences of MUTABLE_FIELDS, `{field: (stored, requested)}`.
      overwrite: move an existing folder aside before writing.
    """

    run_dir: pathlib.Path
    stored: dict[str, Any] | None
    changes: dict[str, tuple[Any, Any]]
    overwrite: bool


def check_run_dir(
    workdir: str | pathlib.Path, stage: str, config: ml_collections.ConfigDict, overwrite: bool
) -> RunCheck:
    """Everything about `<workdir>/<stage>` that can refuse a run; writes nothing.

    Raises:
      UserError: the path is a file or not writable; or the stored config differs from `config`
        in a field outside MUTABLE_FIELDS (unless `overwrite`); or the folder holds files but
        no config.json.
    """
    run_dir = stage_dir(workdir, stage)
    check_writable(run_dir)
    path = run_dir / CONFIG_FILE
    if overwrite or not run_dir.exists():
        return RunCheck(run_dir, None, {}, overwrite)
    if not path.is_file():
        if any(run_dir.iterdir()):
            raise UserError(
                f"{run_dir} holds files but no {CONFIG_FILE}; expected a folder written by "
                "train.py: pass --overwrite to move it aside, or use another --workdir"
            )
        return RunCheck(run_dir, None, {}, overwrite)
    stored = _read_json(path)
    differences = config_differences(stored, json.loads(config.to_json()))
    fixed = {k: v for k, v in differences.items() if k not in MUTABLE_FIELDS}
    if fixed:
        raise UserError(
            f"{path} belongs to another {stage} run; differing fields (stored -> requested): "
            f"{describe(fixed)}. Rerun with the stored values, use another --workdir, or pass "
            f"--overwrite to move {run_dir.name}/ aside to {run_dir.name}.old-<time>/ and start "
            "afresh"
        )
    return RunCheck(run_dir, stored, differences, overwrite)


def check_lineage(
    stage2_config: dict[str, Any] | ml_collections.ConfigDict,
    stage1_config: ml_collections.ConfigDict,
    stage2_dir: pathlib.Path,
    remedy: str,
) -> None:
    """Fails when stage 2 was trained on another stage-1 run than the one now in `stage1_dir`.

    Stage 1 gets a new `run_id` when it starts afresh (`--overwrite`) or its step budget changes,
    so the stage-2 prior no longer matches its tokens. Configs written before run ids existed
    pass.
    """
    trained_on, current = stage2_config.get("stage1_run_id"), stage1_config.get("run_id")
    if trained_on and current and trained_on != current:
        raise UserError(
            f"{stage2_dir} was trained on stage-1 run {trained_on}, but "
            f"{stage2_config.get('stage1_dir', 'stage 1')} now holds run {current} (retrained or "
            f"trained further); {remedy}"
        )


def check_trained(
    workdir: str | pathlib.Path,
) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
    """The (stage-1, stage-2) configs of a trained experiment, for sample.py and evaluate.py.

    Raises:
      MissingInputError: a stage is missing; the message gives the command to train it.
      UserError: stage 2 was trained on another stage-1 run than the one there now.
    """
    workdir = pathlib.Path(workdir).expanduser().absolute()
    stage1_dir, stage2_dir = stage_dir(workdir, "stage1"), stage_dir(workdir, "stage2")
    stage2_config = read_config(stage2_dir) if (stage2_dir / CONFIG_FILE).is_file() else None
    if stage2_config is not None:  # stage 2 may use the tokenizer of another workdir
        stage1_dir = pathlib.Path(stage2_config.get("stage1_dir") or stage1_dir)
    for stage, folder, config_file in (
        ("stage1", stage1_dir, "configs/stage1_vibcreg.py"),
        ("stage2", stage2_dir, "configs/stage2_maskgit.py"),
    ):
        if not (folder / CONFIG_FILE).is_file():
            raise MissingInputError(
                f"{folder} not found: this needs a trained {stage}; run "
                f"`python train.py --config={config_file} --workdir={workdir}` first"
            )
    stage1_config = read_config(stage1_dir)
    check_lineage(
        stage2_config,
        stage1_config,
        stage2_dir,
        "retrain stage 2 on it: train.py with a stage-2 config and --overwrite",
    )
    return stage1_config, stage2_config


def begin_run(check: RunCheck, stage: str) -> str:
    """The writes before training, after every check passed; returns the folder's run id.

    Moves an existing folder aside (`overwrite`), or records accepted changes in
    HISTORY_FILE and prints them. The run id is kept on resume unless the step budget changed.
    """
    run_dir, stored = check.run_dir, check.stored
    if check.overwrite and run_dir.exists():
        moved = _aside_path(run_dir)
        run_dir.rename(moved)
        print(f"[{stage}] --overwrite: moved the previous {run_dir} to {moved}")
    if check.changes:
        record = {"time": _now(), "changes": {k: list(v) for k, v in check.changes.items()}}
        with open(run_dir / HISTORY_FILE, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(
            f"[{stage}] config changes accepted, recorded in {run_dir / HISTORY_FILE}: "
            f"{describe(check.changes)}"
        )
    if stored and stored.get("run_id") and not BUDGET_FIELDS & check.changes.keys():
        return stored["run_id"]
    return f"{_now()}-{secrets.token_hex(3)}"


def _now() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def _aside_path(run_dir: pathlib.Path) -> pathlib.Path:
    base = run_dir.with_name(f"{run_dir.name}.old-{_now()}")
    candidate, index = base, 1
    while candidate.exists():
        index += 1
        candidate = base.with_name(f"{base.name}-{index}")
    return candidate


class Schedule:
    """Step counts and learning rates derived from epochs for a dataset (SPEC §2.7)."""

    def __init__(
        self,
        train_config: ml_collections.ConfigDict,
        steps_per_epoch: int,
        peak_learning_rate: float,
    ):
        self.steps_per_epoch = steps_per_epoch
        if train_config.num_steps > 0:
            self.num_steps = int(train_config.num_steps)
        else:
            self.num_steps = int(train_config.num_epochs) * steps_per_epoch
        self.eval_every = max(1, int(train_config.eval_every_epochs) * steps_per_epoch)
        self.learning_rate = training.reference_cosine_schedule(
            peak_learning_rate, self.num_steps, steps_per_epoch
        )

    def loop_config(
        self, train_config: ml_collections.ConfigDict, description: str
    ) -> training.LoopConfig:
        """How `training.fit` runs a stage under this schedule."""
        return training.LoopConfig(
            num_steps=self.num_steps,
            log_every=train_config.log_every,
            eval_every=self.eval_every,
            checkpoint_every=train_config.checkpoint_every,
            checkpoint_every_minutes=train_config.checkpoint_every_minutes,
            description=description,
            learning_rate=self.learning_rate,
        )


def batch_sizes(
    config: ml_collections.ConfigDict, dataset: data.UCRDataset, num_devices: int
) -> tuple[int, int]:
    """(train, eval) global batch sizes that split evenly over the devices."""
    train = pipeline.global_batch_size(config.data.batch_size, len(dataset.train), num_devices)
    return train, pipeline.round_to_devices(config.data.eval_batch_size, num_devices)
