"""`model.dead_code`: the reference's exploding unused codewords vs. keeping them (SPEC §7.11)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_vqvae import config_lib, stage1
from ssl_vqvae.quantizer import VectorQuantizer

K, D = 8, 4
DECAY, EPS = 0.9, 1e-5
USED = (0, 1, 2)  # codes the test batches are built around
FADING = 3  # code used only in the first batch of the multi-step test


def _init(mode: str):
    quantizer = VectorQuantizer(codebook_size=K, dim=D, decay=DECAY, eps=EPS, dead_code=mode)
    variables = quantizer.init(jax.random.key(0), jnp.zeros((1, D)), train=False)
    return quantizer, variables


def _batch(codebook: jax.Array, codes, per_code: int, seed: int) -> jax.Array:
    """Vectors within 1e-3 of the given codewords, so each is assigned to its own code."""
    centres = jnp.repeat(codebook[jnp.asarray(codes)], per_code, axis=0)
    return centres + 1e-3 * jax.random.normal(jax.random.key(seed), centres.shape)


def _step(quantizer, variables, z):
    output, updated = quantizer.apply(variables, z, train=True, mutable=["vq"])
    return output, {"vq": updated["vq"]}


def test_one_step_reference_explodes_keep_stays_and_used_codes_agree():
    z = None
    after = {}
    for mode in ("reference", "keep"):
        quantizer, variables = _init(mode)
        initial = np.asarray(variables["vq"]["codebook"])
        z = _batch(variables["vq"]["codebook"], USED, per_code=4, seed=1) if z is None else z
        output, variables = _step(quantizer, variables, z)
        assert sorted(set(np.asarray(output.indices).tolist())) == list(USED)
        after[mode] = jax.tree.map(np.asarray, variables["vq"])
    unused = [k for k in range(K) if k not in USED]

    # SPEC §2.5 by hand: n_k = 0 -> n~_k = eps * total / (total + K eps), m_k = decay * e0_k.
    total = (1 - DECAY) * len(z)
    smoothed = EPS * total / (total + K * EPS)
    init_norms = np.linalg.norm(initial[unused], axis=-1)
    ref_norms = np.linalg.norm(after["reference"]["codebook"][unused], axis=-1)
    np.testing.assert_allclose(ref_norms, DECAY * init_norms / smoothed, rtol=1e-5)
    assert ref_norms.min() > 1e4 * init_norms.max()

    np.testing.assert_array_equal(after["keep"]["codebook"][unused], initial[unused])
    # Used codes move, identically under both settings; the EMA statistics never differ.
    used = list(USED)
    assert not np.allclose(after["keep"]["codebook"][used], initial[used])
    np.testing.assert_array_equal(
        after["keep"]["codebook"][used], after["reference"]["codebook"][used]
    )
    for name in ("cluster_size", "embed_sum"):
        np.testing.assert_array_equal(after["keep"][name], after["reference"][name])


def test_keep_freezes_never_used_and_faded_codes_over_many_steps():
    codebooks = {}
    for mode in ("reference", "keep"):
        quantizer, variables = _init(mode)
        initial = np.asarray(variables["vq"]["codebook"])
        history = []
        for step in range(80):
            codes = USED + (FADING,) if step == 0 else USED
            # Vectors at the current codewords keep every assignment as intended.
            z = _batch(variables["vq"]["codebook"], codes, 4, seed=step)
            output, variables = _step(quantizer, variables, z)
            assert sorted(set(np.asarray(output.indices).tolist())) == sorted(codes)
            history.append(np.asarray(variables["vq"]["codebook"]))
        codebooks[mode] = np.stack(history)
    never = [k for k in range(K) if k not in USED + (FADING,)]
    keep, reference = codebooks["keep"], codebooks["reference"]

    np.testing.assert_array_equal(keep[-1, never], initial[never])
    assert np.all(np.isfinite(keep)) and np.abs(keep).max() < 100
    # n_FADING = 0.4 * 0.9^s drops below 1% of (1 - decay) at s = 57: frozen from then on ...
    np.testing.assert_array_equal(keep[60, FADING], keep[-1, FADING])
    assert not np.allclose(reference[60, FADING], reference[-1, FADING])
    # ... and follows m / n~ (the reference) before.
    np.testing.assert_array_equal(keep[:57, FADING], reference[:57, FADING])
    assert not np.allclose(keep[10, FADING], keep[50, FADING])
    np.testing.assert_array_equal(keep[:, list(USED)], reference[:, list(USED)])


def test_config_reaches_the_quantizer_of_the_model():
    config = config_lib.load_config_file("stage1_vqvae:tiny")
    assert config.model.dead_code == "reference"
    for mode in ("reference", "keep"):
        config.model.dead_code = mode
        model = stage1.build_model(config, 64, 1)
        assert model.bind({}).quantizer.dead_code == mode


def test_unknown_mode_fails_clearly():
    with pytest.raises(ValueError, match="dead_code='drop'"):
        _init("drop")
