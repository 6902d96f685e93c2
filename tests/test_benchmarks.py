"""`python -m benchmarks`: a tiny smoke run of one row, and the helpers its numbers rest on."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import common  # noqa: E402

from ssl_vqvae import sharding, train_state  # noqa: E402


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory):
    """One tiny `fcn` row (the cheapest to compile) over 4 CPU devices; (JSON, stdout)."""
    output = tmp_path_factory.mktemp("bench") / "results.json"
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
    }
    command = [sys.executable, "-m", "benchmarks", "--tiny", "--rows=fcn", "--steps=2"]
    command += ["--repeats=1", f"--json={output}"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(output.read_text()), result.stdout


def test_row_has_every_measurement(suite_run):
    results, _ = suite_run
    assert results["failed"] == []
    (row,) = results["rows"]
    assert row["row"] == "fcn" and row["batch"] == 48  # 50 train series, 4 devices
    for key in ("ms", "cpu_ms", "samples_per_s", "flops", "gflops", "cold_s", "warm_s"):
        assert row[key] > 0, key
    for key in ("ms_iqr", "cpu_ms_iqr"):
        assert row[key] >= 0, key
    assert row["ms_min"] <= row["ms"] <= row["ms_max"]
    assert 0 < row["mfu"] <= 1
    assert row["program_devices"] == 4
    assert row["peak_rss_mib"] > 0 and row["xla_mib"] > 0
    assert row["cpu_count"] >= 1 and row["affinity_cpus"] >= 1
    env = results["environment"]
    assert env["backend"] == "cpu" and env["device_count"] == 4 and env["device_kind"]


def test_cold_compile_misses_and_warm_compile_hits_the_persistent_cache(suite_run):
    (row,) = suite_run[0]["rows"]
    assert row["cold_cache_misses"] >= 1 and row["cold_cache_hits"] == 0
    assert row["warm_cache_hits"] >= 1 and row["warm_cache_misses"] == 0


def test_derived_numbers_agree(suite_run):
    results, stdout = suite_run
    (row,) = results["rows"]
    peak = results["peak"]["f32"]
    assert peak["flops"] == 4 * 2 * 1024**3  # tiny peak: one 1024^3 matmul per device
    seconds = row["ms"] / 1000
    np.testing.assert_allclose(row["gflops"], row["flops"] / seconds / 1e9, rtol=1e-9)
    np.testing.assert_allclose(row["samples_per_s"], row["batch"] / seconds, rtol=1e-9)
    np.testing.assert_allclose(row["mfu"], row["gflops"] / peak["gflops"], rtol=1e-9)
    table = [line.split() for line in stdout.splitlines()]
    assert ["peak_f32", "4"] in [line[:2] for line in table]
    assert ["fcn", "48"] in [line[:2] for line in table]


def test_flops_count_every_device_of_a_sharded_program():
    mesh = sharding.make_mesh()
    x = sharding.shard_batch({"x": np.ones((mesh.size, 32, 32), np.float32)}, mesh)["x"]
    compiled = jax.jit(jnp.matmul).lower(x, x).compile()
    assert common.program_devices(compiled) == mesh.size == 4
    assert common.analysed_flops(compiled) == mesh.size * 2 * 32**3


def test_unwrap_step_returns_the_jitted_step_and_its_frozen_arguments():
    mesh = sharding.make_mesh()
    frozen = {"scale": jnp.float32(3.0)}

    def step(state, batch, rng, extra):
        del rng
        return state + extra["scale"] * batch["x"].sum(), {"loss": state}

    jitted, args = common.unwrap_step(train_state.compile_step(step, mesh, frozen))
    assert len(args) == 1 and float(args[0]["scale"]) == 3.0
    batch = sharding.shard_batch({"x": np.ones((4,), np.float32)}, mesh)
    state, _ = jitted.lower(jnp.float32(1.0), batch, jax.random.key(0), *args).compile()(
        jnp.float32(1.0), batch, jax.random.key(0), *args
    )
    assert float(state) == 13.0
    with pytest.raises(TypeError, match="compile_step"):
        common.unwrap_step(lambda state, batch, rng: (state, {}))
