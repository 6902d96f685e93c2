"""Parameter initialisers: PyTorch's defaults (the reference's, SPEC §7.10) or Flax's.

PyTorch initialises every `Linear` / `Conv*d` / `ConvTranspose*d` weight with
`kaiming_uniform_(a=sqrt(5))` and its bias from the same range, which both come to
U(-1/sqrt(fan_in), 1/sqrt(fan_in)). `fan_in` is `in_features` for Linear,
`in_channels * prod(kernel)` for a convolution and, because torch reads it off the weight's
second dimension, `out_channels * prod(kernel)` for a transposed convolution. Flax's defaults
(lecun-normal kernels, zero biases) start about sqrt(3) wider and without bias noise, which
changes early training.

`dense` and `conv` also take the compute dtype of mixed precision, the one policy of both models
(`model.dtype`, `prior.dtype`): a name in COMPUTE_DTYPES, a plain string so that it stays a
JSON-serialisable, hashable module field (the stored `model_spec` records it). Parameters are
always created in float32 (Linen's `param_dtype`); with "bfloat16" the layer casts its input and
parameters to bfloat16 and returns bfloat16, with "float32" (the default, the reference's
numerics) every cast is a no-op, so the default program is the one without the option. Which
parts stay float32 under "bfloat16" is said in `vqvae` (stage 1) and `transformer` (stage 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

TORCH = "torch"
FLAX = "flax"
SCHEMES = (TORCH, FLAX)
FLOAT32 = "float32"
BFLOAT16 = "bfloat16"
COMPUTE_DTYPES = (FLOAT32, BFLOAT16)


def check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"init must be one of {SCHEMES}, got {scheme!r}")


def compute_dtype(name: str) -> jnp.dtype:
    """The dtype of a COMPUTE_DTYPES name (a module's `dtype` field)."""
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"dtype must be one of {COMPUTE_DTYPES}, got {name!r}")
    return jnp.dtype(name)


def torch_uniform(fan_in: int) -> nn.initializers.Initializer:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for any shape: torch's default weight and bias init."""
    if fan_in < 1:
        raise ValueError(f"fan_in must be >= 1, got {fan_in}")
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def layer_init(scheme: str, fan_in: int) -> dict[str, nn.initializers.Initializer]:
    """`kernel_init` / `bias_init` keyword arguments for a Dense or Conv under `scheme`.

    `fan_in` is the fan-in as torch computes it for the equivalent layer (see module docstring);
    the Flax scheme ignores it and keeps Flax's defaults.
    """
    check_scheme(scheme)
    if scheme == TORCH:
        init = torch_uniform(fan_in)
        return {"kernel_init": init, "bias_init": init}
    return {"kernel_init": nn.linear.default_kernel_init, "bias_init": nn.initializers.zeros_init()}


def dense(features: int, fan_in: int, scheme: str, dtype: str = FLOAT32, **kwargs) -> nn.Dense:
    """`nn.Dense(features)` initialised like torch's `Linear(fan_in, features)` under `scheme`,
    computing in `dtype` (float32 parameters)."""
    return nn.Dense(features, dtype=compute_dtype(dtype), **layer_init(scheme, fan_in), **kwargs)


def conv(
    features: int,
    in_features: int,
    kernel_size: Sequence[int],
    scheme: str,
    dtype: str = FLOAT32,
    **kwargs,
) -> nn.Conv:
    """`nn.Conv` initialised like torch's `Conv{n}d(in_features, features, kernel_size)`,
    computing in `dtype` (float32 parameters)."""
    fan_in = in_features * math.prod(kernel_size)
    return nn.Conv(
        features,
        tuple(kernel_size),
        dtype=compute_dtype(dtype),
        **layer_init(scheme, fan_in),
        **kwargs,
    )
