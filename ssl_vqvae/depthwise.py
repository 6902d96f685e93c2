"""Depthwise convolutions (one group per input channel, one output channel each) for XLA:CPU.

XLA:CPU runs grouped convolutions, and the weight gradient of input-dilated (transposed) ones,
an order of magnitude slower than the same arithmetic written elementwise. Here a depthwise
correlation is the sum over its kernel taps of strided input windows times per-channel
weights, and its adjoint (a depthwise transposed convolution) is computed polyphase: output
phase r of a stride-s axis (outputs s * m + r) sums the taps r, r + s, ... over shifted input
windows, and the phases are interleaved. Each is the other's input gradient (custom VJPs), so
forward and backward passes are fused slices, products and sums, without zero-dilated inputs.
The products are the convolutions'; only the order of the sums differs (float rounding).

Layout NHWC; kernels [kh, kw, 1, C] (`conv`, HWIO) and [kh, kw, C, 1] (`conv_transpose`,
torch's transposed weight permuted (2, 3, 0, 1)).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp

Padding = Sequence[tuple[int, int]]


def _windows(
    xp: jax.Array, taps: tuple[int, int], strides: tuple[int, int], size: Sequence[int]
) -> Iterator[tuple[tuple[int, int], jax.Array]]:
    """((i, j), xp[:, i + sh * h, j + sw * w]) for each tap, h < size[0], w < size[1]."""
    for tap in itertools.product(*(range(t) for t in taps)):
        ends = [t + (n - 1) * s + 1 for t, n, s in zip(tap, size, strides, strict=True)]
        yield tap, jax.lax.slice(xp, (0, *tap, 0), (len(xp), *ends, xp.shape[3]), (1, *strides, 1))


def _correlate_math(xp: jax.Array, k: jax.Array, strides: tuple[int, int]) -> jax.Array:
    size = [(n - t) // s + 1 for n, t, s in zip(xp.shape[1:3], k.shape[:2], strides, strict=True)]
    return sum(w * k[tap] for tap, w in _windows(xp, k.shape[:2], strides, size))


def _kernel_grad(
    xp: jax.Array, g: jax.Array, taps: tuple[int, int], strides: tuple[int, int]
) -> jax.Array:
    """d/dk of sum(g * correlate(xp, k)) [kh, kw, C]: per tap, sum(window * g) over b, h, w."""
    sums = [jnp.sum(w * g, axis=(0, 1, 2)) for _, w in _windows(xp, taps, strides, g.shape[1:3])]
    return jnp.stack(sums).reshape(*taps, -1)


def _scatter_math(
    g: jax.Array, k: jax.Array, strides: tuple[int, int], full: tuple[int, int]
) -> jax.Array:
    # Output s * m + r of an axis sums taps r + s * d times g[m - d] (d >= 0): g is padded by
    # the largest d before and up to the phases' length after.
    counts = [-(-n // s) for n, s in zip(full, strides, strict=True)]  # outputs per phase
    lo = [(t - 1) // s for t, s in zip(k.shape[:2], strides, strict=True)]
    hi = [max(0, c - n) for c, n in zip(counts, g.shape[1:3], strict=True)]
    gp = jnp.pad(g, ((0, 0), (lo[0], hi[0]), (lo[1], hi[1]), (0, 0)))

    def phase(rh: int, rw: int) -> jax.Array:
        terms = []
        for i, j in itertools.product(
            range(rh, k.shape[0], strides[0]), range(rw, k.shape[1], strides[1])
        ):
            start = (0, lo[0] - (i - rh) // strides[0], lo[1] - (j - rw) // strides[1], 0)
            ends = (len(gp), start[1] + counts[0], start[2] + counts[1], gp.shape[3])
            terms.append(jax.lax.slice(gp, start, ends) * k[i, j])
        return sum(terms) if terms else jnp.zeros((len(g), *counts, g.shape[3]), g.dtype)

    sh, sw = strides
    y = jnp.stack([jnp.stack([phase(rh, rw) for rw in range(sw)], 3) for rh in range(sh)], 2)
    return y.reshape(len(g), counts[0] * sh, counts[1] * sw, -1)[:, : full[0], : full[1]]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def correlate(xp: jax.Array, k: jax.Array, strides: tuple[int, int]) -> jax.Array:
    """Depthwise valid correlation of a padded xp [B, Hp, Wp, C] with k [kh, kw, C]:
    out[b, h, w, c] = sum_ij xp[b, sh * h + i, sw * w + j, c] * k[i, j, c]."""
    return _correlate_math(xp, k, strides)


def _correlate_fwd(xp: jax.Array, k: jax.Array, strides: tuple[int, int]) -> tuple:
    return _correlate_math(xp, k, strides), (xp, k)


def _correlate_bwd(strides: tuple[int, int], res: tuple, g: jax.Array) -> tuple:
    xp, k = res
    return scatter(g, k, strides, xp.shape[1:3]), _kernel_grad(xp, g, k.shape[:2], strides)


correlate.defvjp(_correlate_fwd, _correlate_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def scatter(
    g: jax.Array, k: jax.Array, strides: tuple[int, int], full: tuple[int, int]
) -> jax.Array:
    """Adjoint of `correlate` in xp: out[b, sh h + i, sw w + j, c] += g[b, h, w, c] k[i, j, c].

    g: float [B, H, W, C]; `full` (>= ((H - 1) sh + kh, (W - 1) sw + kw)) is out's spatial size."""
    return _scatter_math(g, k, strides, full)


def _scatter_fwd(
    g: jax.Array, k: jax.Array, strides: tuple[int, int], full: tuple[int, int]
) -> tuple:
    return _scatter_math(g, k, strides, full), (g, k)


def _scatter_bwd(
    strides: tuple[int, int], full: tuple[int, int], res: tuple, dy: jax.Array
) -> tuple:
    g, k = res
    return correlate(dy, k, strides), _kernel_grad(dy, g, k.shape[:2], strides)


scatter.defvjp(_scatter_fwd, _scatter_bwd)


def conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding: Padding) -> jax.Array:
    """`lax.conv_general_dilated(x, kernel, strides, padding, feature_group_count=C)` (NHWC,
    HWIO) for x [B, H, W, C], kernel [kh, kw, 1, C], explicit zero padding."""
    xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    return correlate(xp, kernel[:, :, 0], tuple(strides))


def conv_transpose(
    x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding: Sequence[int]
) -> jax.Array:
    """`torch.nn.functional.conv_transpose2d(..., groups=C)` in NHWC for x [B, H, W, C], kernel
    [kh, kw, C, 1], padding (ph, pw): [B, (H - 1) sh - 2 ph + kh, (W - 1) sw - 2 pw + kw, C]."""
    full = tuple(
        (n - 1) * s + t for n, s, t in zip(x.shape[1:3], strides, kernel.shape[:2], strict=True)
    )
    y = scatter(x, kernel[:, :, :, 0], tuple(strides), full)
    (ph, pw) = padding
    return y[:, ph : full[0] - ph, pw : full[1] - pw]
