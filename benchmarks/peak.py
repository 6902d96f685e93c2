"""The matmul peak that MFU is measured against: `peak_f32` (and `peak_bf16` on GPU).

One call multiplies, on every device of the mesh, two N x N matrices (a [devices, N, N] batch
split along the "data" axis), at the backend's default matmul precision; it is timed like every
other row, so `GFLOP/s` of this row is the best the same devices reach on dense matmuls in this
run. N = 2048 on CPU and 8192 on accelerators (halved with `--tiny`).
"""

from __future__ import annotations

from typing import Any

import common
import jax
import jax.numpy as jnp

from ssl_vqvae import sharding

SIZE = {"cpu": 2048}
ACCELERATOR_SIZE = 8192
DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16}


def available(dtype: str) -> bool:
    """bf16 is measured only on accelerators (the models train in float32; CPUs emulate it)."""
    return dtype == "f32" or jax.default_backend() != "cpu"


def case(context: common.Context, dtype: str) -> common.Case:
    """A batched matmul of one N x N pair per device in `dtype`."""
    mesh = context.mesh
    size = SIZE.get(jax.default_backend(), ACCELERATOR_SIZE)
    if context.config_arg == "tiny":
        size //= 2
    shape = (mesh.size, size, size)
    draw = jax.jit(
        lambda key: jax.random.normal(key, shape, DTYPES[dtype]),
        out_shardings=sharding.batch_sharded(mesh),
    )
    a, b = draw(jax.random.key(0)), draw(jax.random.key(1))
    outputs: dict[str, jax.Array] = {}

    def make_call(compiled: Any) -> Any:
        def call() -> jax.Array:
            outputs["product"] = compiled(a, b)
            return outputs["product"]

        return call

    def check() -> None:
        if not bool(jnp.all(jnp.isfinite(outputs["product"]))):
            raise FloatingPointError("matmul product holds NaN or inf")

    info = {"dtype": dtype, "matmul": f"{size}^3 x {mesh.size}", "batch": mesh.size}
    return common.Case(info, mesh.size, jax.jit(jnp.matmul), (a, b), make_call, check)
