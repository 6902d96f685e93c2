"""Every bad input to train.py, sample.py and evaluate.py ends in ONE line on stderr.

Each case runs a real command line and asserts: a non-zero exit status, stderr is exactly one
line `error: ...` naming the culprit (file:line, config field or flag), no traceback, and nothing
on disk changed (every file of the case folder, which holds the workdir and data files, is
byte-identical and no path appeared or vanished). Nothing is filtered from stderr.

The cases run in children forked from one server process that imported the project once, so a
case costs a fork instead of a Python start with JAX (~5 s); each child runs the script with
`runpy` exactly as `python <script> <args>` would. `test_server_matches_fresh_process` pins that
equivalence on two cases run both ways.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Mapping

import pytest

from ssl_vqvae import config_lib, layout, validation

ROOT = pathlib.Path(__file__).parent.parent
STAGE1 = ("train.py", "--config=configs/stage1_vibcreg.py:tiny", "--workdir={workdir}")
STAGE2 = ("train.py", "--config=configs/stage2_maskgit.py:tiny", "--workdir={workdir}")
BAD_DATA = (*STAGE1, "--config.data.root={root}", "--config.data.dataset=Bad")
SAMPLE = ("sample.py", "--workdir={workdir}")
EVALUATE = ("evaluate.py", "--workdir={workdir}")
CASE_TIMEOUT_S = 120
# Where a root user (who ignores permission bits) meets a read-only file system.
READ_ONLY_FALLBACK = pathlib.Path("/proc/sys/ssl_vqvae_bad_input")

# Forked per request; the child runs the script as the interpreter would (exit codes included).
SERVER = r"""
import json, os, runpy, signal, sys, traceback
import absl.app, ml_collections.config_flags
import ssl_vqvae.evaluate, ssl_vqvae.stage1, ssl_vqvae.stage2

def child(request):
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    signal.alarm(request["timeout"])
    sys.argv = request["argv"]
    try:
        runpy.run_path(request["argv"][0], run_name="__main__")
        code = 0
    except SystemExit as stop:
        code = stop.code
    except BaseException:
        traceback.print_exc()
        code = 1
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)

for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        child(request)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)
"""


def _tsv(rows: list[list[object]]) -> bytes:
    return ("\n".join("\t".join(str(v) for v in row) for row in rows) + "\n").encode()


GOOD_TRAIN = [[1, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0], [2, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0]]
GOOD_TEST = [[1, 0.5, 1.5, 2.5, 3.5, 4.5, 5.5]]


def _bad(train: bytes = _tsv(GOOD_TRAIN), test: bytes = _tsv(GOOD_TEST), suffix=".tsv"):
    """Files of an archive `archive/Bad/` (see BAD_DATA)."""
    return {f"archive/Bad/Bad_TRAIN{suffix}": train, f"archive/Bad/Bad_TEST{suffix}": test}


def _edit_json(path: pathlib.Path, **values: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


def _retrained_stage1(case: pathlib.Path) -> None:
    """Stage 1 as after `train.py --overwrite`: a new run id."""
    _edit_json(case / "workdir" / "stage1" / "resolved.json", run_id="another-run")


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad command line: `args` may hold {workdir}, {root} and {case} (the case folder).

    Attributes:
      expected: substrings of the error line: the culprit and what was expected.
      workdir: "new" (a path that does not exist), "experiment" (a copy of `tiny_experiment`),
        "stage1" (its stage1/ only), "file" (a file), "readonly" (a read-only copy).
      files: written under the case folder first.
      prepare: edits the case folder after the copies and files.
    """

    name: str
    args: tuple[str, ...]
    expected: tuple[str, ...]
    workdir: str = "new"
    files: Mapping[str, bytes] = dataclasses.field(default_factory=dict)
    prepare: Callable[[pathlib.Path], None] | None = None


def _c(name, args, *expected, **kwargs) -> Case:
    return Case(name, tuple(args), expected, **kwargs)


