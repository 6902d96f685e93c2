"""Shared plumbing of the command-line entry points (train.py, sample.py, evaluate.py).

Bad input ends a program with ONE line on stderr, `error: <culprit and what was expected>`,
and exit status 1: absl's flag errors (unknown flag, wrong type, out of bounds), a missing or
unknown config file, argument (`configs/x.py:<argument>`) or field (`--config.a.b`), and every
`UserError` the program raises later. Any other exception is a bug and keeps its traceback.

ml_collections loads the config file while absl parses the flags, before `main` runs, and
reports an unknown field with a long traceback; `check_config_flag` therefore looks at the
config flags itself first.

`--distributed` connects the processes of a multi-process run (`processes.initialize`) before
`main` runs, so every entry point can run on several hosts.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

import ml_collections
from absl import app, flags, logging

from ssl_vqvae import compilation_cache, config_lib, processes
from ssl_vqvae.errors import UserError, did_you_mean

flags.DEFINE_bool(
    "compilation_cache",
    True,
    "Keep compiled programs in the persistent cache (see ssl_vqvae/compilation_cache.py), so a "
    "rerun of the same configuration does not compile again.",
)
flags.DEFINE_bool(
    "distributed",
    False,
    "Connect the processes of a multi-process run first (jax.distributed.initialize): several "
    "GPU hosts, TPU pods, SLURM jobs, or local CPU processes. Every process takes part in the "
    "checkpoints; only process 0 writes logs, plots and records and prints. The three flags "
    "below are detected on SLURM, TPU pods, Open MPI and Kubernetes.",
)
flags.DEFINE_string(
    "coordinator_address",
    None,
    "With --distributed: host:port of process 0, reachable from every process (default: "
    "detected, or $JAX_COORDINATOR_ADDRESS).",
)
flags.DEFINE_integer(
    "num_processes",
    None,
    "With --distributed: how many processes (default: detected).",
    lower_bound=1,
)
flags.DEFINE_integer(
    "process_id",
    None,
    "With --distributed: this process's index (default: detected).",
    lower_bound=0,
)
flags.register_multi_flags_validator(
    ["distributed", "coordinator_address", "num_processes", "process_id"],
    lambda values: (
        values["distributed"]
        or all(value is None for name, value in values.items() if name != "distributed")
    ),
    "--coordinator_address, --num_processes and --process_id need --distributed",
)


def run(main: Callable[[list[str]], None], config_flag: str | None = None) -> None:
    """`app.run(main)` with one-line errors for bad input and Orbax's INFO logs quieted.

    The persistent compilation cache is on unless `--nocompilation_cache` is given; with
    `--distributed` the processes are connected first.

    Args:
      main: the program, called with the remaining positional arguments (none are allowed).
      config_flag: the name of the `config_flags.DEFINE_config_file` flag, if any.
    """

    def wrapped(argv: list[str]) -> None:
        logging.set_verbosity(logging.WARNING)
        if flags.FLAGS.compilation_cache:
            compilation_cache.enable()
        try:
            if len(argv) > 1:
                raise UserError(
                    f"unexpected arguments {argv[1:]}; expected only --name=value flags"
                )
            if flags.FLAGS.distributed:
                processes.initialize(
                    flags.FLAGS.coordinator_address,
                    flags.FLAGS.num_processes,
                    flags.FLAGS.process_id,
                )
            main(argv)
        except UserError as error:
            fail(error)

    app.run(wrapped, flags_parser=functools.partial(parse_flags, config_flag=config_flag))


def fail(error: Exception) -> NoReturn:
    """Exits with status 1 after printing `error: <message>` as one line on stderr."""
    sys.exit("error: " + " ".join(str(error).split()))


def parse_flags(argv: list[str], config_flag: str | None = None) -> list[str]:
    """absl's flag parsing, with every bad flag or config reported by `fail`."""
    try:
        if config_flag:
            check_config_flag(argv, config_flag)
        return flags.FLAGS(argv)
    except (flags.Error, UserError) as error:
        fail(error)


def check_config_flag(argv: Sequence[str], name: str) -> None:
    """Loads the config file `--<name>` names in `argv`; checks its argument and overrides.

    Raises:
      UserError: the file does not exist or has no `get_config`; the argument after `:` is
        unknown (raised by `configs/arguments.py`); an override `--<name>.a.b` names a field
        the config lacks.
    """
    value = _flag_value(argv, name)
    if value is None:
        return  # absl reports a missing required flag
    config = _load_config(name, value)
    known = config_lib.flatten(config)
    pattern = re.compile(rf"^--?(?:no)?{re.escape(name)}\.([^=]+)")
    for arg in argv[1:]:
        match = pattern.match(arg)
        if match and not _has_field(config, match.group(1)):
            field = match.group(1)
            raise UserError(
                f"{arg}: the config of --{name}={value} has no field {field!r}"
                f"{did_you_mean(field, known)}"
            )


def _flag_value(argv: Sequence[str], name: str) -> str | None:
    """The last value given to `--name` in `argv` (as `--name=v` or `--name v`)."""
    value = None
    for index, arg in enumerate(argv[1:], start=1):
        if arg == "--":
            break
        for dashes in ("--", "-"):
            if arg.startswith(f"{dashes}{name}="):
                value = arg[len(dashes) + len(name) + 1 :]
            elif arg == f"{dashes}{name}" and index + 1 < len(argv):
                value = argv[index + 1]
    return value


def _load_config(name: str, value: str) -> ml_collections.ConfigDict:
    """`get_config(<argument>)` of `--name=<file>[:<argument>]`, as config_flags will call it.

    A bare name (`stage1_vibcreg`) is refused: config_flags loads only paths.
    """
    try:
        return config_lib.load_config_file(value, bare_names=False)
    except UserError as error:
        raise UserError(f"--{name}={value}: {error}") from None


def _has_field(config: ml_collections.ConfigDict, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return False
        node = node[part]
    return True
