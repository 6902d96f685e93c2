"""The benchmark suite behind `python -m benchmarks` (see benchmarks/README.md).

    python -m benchmarks [--rows=stage1_*,fcn] [--steps=N] [--repeats=5] [--tiny]
        [--json=benchmarks/results/latest.json] [--profile=DIR [--profile_steps=3]]
        [--dataset=GunPoint] [--data_root=DIR]

Every row runs in its own fresh process (a worker: this module with `--worker=ROW`), so that
its cold compile starts from an empty persistent compilation cache of its own and its RSS
high-water mark is its own. The first worker measures the matmul peak of the devices; MFU of a
row = its achieved FLOP/s (XLA cost analysis / median wall time) over the float32 peak. The
parent process never starts a JAX backend (on a GPU it would hold the memory the workers need);
it collects the workers' JSON, prints the table and writes the combined JSON.
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import pathlib
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import classifiers
import common
import input_wait
import peak
import sampling
import stage1
import stage2

from ssl_vqvae import compilation_cache, data, sharding

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "latest.json"
PEAK_WORKER = "peak"
TRAIN_STEPS = 10  # timed calls per block of a train step (and of the matmul)
SAMPLING_STEPS = 1  # a sampling call already runs T decoding steps
SAMPLE_COUNTS = (128, 1024)

Builder = Callable[[common.Context], common.Case]
ROWS: dict[str, Builder] = {
    **{f"stage1_{m}": lambda c, m=m: stage1.case(c, m) for m in ("none", "barlowtwins", "vibcreg")},
    "stage1_vibcreg_input": lambda c: input_wait.case(c, prefetch=2, workers=0),
    "stage1_vibcreg_input_workers": lambda c: input_wait.case(c, prefetch=2, workers=2),
    "stage1_vibcreg_input_sync": lambda c: input_wait.case(c, prefetch=0, workers=0),
    "stage2_token_index": lambda c: stage2.case(c, "none"),
    "stage2_full_embedding": lambda c: stage2.case(c, "vibcreg"),
    **{
        f"sampling_{n}_{mode}": lambda c, n=n, cfg=cfg: sampling.case(c, n, cfg)
        for n in SAMPLE_COUNTS
        for mode, cfg in (("1pass", False), ("cfg", True))
    },
    "fcn": classifiers.fcn_case,
    "cas": classifiers.cas_case,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--rows",
        type=lambda value: [item.strip() for item in value.split(",") if item.strip()],
        default=["*"],
        help=f"comma-separated row names or shell patterns; rows: {', '.join(ROWS)}",
    )
    parser.add_argument(
        "--steps",
        type=int,
        help=f"timed calls per block (default {TRAIN_STEPS}; {SAMPLING_STEPS} for sampling rows)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per row")
    parser.add_argument("--tiny", action="store_true", help="tiny models: a seconds-long smoke run")
    parser.add_argument("--json", type=pathlib.Path, default=DEFAULT_JSON, help="results file")
    parser.add_argument("--profile", type=pathlib.Path, help="write jax.profiler traces here")
    parser.add_argument("--profile_steps", type=int, default=3, help="calls per profile trace")
    parser.add_argument("--dataset", default="GunPoint", help="UCR dataset feeding the rows")
    parser.add_argument("--data_root", default="", help="UCR archive folder, searched first")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker_json", type=pathlib.Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.steps or 1, args.repeats, args.profile_steps) < 1:
        parser.error("--steps, --repeats and --profile_steps must be >= 1")
    return args


def select_rows(patterns: Sequence[str]) -> list[str]:
    """Row names matching any of `patterns`, in suite order; an unmatched pattern is an error."""
    for pattern in patterns:
        if not fnmatch.filter(ROWS, pattern):
            raise SystemExit(f"--rows: {pattern!r} matches no row; rows: {', '.join(ROWS)}")
    return [name for name in ROWS if any(fnmatch.fnmatch(name, p) for p in patterns)]


def worker_cases(name: str) -> list[tuple[str, Builder]]:
    """The (row, builder) pairs one worker measures."""
    if name == PEAK_WORKER:
        return [
            (f"peak_{dtype}", lambda c, d=dtype: peak.case(c, d))
            for dtype in peak.DTYPES
            if peak.available(dtype)
        ]
    return [(name, ROWS[name])]


def run_worker(args: argparse.Namespace) -> None:
    """Measures the rows of `args.worker` in this process; writes them to `args.worker_json`."""
    with tempfile.TemporaryDirectory(prefix="benchmark-cache-") as cache:
        compilation_cache.enable(cache)  # empty: the first compile of each row is cold
        context = common.Context(
            dataset=data.load_ucr(args.dataset, args.data_root or None),
            mesh=sharding.make_mesh(),
            config_arg="tiny" if args.tiny else None,
        )
        results = []
        for name, build in worker_cases(args.worker):
            default = SAMPLING_STEPS if name.startswith("sampling_") else TRAIN_STEPS
            profile = None if args.profile is None else args.profile / name
            result = common.run_case(
                build(context), args.steps or default, args.repeats, profile, args.profile_steps
            )
            results.append({"row": name, **result})
            print(f"{name}: {result['ms']:.1f} ms/call, cold compile {result['cold_s']:.1f} s")
    payload = {"environment": common.environment(), "results": results}
    args.worker_json.write_text(json.dumps(payload, indent=2) + "\n")


def _spawn(name: str, args: argparse.Namespace, folder: pathlib.Path) -> dict[str, Any] | None:
    """Runs one worker; its JSON payload, or None when it failed."""
    out = folder / f"{name}.json"
    command = [sys.executable, str(HERE / "suite.py"), f"--worker={name}", f"--worker_json={out}"]
    command += [f"--repeats={args.repeats}", f"--dataset={args.dataset}"]
    command += [f"--profile_steps={args.profile_steps}", f"--data_root={args.data_root}"]
    command += [] if args.steps is None else [f"--steps={args.steps}"]
    command += ["--tiny"] if args.tiny else []
    command += [] if args.profile is None else [f"--profile={args.profile.absolute()}"]
    print(f"== {name}", flush=True)
    if subprocess.run(command, check=False).returncode != 0 or not out.is_file():
        return None
    return json.loads(out.read_text())


def add_utilisation(rows: list[dict[str, Any]], peaks: dict[str, dict[str, Any]]) -> None:
    """MFU of each row against the float32 matmul peak (and the bf16 one where measured)."""
    for row in rows:
        for dtype, key in (("f32", "mfu"), ("bf16", "mfu_bf16")):
            if dtype in peaks:
                row[key] = row["gflops"] / peaks[dtype]["gflops"]


def summary(payload: dict[str, Any]) -> list[str]:
    """The lines printed above the table."""
    env, peaks = payload["environment"], payload["peak"]
    first = (payload["peak_rows"] + payload["rows"] or [{}])[0]
    peak_text = ", ".join(
        f"{dtype} {row['gflops']:.0f} GFLOP/s ({row['matmul']})" for dtype, row in peaks.items()
    )
    return [
        f"{payload['date']}: {env.get('device_count')} x {env.get('device_kind')} "
        f"({env.get('backend')}), host CPU {env.get('cpu_model')}, jax {env.get('jax')}",
        f"threads: os.cpu_count={first.get('cpu_count')}, affinity={first.get('affinity_cpus')}, "
        f"XLA Eigen pool={first.get('xla_eigen_threads')}; XLA_FLAGS={env.get('XLA_FLAGS')!r}",
        f"matmul peak: {peak_text or 'not measured'}; MFU = GFLOP/s / f32 peak",
        f"median and IQR over {payload['args']['repeats']} blocks; cold/warm s = trace + lower + "
        "compile with an empty / filled persistent cache; RSS = the row process's high-water "
        "mark; XLA MiB = compiled memory analysis (args + outputs + temp, per device); "
        "dev MiB = device peak_bytes_in_use (where reported)",
    ]


def run_suite(args: argparse.Namespace) -> int:
    """Runs the peak worker and one worker per selected row; prints and writes the results."""
    names = select_rows(args.rows)
    payload: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, "-m", "benchmarks", *sys.argv[1:]]),
        "args": {key: value for key, value in vars(args).items() if not key.startswith("worker")},
        "environment": {},
        "peak": {},
        "peak_rows": [],
        "rows": [],
        "failed": [],
    }
    with tempfile.TemporaryDirectory(prefix="benchmarks-") as folder:
        for name in [PEAK_WORKER, *names]:
            result = _spawn(name, args, pathlib.Path(folder))
            if result is None:
                payload["failed"].append(name)
                continue
            payload["environment"] = payload["environment"] or result["environment"]
            key = "peak_rows" if name == PEAK_WORKER else "rows"
            payload[key].extend(result["results"])
    payload["peak"] = {row["dtype"]: row for row in payload["peak_rows"]}
    add_utilisation(payload["rows"], payload["peak"])
    print()
    print("\n".join(summary(payload) + common.table(payload["peak_rows"] + payload["rows"])))
    if payload["failed"]:
        print(f"FAILED: {', '.join(payload['failed'])} (see the output above)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {args.json}")
    return 1 if payload["failed"] else 0


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
    else:
        sys.exit(run_suite(args))


if __name__ == "__main__":
    main()
