"""The cached, bucketed generator (SPEC §4.5): one compiled program per batch bucket, exactly the
requested rows, the documented batch layout, and one shared generator per configuration."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_vqvae import generate, sampling, sharding
from ssl_vqvae.transformer import MaskGITTransformer
from ssl_vqvae.vqvae import VQVAE

NUM_CLASSES = 3
DECODING = generate.DecodingConfig(num_steps=2)


@pytest.fixture(scope="module")
def tiny():
    """(prior, tokenizer, prior params, tokenizer variables, mesh): randomly initialised tiny
    modules (the weights do not matter here) on the 4 test devices."""
    tokenizer = VQVAE(length=16, n_fft=8, hidden_dim=8, num_res_blocks=1, codebook_size=8)
    x = jnp.zeros((2, tokenizer.length, 1))
    tokenizer_variables = tokenizer.init(jax.random.key(0), x, train=False)
    height, width = tokenizer.token_grid
    prior = _prior(height * width)
    tokens = jnp.zeros((2, prior.num_tokens), jnp.int32)
    prior_params = prior.init(jax.random.key(1), tokens, jnp.zeros(2, jnp.int32), train=False)
    return prior, tokenizer, prior_params, tokenizer_variables, sharding.make_mesh()


def _prior(num_tokens: int, depth: int = 1) -> MaskGITTransformer:
    return MaskGITTransformer(
        codebook_size=8,
        num_tokens=num_tokens,
        num_classes=NUM_CLASSES,
        embed_dim=8,
        hidden_dim=16,
        depth=depth,
        num_heads=1,
        head_dim=8,
        mlp_dim=16,
    )


def _count_traces(monkeypatch) -> list[int]:
    """A list that grows by one each time a generator traces (compiles) its decoding."""
    traces = []
    decode = sampling.iterative_decode

    def counting(*args, **kwargs):
        traces.append(1)
        return decode(*args, **kwargs)

    monkeypatch.setattr(sampling, "iterative_decode", counting)
    return traces


def _ids(n: int) -> np.ndarray:
    return (np.arange(n) % (NUM_CLASSES + 1)).astype(np.int32)  # every class and the null one


def test_bucket_batch_size():
    assert generate.BATCH_RUNGS == (8, 32, 128, 512)
    cases = {(1, 4): 32, (32, 4): 32, (33, 4): 128, (300, 4): 512, (5000, 4): 2048}
    cases |= {(1, 1): 8, (9, 1): 32, (512, 1): 512, (1000, 1): 512}
    for (num_samples, num_devices), size in cases.items():
        assert generate.bucket_batch_size(num_samples, num_devices) == size


def test_requests_get_their_rows_from_one_program_per_bucket(tiny, monkeypatch):
    prior, tokenizer, prior_params, tokenizer_variables, mesh = tiny
    traces = _count_traces(monkeypatch)
    generator = generate.Generator(prior, tokenizer, DECODING)
    # (request, programs compiled so far): buckets 4 x 8 (1 and 7), 4 x 32 (100), 4 x 128 (300).
    for num_samples, num_traces in ((1, 1), (7, 1), (100, 2), (300, 3), (7, 3), (1, 3), (100, 3)):
        series = generator(
            prior_params, tokenizer_variables, _ids(num_samples), jax.random.key(0), 2.0, mesh
        )
        assert series.shape == (num_samples, tokenizer.length, 1)
        assert np.isfinite(series).all()
        assert len(traces) == num_traces


def test_batches_follow_the_documented_layout(tiny, monkeypatch):
    """Batch i holds rows [8i, 8i + 8) (rungs (1, 2) on 4 devices), uses fold_in(rng, i), and the
    last batch repeats its final class; every batch runs one program."""
    prior, tokenizer, prior_params, tokenizer_variables, mesh = tiny
    traces = _count_traces(monkeypatch)
    generator = generate.Generator(prior, tokenizer, DECODING, rungs=(1, 2))
    class_ids, rng = _ids(19), jax.random.key(7)
    series = generator(prior_params, tokenizer_variables, class_ids, rng, 2.0, mesh)
    assert len(traces) == 1
    plain = generate.make_generator(prior, tokenizer, DECODING)
    expected = []
    for index, start in enumerate((0, 8, 16)):
        chunk = class_ids[start : start + 8]
        padded = np.concatenate([chunk, np.full(8 - len(chunk), chunk[-1], np.int32)])
        ids = sharding.shard_batch({"y": padded}, mesh)["y"]
        batch = plain(
            prior_params,
            tokenizer_variables,
            ids,
            jax.random.fold_in(rng, index),
            jnp.float32(2.0),
        )
        expected.append(np.asarray(batch)[: len(chunk)])
    np.testing.assert_array_equal(series, np.concatenate(expected))
    # The batches drew different keys: equal class ids in different batches differ.
    assert not np.array_equal(series[0], series[8])


def test_cached_generator_equals_a_fresh_one_and_compiles_once(tiny, monkeypatch):
    prior, tokenizer, prior_params, tokenizer_variables, mesh = tiny
    traces = _count_traces(monkeypatch)
    decoding = dataclasses.replace(DECODING, choice_temperature=3.0)  # no earlier test's entry
    args = (prior_params, tokenizer_variables, _ids(10), jax.random.key(3), None, mesh)
    cached = generate.generator_for(prior, tokenizer, decoding)(*args)
    # Equal but distinct modules and config (another caller's): the same compiled sampler.
    again = generate.generator_for(
        dataclasses.replace(prior), dataclasses.replace(tokenizer), dataclasses.replace(decoding)
    )(*args)
    assert len(traces) == 1
    fresh = generate.Generator(prior, tokenizer, decoding)(*args)
    assert len(traces) == 2
    np.testing.assert_array_equal(cached, again)
    np.testing.assert_array_equal(cached, fresh)


def test_cache_is_keyed_by_modules_and_decoding(tiny):
    prior, tokenizer, *_ = tiny
    shared = generate.generator_for(prior, tokenizer, DECODING)
    assert generate.generator_for(prior, tokenizer, generate.DecodingConfig(num_steps=2)) is shared
    assert generate.generator_for(dataclasses.replace(prior), tokenizer, DECODING) is shared
    others = [
        generate.generator_for(prior, tokenizer, dataclasses.replace(DECODING, num_steps=3)),
        generate.generator_for(prior, tokenizer, dataclasses.replace(DECODING, allowed_codes=(1,))),
        generate.generator_for(_prior(prior.num_tokens, depth=2), tokenizer, DECODING),
        generate.generator_for(prior, dataclasses.replace(tokenizer, hidden_dim=4), DECODING),
    ]
    assert len({id(generator) for generator in [shared, *others]}) == 5
    assert others[0].decoding.num_steps == 3


def test_empty_request_is_rejected(tiny):
    prior, tokenizer, prior_params, tokenizer_variables, mesh = tiny
    generator = generate.generator_for(prior, tokenizer, DECODING)
    with pytest.raises(ValueError, match="class_ids"):
        generator(prior_params, tokenizer_variables, np.zeros(0), jax.random.key(0), None, mesh)