CASES = [
    # Flags and config files, reported while absl parses the command line.
    _c(
        "unknown config key",
        (*STAGE1, "--config.train.num_step=5"),
        "--config.train.num_step=5",
        "no field 'train.num_step'",
        "did you mean 'train.num_steps'?",
    ),
    _c(
        "unknown config section",
        (*STAGE1, "--config.optm.learning_rate=0.1"),
        "no field 'optm.learning_rate'",
        "did you mean 'optim.learning_rate'?",
    ),
    _c(
        "missing config file",
        ("train.py", "--config=configs/stage1_vibcrg.py", "--workdir={workdir}"),
        "no config file configs/stage1_vibcrg.py",
        "did you mean 'configs/stage1_vibcreg.py'?",
    ),
    _c(
        "unknown config argument",
        ("train.py", "--config=configs/stage1_vibcreg.py:tnyi", "--workdir={workdir}"),
        "unknown config argument 'tnyi'",
        "did you mean 'tiny'?",
    ),
    _c(
        "config value of the wrong type",
        (*STAGE1, "--config.train.num_steps=abc"),
        "flag --config.train.num_steps=abc",
        "invalid literal for int()",
    ),
    _c("unknown flag", (*STAGE1, "--overwrit"), "'overwrit'", "Did you mean: overwrite"),
    _c("bool flag with a value", (*STAGE1, "--overwrite=maybe"), "--overwrite=maybe"),
    _c(
        "missing --workdir",
        ("train.py", "--config=configs/stage1_vibcreg.py:tiny"),
        "Flag --workdir must have a value",
    ),
    _c(
        "missing --config",
        ("train.py", "--workdir={workdir}"),
        "Flag --config must have a value",
    ),
    _c("positional argument", (*STAGE1, "stage1"), "unexpected arguments ['stage1']"),
    # Ranges and choices of stage-1 fields.
    *[
        _c(f"stage 1 {field}={value}", (*STAGE1, f"--config.{field}={value}"), *expected)
        for field, value, expected in [
            ("optim.learning_rate", "-0.001", ("optim.learning_rate=-0.001", "> 0")),
            ("optim.learning_rate", "nan", ("optim.learning_rate=nan", "finite number > 0")),
            ("optim.weight_decay", "-1", ("optim.weight_decay=-1.0", ">= 0")),
            ("train.num_steps", "-5", ("train.num_steps=-5", "integer >= 0")),
            ("train.num_epochs", "0", ("train.num_epochs=0", "integer >= 1")),
            ("train.log_every", "0", ("train.log_every=0", "integer >= 1")),
            ("train.eval_every_epochs", "0", ("train.eval_every_epochs=0", ">= 1")),
            ("train.checkpoint_every", "0", ("train.checkpoint_every=0", ">= 1")),
            ("train.checkpoint_every_minutes", "-1", ("checkpoint_every_minutes=-1.0", ">= 0")),
            ("train.probe_every", "-1", ("train.probe_every=-1", "integer >= 0")),
            ("model.codebook_size", "0", ("model.codebook_size=0", "integer >= 2")),
            ("model.codebook_size", "1", ("model.codebook_size=1", "integer >= 2")),
            ("model.hidden_dim", "0", ("model.hidden_dim=0", "integer >= 1")),
            ("model.num_res_blocks", "0", ("model.num_res_blocks=0", "integer >= 1")),
            ("model.n_fft", "6", ("model.n_fft=6", "power of 2 >= 4")),
            ("model.dropout_rate", "1.0", ("model.dropout_rate=1.0", "[0, 1)")),
            ("model.ema_decay", "1.0", ("model.ema_decay=1.0", "(0, 1)")),
            ("model.dead_code", "drop", ("model.dead_code='drop'", "'reference', 'keep'")),
            ("model.init", "xavier", ("model.init='xavier'", "'torch', 'flax'")),
            ("data.batch_size", "0", ("data.batch_size=0", "integer >= 1")),
            ("data.eval_batch_size", "-1", ("data.eval_batch_size=-1", "integer >= 1")),
            ("data.variable_length", "pad", ("data.variable_length='pad'", "'zero_pad'")),
            ("data.dataset", "", ("data.dataset=''", "non-empty name")),
            ("seed", "-1", ("seed=-1", "integer >= 0")),
            ("ssl.method", "vibcrg", ("ssl.method='vibcrg'", "did you mean 'vibcreg'?")),
            ("ssl.augmentations", "warp,jitter", ("ssl.augmentations='warp,jitter'", "'jitter'")),
            ("ssl.iternorm_groups", "5", ("ssl.projector_output_dim=32", "iternorm_groups=5")),
            ("ssl.aug_recon_weight", "-0.1", ("ssl.aug_recon_weight=-0.1", ">= 0")),
        ]
    ],
    # Ranges and choices of stage-2 fields (checked before stage 1 is even looked for).
    *[
        _c(f"stage 2 {field}={value}", (*STAGE2, f"--config.{field}={value}"), *expected)
        for field, value, expected in [
            ("prior.p_unconditional", "1.5", ("prior.p_unconditional=1.5", "[0, 1]")),
            ("prior.variant", "gpt", ("prior.variant='gpt'", "'token_index'")),
            ("prior.masking", "random", ("prior.masking='random'", "'thesis', 'standard'")),
            ("prior.depth", "0", ("prior.depth=0", "integer >= 1")),
            ("prior.num_heads", "0", ("prior.num_heads=0", "integer >= 1")),
            ("prior.token_sample_temperature", "-0.5", ("token_sample_temperature=-0.5", ">= 0")),
            ("sampling.num_steps", "0", ("sampling.num_steps=0", "integer >= 1")),
            ("sampling.guidance_scale", "-1", ("sampling.guidance_scale=-1.0", ">= 0")),
            ("sampling.choice_temperature", "-1", ("sampling.choice_temperature=-1.0", ">= 0")),
            ("train.num_steps", "-5", ("train.num_steps=-5", "integer >= 0")),
        ]
    ],
    # Workdirs.
    _c("workdir is a file", STAGE1, "workdir", "is a file; expected a folder", workdir="file"),
    _c("read-only workdir", STAGE1, "is not writable", workdir="readonly"),
    _c(
        "stage 2 without stage 1",
        STAGE2,
        "stage1/config.json does not exist",
        "run train.py with a stage1 config first",
    ),
    # The workdir guard: a stored run of another config.
    _c(
        "rerun stage 1 with another ssl.method",
        ("train.py", "--config=configs/stage1_barlowtwins.py:tiny", "--workdir={workdir}"),
        "stage1/config.json belongs to another stage1 run",
        "ssl.method: 'vibcreg' -> 'barlowtwins'",
        "--overwrite",
        workdir="experiment",
    ),
    _c(
        "rerun stage 1 with another augmentation and learning rate",
        (*STAGE1, "--config.ssl.augmentations=slice", "--config.optim.learning_rate=0.01"),
        "optim.learning_rate: 0.001 -> 0.01, ssl.augmentations: 'warp' -> 'slice'",
        workdir="experiment",
    ),
    _c(
        "rerun stage 2 with another prior",
        (*STAGE2, "--config.prior.depth=2", "--config.train.num_steps=12"),
        "stage2/config.json belongs to another stage2 run",
        "prior.depth: 1 -> 2.",
        workdir="experiment",
    ),
    _c(
        "rerun stage 2 after stage 1 was retrained",
        STAGE2,
        "stage2 was trained on stage-1 run",
        "now holds run another-run",
        "--overwrite",
        workdir="experiment",
        prepare=_retrained_stage1,
    ),
    _c(
        "stage folder without config.json",
        STAGE1,
        "stage1 holds files but no config.json",
        workdir="experiment",
        prepare=lambda case: (case / "workdir" / "stage1" / "config.json").unlink(),
    ),
    _c(
        "corrupt stored config.json",
        STAGE1,
        "stage1/config.json: not a readable config",
        workdir="experiment",
        prepare=lambda case: (case / "workdir" / "stage1" / "config.json").write_text("{oops"),
    ),
    # Data files.
    _c(
        "truncated .tsv.gz",
        BAD_DATA,
        "Bad_TRAIN.tsv.gz: unreadable gzip data",
        files=_bad(
            gzip.compress(_tsv(GOOD_TRAIN))[:-12], gzip.compress(_tsv(GOOD_TEST)), ".tsv.gz"
        ),
    ),
    _c(
        "binary bytes under a .tsv name",
        BAD_DATA,
        "Bad_TRAIN.tsv: not a text file (byte 1 is not UTF-8)",
        files=_bad(train=b"\x00\xff\xfe\x00binary"),
    ),
    _c(
        "infinite value",
        BAD_DATA,
        "Bad_TRAIN.tsv:2: column 4 is inf",
        files=_bad(train=_tsv([GOOD_TRAIN[0], [2, 5.0, 4.0, "inf", 2.0, 1.0, 0.0]])),
    ),
    _c(
        "one class",
        BAD_DATA,
        "dataset 'Bad': every train series has label [1.0]",
        "at least 2 classes",
        files=_bad(train=_tsv([GOOD_TRAIN[0], [1, *GOOD_TRAIN[1][1:]]])),
    ),
    _c(
        "explicit root with only .tsv.gz wins over the bundled copy",
        (*STAGE1, "--config.data.root={root}", "--config.data.dataset=GunPoint"),
        "archive/GunPoint/GunPoint_TRAIN.tsv.gz:1: expected a label and at least one value",
        files={
            "archive/GunPoint/GunPoint_TRAIN.tsv.gz": gzip.compress(b"1\n2\n"),
            "archive/GunPoint/GunPoint_TEST.tsv.gz": gzip.compress(b"1\n"),
        },
    ),
    _c(
        "wrong column count",
        BAD_DATA,
        "Bad_TRAIN.tsv:2: expected 7 tab-separated columns (as in row 1), got 6",
        files=_bad(train=_tsv([GOOD_TRAIN[0], GOOD_TRAIN[1][:-1]])),
    ),
    _c(
        "non-numeric value",
        BAD_DATA,
        "Bad_TEST.tsv:1: non-numeric value",
        files=_bad(test=_tsv([[1, 0.5, "abc", 2.5, 3.5, 4.5, 5.5]])),
    ),
    _c("empty file", BAD_DATA, "Bad_TRAIN.tsv: empty file", files=_bad(train=b"")),
    _c(
        "test label missing from train",
        BAD_DATA,
        "dataset 'Bad': test labels [9.0] do not occur in the train labels [1.0, 2.0]",
        files=_bad(test=_tsv([[9, *GOOD_TEST[0][1:]]])),
    ),
    _c(
        "NaN-only column",
        BAD_DATA,
        "Bad_TRAIN.tsv: column 8 holds no number in any row",
        files=_bad(train=_tsv([[*row, "NaN"] for row in GOOD_TRAIN])),
    ),
    _c(
        "missing class label",
        BAD_DATA,
        "Bad_TEST.tsv: column 1 (the class label) has a missing value",
        files=_bad(test=_tsv([["NaN", *GOOD_TEST[0][1:]]])),
    ),
    _c(
        "constant series",
        BAD_DATA,
        "dataset 'Bad': train values have zero or undefined variance",
        files=_bad(train=_tsv([[1, *[1.0] * 6], [2, *[1.0] * 6]])),
    ),
    _c(
        "test length differs",
        BAD_DATA,
        "Bad_TEST.tsv: series length 5 differs from train length 6",
        files=_bad(test=_tsv([GOOD_TEST[0][:-1]])),
    ),
    _c(
        "series shorter than n_fft",
        BAD_DATA,
        "dataset 'Bad': series of length 3 are too short for model.n_fft=8",
        "at least n_fft // 2 + 1 = 5",
        files=_bad(_tsv([row[:4] for row in GOOD_TRAIN]), _tsv([GOOD_TEST[0][:4]])),
    ),
    _c(
        "test split missing",
        BAD_DATA,
        "found",
        "Bad_TRAIN.tsv but no test split",
        files={"archive/Bad/Bad_TRAIN.tsv": _tsv(GOOD_TRAIN)},
    ),
    _c(
        "unknown dataset",
        (*STAGE1, "--config.data.dataset=NoSuchSet"),
        "dataset 'NoSuchSet' not found; looked in",
    ),
    _c(
        "data.root does not exist",
        (*STAGE1, "--config.data.root={case}/no_archive"),
        "data.root=",
        "no_archive' is not a folder",
    ),
    # sample.py
    _c("sample --num_samples=0", (*SAMPLE, "--num_samples=0"), "--num_samples=0", "positive"),
    _c("sample --num_samples=-3", (*SAMPLE, "--num_samples=-3"), "--num_samples=-3"),
    _c(
        "sample --class_id out of range",
        (*SAMPLE, "--class_id=7"),
        "--class_id=7; expected all, none or 0..1",
        workdir="experiment",
    ),
    _c(
        "sample --class_id not a number",
        (*SAMPLE, "--class_id=first"),
        "--class_id=first",
        workdir="experiment",
    ),
    _c(
        "sample negative guidance",
        (*SAMPLE, "--guidance_scale=-1"),
        "--guidance_scale=-1",
        "non-negative",
    ),
    _c("sample NaN guidance", (*SAMPLE, "--guidance_scale=nan"), "--guidance_scale=nan", "finite"),
    _c("sample negative temperature", (*SAMPLE, "--temperature=-2"), "--temperature=-2"),
    _c("sample --steps=0", (*SAMPLE, "--steps=0"), "--steps=0", "positive"),
    _c("sample --num_samples=abc", (*SAMPLE, "--num_samples=abc"), "--num_samples=abc"),
    _c(
        "sample without stage 2",
        SAMPLE,
        "stage2 not found",
        "configs/stage2_maskgit.py",
        workdir="stage1",
    ),
    _c("sample on a missing workdir", SAMPLE, "stage1 not found", "configs/stage1_vibcreg.py"),
    _c(
        "sample --output is a file",
        (*SAMPLE, "--output={case}/taken"),
        "taken is a file",
        workdir="experiment",
        files={"taken": b"x"},
    ),
    _c(
        "sample after stage 1 was retrained",
        SAMPLE,
        "stage2 was trained on stage-1 run",
        "retrain stage 2",
        workdir="experiment",
        prepare=_retrained_stage1,
    ),
    # evaluate.py
    _c("evaluate --fcn_epochs=0", (*EVALUATE, "--fcn_epochs=0"), "--fcn_epochs=0"),
    _c("evaluate --cas_epochs=-1", (*EVALUATE, "--cas_epochs=-1"), "--cas_epochs=-1"),
    _c("evaluate --seed=-1", (*EVALUATE, "--seed=-1"), "--seed=-1"),
    _c("evaluate without --workdir", ("evaluate.py",), "Flag --workdir must have a value"),
    _c(
        "evaluate without stage 2",
        EVALUATE,
        "stage2 not found",
        "configs/stage2_maskgit.py",
        workdir="stage1",
    ),
    _c(
        "evaluate with a file as --cache_dir",
        (*EVALUATE, "--cache_dir={case}/taken"),
        "taken is a file",
        workdir="experiment",
        files={"taken": b"x"},
    ),
]


