"""The on-disk layout of one experiment (one workdir, one folder per stage), and its guard.

```
<workdir>/stage1/   config.json (the request, as given), resolved.json (values the run
                    resolved: run id, prior variant, tokenizer location, code usage),
                    config_history.jsonl, checkpoints/<step>/{model, model_spec, train, record},
                    metrics.jsonl, tensorboard/, plots/
<workdir>/stage2/   (same)
<workdir>/samples/  samples.npz, samples.png
<workdir>/eval/     report.json, report.md, plots
```

Every path inside is relative to the workdir, so an experiment can be moved or copied whole.

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

from ssl_vqvae import config_lib, data, pipeline, processes
from ssl_vqvae.errors import MissingInputError, UserError

CONFIG_FILE = "config.json"
RESOLVED_FILE = "resolved.json"
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
        "train.profile_steps",
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
_ABSENT = "(absent)"


def stage_dir(workdir: str | pathlib.Path, stage: str) -> pathlib.Path:
    return pathlib.Path(workdir).expanduser().absolute() / stage


def write_config(config: ml_collections.ConfigDict, directory: pathlib.Path) -> None:
    """Stores the requested config as given (never mutated: see `write_resolved`)."""
    processes.write_once(directory / CONFIG_FILE, config.to_json(indent=2) + "\n")


def write_resolved(directory: pathlib.Path, values: dict[str, Any]) -> None:
    """Stores what a stage resolved itself (run id, prior variant, tokenizer location, ...)."""
    processes.write_once(directory / RESOLVED_FILE, json.dumps(values, indent=2) + "\n")


def read_resolved(directory: pathlib.Path) -> dict[str, Any]:
    """The stage's `resolved.json` ({} for a folder without one)."""
    path = directory / RESOLVED_FILE
    return _read_json(path) if path.is_file() else {}


def tokenizer_dir(
    workdir: str | pathlib.Path, stage2_resolved: dict[str, Any], override: str | None = None
) -> pathlib.Path:
    """The stage-1 folder a stage-2 run was trained on, resolved now.

    `stage1_workdir` "" (the default) means the experiment's own `stage1/`, so a moved workdir
    keeps its tokenizer; an explicit one is used as recorded unless `override` replaces it.
    """
    recorded = stage2_resolved.get("stage1_workdir", "") if override is None else override
    return stage_dir(recorded or workdir, "stage1")


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


def load_dataset(data_settings: Any) -> data.UCRDataset:
    """The dataset of a stage-1 `data` section (settings or config)."""
    return data.load_ucr(
        data_settings.dataset, data_settings.root or None, data_settings.variable_length
    )


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
    """`{field: (stored, requested)}` for every differing field."""
    old, new = config_lib.flatten(stored), config_lib.flatten(requested)
    return {
        path: (old.get(path, _ABSENT), new.get(path, _ABSENT))
        for path in sorted(old.keys() | new.keys())
        if old.get(path, _ABSENT) != new.get(path, _ABSENT)
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
    stage2_resolved: dict[str, Any],
    stage1_dir: pathlib.Path,
    stage2_dir: pathlib.Path,
    remedy: str,
) -> None:
    """Fails when stage 2 was trained on another stage-1 run than the one now in `stage1_dir`.

    Stage 1 gets a new `run_id` when it starts afresh (`--overwrite`) or its step budget changes,
    so the stage-2 prior no longer matches its tokens. Configs written before run ids existed
    pass.
    """
    trained_on = stage2_resolved.get("stage1_run_id")
    current = read_resolved(stage1_dir).get("run_id")
    if trained_on and current and trained_on != current:
        raise UserError(
            f"{stage2_dir} was trained on stage-1 run {trained_on}, but {stage1_dir} now holds "
            f"run {current} (retrained or trained further); {remedy}"
        )


def check_trained(
    workdir: str | pathlib.Path, stage1_workdir: str | None = None
) -> tuple[pathlib.Path, pathlib.Path]:
    """The (stage-1, stage-2) folders of a trained experiment, for sample.py and evaluate.py.

    Raises:
      MissingInputError: a stage is missing; the message gives the command to train it.
      UserError: stage 2 was trained on another stage-1 run than the one there now.
    """
    workdir = pathlib.Path(workdir).expanduser().absolute()
    stage2_dir = stage_dir(workdir, "stage2")
    stage2_resolved = read_resolved(stage2_dir)
    stage1_dir = tokenizer_dir(workdir, stage2_resolved, stage1_workdir)
    for stage, folder, config_file in (
        ("stage1", stage1_dir, "configs/stage1_vibcreg.py"),
        ("stage2", stage2_dir, "configs/stage2_maskgit.py"),
    ):
        if not (folder / CONFIG_FILE).is_file():
            raise MissingInputError(
                f"{folder} not found: this needs a trained {stage}; run "
                f"`python train.py --config={config_file} --workdir={workdir}` first"
            )
    check_lineage(
        stage2_resolved,
        stage1_dir,
        stage2_dir,
        "retrain stage 2 on it: train.py with a stage-2 config and --overwrite",
    )
    return stage1_dir, stage2_dir


def begin_run(check: RunCheck, stage: str) -> str:
    """The writes before training, after every check passed; returns the folder's run id.

    Moves an existing folder aside (`overwrite`), or records accepted changes in HISTORY_FILE
    and prints them, in process 0 (the others wait). The run id stays unless the budget changed.
    """
    run_dir, stored = check.run_dir, check.stored
    if check.overwrite and run_dir.exists() and processes.is_main():
        moved = _aside_path(run_dir)
        run_dir.rename(moved)
        print(f"[{stage}] --overwrite: moved the previous {run_dir} to {moved}")
    if check.changes and processes.is_main():
        record = {"time": _now(), "changes": {k: list(v) for k, v in check.changes.items()}}
        with open(run_dir / HISTORY_FILE, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(
            f"[{stage}] config changes accepted, recorded in {run_dir / HISTORY_FILE}: "
            f"{describe(check.changes)}"
        )
    processes.barrier(f"begin_run {stage}")
    previous = read_resolved(run_dir).get("run_id") if stored else None
    if previous and not BUDGET_FIELDS & check.changes.keys():
        return previous
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


def batch_sizes(data_settings: Any, num_train: int, num_devices: int) -> tuple[int, int]:
    """(train, eval) global batch sizes of a `data` section that split evenly over devices."""
    train = pipeline.global_batch_size(data_settings.batch_size, num_train, num_devices)
    return train, pipeline.round_to_devices(data_settings.eval_batch_size, num_devices)
