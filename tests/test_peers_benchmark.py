"""`python -m benchmarks.peers --tiny`: one stage-2 row, package and project side by side, on CPU.

Stage 2 is the cheapest row to set up (stage 1 compiles a larger step, sampling makes the
package decode 128 series per call); `--tiny` sizes, one call per block, two blocks per side.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch", reason="needs the peers extra: make peers")
pytest.importorskip("timevqvae", reason="needs the peers extra: make peers")

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import peers  # noqa: E402

# Trainable parameters of both stage-2 models at the `:tiny` sizes on GunPoint: the package's
# LF prior (21,524) and HF prior (16,520), counted on a `MaskGIT` built directly from the package
# with the tiny values of configs/arguments.py written out (embedding 16, LF width 32, 1 layer,
# 2 heads, HF width 16, codebooks of 16) over a tiny `VQVAE`; not derived from peers.py.
STAGE2_TINY_PARAMS = 38_044
REPEATS = 2


@pytest.fixture(scope="module")
def peers_run(tmp_path_factory):
    """(JSON, stdout) of `--rows=stage2_b32 --steps=1 --repeats=2 --tiny` on the CPU; one torch
    thread, so that a busy machine does not stall torch's second thread (benchmarks/README.md)."""
    output = tmp_path_factory.mktemp("peers") / "peers.json"
    command = [sys.executable, "-m", "benchmarks.peers", "--rows=stage2_b32", "--steps=1"]
    command += [f"--repeats={REPEATS}", "--device=cpu", "--torch_threads=1", "--tiny"]
    command += [f"--json={output}"]
    # Cold compiles take most of this run; LLVM at -O0 halves them. The test checks the harness
    # and the models' sizes, which that does not change, not the speed.
    xla_flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags.strip()}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(output.read_text()), result.stdout


def test_both_sides_have_finite_positive_times(peers_run):
    (row,) = peers_run[0]["rows"]
    assert (row["row"], row["batch"], row["steps"], row["repeats"]) == ("stage2_b32", 32, 1, 2)
    for name in peers.SIDES:
        side = row[name]
        for key in ("ms", "ms_min", "ms_max", "cpu_ms", "samples_per_s", "first_call_ms"):
            assert np.isfinite(side[key]) and side[key] > 0, (name, key)
        assert len(side["ms_samples"]) == len(side["cpu_ms_samples"]) == REPEATS
        assert side["ms_min"] <= side["ms"] <= side["ms_max"]
        np.testing.assert_allclose(side["samples_per_s"], 32 / (side["ms"] / 1000), rtol=1e-9)
    assert row["project"]["compile_s"] > 0 and row["package"]["compile_s"] is None
    np.testing.assert_allclose(row["ratio"], row["package"]["ms"] / row["project"]["ms"])


def test_parameter_counts_are_equal(peers_run):
    results, stdout = peers_run
    (row,) = results["rows"]
    assert row["package"]["params"] == row["project"]["params"] == STAGE2_TINY_PARAMS
    assert row["params_equal"] and "WARNING" not in stdout


def test_table_and_environment(peers_run):
    results, stdout = peers_run
    lines = [line.split() for line in stdout.splitlines()]
    assert ["stage2_b32", "package", "32"] in [line[:3] for line in lines]
    assert ["stage2_b32", "project", "32"] in [line[:3] for line in lines]
    env = results["environment"]
    assert env["backend"] == "cpu" and env["torch_device"] == "cpu"
    assert env["torch_threads"] == 1 and env["xla_eigen_threads"] >= 1


def test_rows_select_by_pattern():
    assert peers.parse_args(["--rows=stage1_*,sampling_128"]).rows == [
        "stage1_b32",
        "stage1_b128",
        "sampling_128",
    ]
    with pytest.raises(SystemExit):
        peers.parse_args(["--rows=stage3_*"])