def _read_only_workdir(case_dir: pathlib.Path, experiment: pathlib.Path) -> pathlib.Path:
    """A copy of the experiment without write permission, or a read-only mount for root."""
    workdir = case_dir / "workdir"
    shutil.copytree(experiment, workdir)
    for path in [workdir, *workdir.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    if not os.access(workdir, os.W_OK):
        return workdir
    if READ_ONLY_FALLBACK.parent.is_dir() and not os.access(READ_ONLY_FALLBACK.parent, os.W_OK):
        return READ_ONLY_FALLBACK  # root ignores permission bits, not read-only mounts
    pytest.skip("no read-only location for this user")


def _prepare(case: Case, case_dir: pathlib.Path, experiment: pathlib.Path) -> dict[str, str]:
    """Sets up the case folder; returns the values of the argument placeholders."""
    workdir = case_dir / "workdir"
    if case.workdir == "experiment":
        shutil.copytree(experiment, workdir)
    elif case.workdir == "stage1":
        shutil.copytree(experiment / "stage1", workdir / "stage1")
    elif case.workdir == "file":
        workdir.write_text("not a folder")
    elif case.workdir == "readonly":
        workdir = _read_only_workdir(case_dir, experiment)
    for relative, content in case.files.items():
        (case_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        (case_dir / relative).write_bytes(content)
    if case.prepare:
        case.prepare(case_dir)
    return {"workdir": str(workdir), "root": str(case_dir / "archive"), "case": str(case_dir)}


def _snapshot(folder: pathlib.Path) -> dict[str, str]:
    """Every path under `folder`: sha256 of each file, "dir" for folders."""
    return {
        str(path.relative_to(folder)): (
            "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        )
        for path in sorted(folder.rglob("*"))
    }


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "PYTHONPATH": str(ROOT),
    }


class _Server:
    """The forking server (see SERVER): `run(argv, folder)` -> (returncode, stdout, stderr)."""

    def __init__(self):
        self._process = subprocess.Popen(
            [sys.executable, "-c", SERVER],
            cwd=ROOT,
            env=_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, argv: list[str], folder: pathlib.Path) -> tuple[int, str, str]:
        out, err = folder / "stdout.txt", folder / "stderr.txt"
        request = {"argv": argv, "stdout": str(out), "stderr": str(err), "timeout": CASE_TIMEOUT_S}
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        reply = json.loads(self._process.stdout.readline())
        return reply["returncode"], out.read_text(), err.read_text()

    def close(self) -> None:
        self._process.stdin.close()
        self._process.wait(timeout=60)


@pytest.fixture(scope="module")
def server():
    running = _Server()
    yield running
    running.close()


def _run_case(case, server, tiny_experiment, tmp_path):
    case_dir, output_dir = tmp_path / "case", tmp_path / "output"
    case_dir.mkdir()
    output_dir.mkdir()
    values = _prepare(case, case_dir, tiny_experiment)
    argv = [arg.format(**values) for arg in case.args]
    before = _snapshot(case_dir)
    try:
        returncode, stdout, stderr = server.run(argv, output_dir)
    finally:
        for path in case_dir.rglob("*"):  # read-only copies must stay removable
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    return before, _snapshot(case_dir), returncode, stdout, stderr


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case, server, tiny_experiment, tmp_path):
    before, after, returncode, stdout, stderr = _run_case(case, server, tiny_experiment, tmp_path)
    lines = stderr.splitlines()
    assert returncode != 0, (stdout, stderr)
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    for expected in case.expected:
        assert expected in lines[0], (expected, lines[0])
    assert after == before


def test_server_matches_fresh_process(server, tiny_experiment, tmp_path):
    """The forked children behave as `python <script>`: same status, same stderr."""
    cases = [CASES[0], next(c for c in CASES if c.name == "sample --class_id out of range")]
    for index, case in enumerate(cases):
        folder = tmp_path / str(index)
        folder.mkdir()
        values = _prepare(case, folder, tiny_experiment)
        argv = [arg.format(**values) for arg in case.args]
        fresh = subprocess.run(
            [sys.executable, *argv], cwd=ROOT, env=_env(), capture_output=True, text=True
        )
        returncode, _, stderr = server.run(argv, folder)
        assert (returncode, stderr) == (fresh.returncode, fresh.stderr)


def test_bug_keeps_its_traceback(server, tmp_path):
    """Only UserError is shortened: any other exception is a bug and shows where it happened."""
    script = tmp_path / "buggy.py"
    script.write_text(
        "from ssl_vqvae import cli\n"
        "def main(argv):\n"
        "    raise ValueError('internal invariant broken')\n"
        "cli.run(main)\n"
    )
    returncode, _, stderr = server.run([str(script)], tmp_path)
    assert returncode == 1
    assert "Traceback" in stderr and "ValueError: internal invariant broken" in stderr


# What the checks let through.


@pytest.mark.parametrize("method", config_lib.SSL_METHODS)
@pytest.mark.parametrize("arg", [None, "tiny"])
def test_shipped_stage1_configs_pass_and_every_field_has_a_rule(method, arg):
    config = config_lib.load_config_file(f"{config_lib.STAGE1_CONFIGS[method]}:{arg or ''}")
    settings = validation.validate(config)
    assert set(config_lib.flatten(settings.to_dict())) == set(validation.STAGE1_RULES)


@pytest.mark.parametrize("arg", [None, "tiny"])
def test_shipped_stage2_configs_pass_and_every_field_has_a_rule(arg):
    config = config_lib.load_config_file(f"stage2_maskgit:{arg or ''}")
    settings = validation.validate(config)
    assert set(config_lib.flatten(settings.to_dict())) == set(validation.STAGE2_RULES)


def test_mutable_fields_exist():
    fields = set(config_lib.flatten(config_lib.load_config_file("stage1_vibcreg")))
    fields |= set(config_lib.flatten(config_lib.load_config_file("stage2_maskgit")))
    assert layout.MUTABLE_FIELDS <= fields and layout.BUDGET_FIELDS <= fields


def _copy(tiny_experiment, tmp_path):
    workdir = tmp_path / "workdir"
    shutil.copytree(tiny_experiment, workdir)
    return workdir


def test_guard_accepts_and_records_interval_and_budget_changes(tiny_experiment, tmp_path, capsys):
    workdir = _copy(tiny_experiment, tmp_path)
    stored = layout.read_resolved(workdir / "stage1")
    config = config_lib.load_config_file("stage1_vibcreg:tiny")
    config.train.log_every = 2
    check = layout.check_run_dir(workdir, "stage1", config, overwrite=False)
    assert check.changes == {"train.log_every": (4, 2)}
    assert layout.begin_run(check, "stage1") == stored["run_id"]  # same weights lineage
    config.train.num_steps = 12
    check = layout.check_run_dir(workdir, "stage1", config, overwrite=False)
    assert check.changes == {"train.log_every": (4, 2), "train.num_steps": (8, 12)}
    assert layout.begin_run(check, "stage1") != stored["run_id"]  # trained further
    history = (workdir / "stage1" / layout.HISTORY_FILE).read_text().splitlines()
    assert [json.loads(line)["changes"] for line in history] == [
        {"train.log_every": [4, 2]},
        {"train.log_every": [4, 2], "train.num_steps": [8, 12]},
    ]
    assert "train.num_steps: 8 -> 12" in capsys.readouterr().out


def test_guard_accepts_the_same_stage2_request(tiny_experiment, tmp_path):
    """Resolved values live in resolved.json, so the stored request equals a rerun's."""
    workdir = _copy(tiny_experiment, tmp_path)
    stored = json.loads((workdir / "stage2" / "config.json").read_text())
    assert not {"run_id", "code_usage", "prior_variant"} & set(stored)
    check = layout.check_run_dir(
        workdir, "stage2", config_lib.load_config_file("stage2_maskgit:tiny"), overwrite=False
    )
    assert check.changes == {} and check.stored == stored


def test_overwrite_moves_the_stage_aside_and_keeps_it(tiny_experiment, tmp_path):
    workdir = _copy(tiny_experiment, tmp_path)
    before = _snapshot(workdir / "stage1")
    config = config_lib.load_config_file("stage1_barlowtwins:tiny")
    check = layout.check_run_dir(workdir, "stage1", config, overwrite=True)
    assert _snapshot(workdir / "stage1") == before  # checking writes nothing
    run_id = layout.begin_run(check, "stage1")
    (moved,) = workdir.glob("stage1.old-*")
    assert _snapshot(moved) == before and not (workdir / "stage1").exists()
    assert run_id != layout.read_resolved(moved)["run_id"]
