"""`input_pipeline.TrainBatches`: the grain stream equals the old synchronous iterator bit for
bit (`batch_oracle.BatchIterator`), resumes from its state, and makes batches ahead of the step."""

import time

import jax
import numpy as np
import pytest
from batch_oracle import BatchIterator

from ssl_vqvae import data, pipeline, sharding
from ssl_vqvae.input_pipeline import TrainBatches

WARP = ("window_warp", "amplitude_resize")
NUM_BATCHES = 12  # batches of 8 over 30 series: 3.2 epochs, batches straddle epoch ends


@pytest.fixture(scope="module")
def split():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 64, 1)).astype(np.float32)
    return data.Split(x, rng.integers(0, 3, 30).astype(np.int32))


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh()


def _host(batch):
    return {key: np.asarray(value) for key, value in batch.items()}


def _assert_same_stream(got, expected):
    assert len(got) == len(expected)
    for index, (ours, theirs) in enumerate(zip(got, expected, strict=True)):
        assert sorted(ours) == sorted(theirs), index
        for key in theirs:
            assert ours[key].dtype == theirs[key].dtype, (index, key)
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=f"{index} {key}")


def _take(stream, count):
    return [_host(next(stream)) for _ in range(count)]


@pytest.mark.parametrize("augmentations", [(), WARP], ids=["plain", "warp"])
@pytest.mark.parametrize("prefetch", [0, 2])
def test_stream_equals_the_old_iterator(split, mesh, augmentations, prefetch):
    batches = TrainBatches(split, 8, 5, mesh, augmentations, prefetch=prefetch)
    got = _take(batches, NUM_BATCHES)
    batches.close()
    _assert_same_stream(got, _take(BatchIterator(split, 8, 5, augmentations), NUM_BATCHES))


def test_batches_are_global_arrays_split_over_the_mesh(split, mesh):
    batches = TrainBatches(split, 8, 0, mesh, WARP)
    batch = next(batches)
    batches.close()
    assert jax.device_count() == 4
    for value in batch.values():
        assert value.shape[0] == 8 and value.sharding == sharding.batch_sharded(mesh)
        assert len(value.addressable_shards) == 4
        assert value.addressable_shards[0].data.shape[0] == 2


def test_resume_from_a_saved_state_continues_exactly(split, mesh):
    """The state is the old iterator's, so checkpoints of either resume in the other."""
    oracle = BatchIterator(split, 8, 2, WARP)
    expected = _take(oracle, NUM_BATCHES)
    first = TrainBatches(split, 8, 2, mesh, WARP)
    assert first.get_state() == {"epoch": 0, "position": 0}
    _take(first, 5)
    saved = first.get_state()
    first.close()
    replay = BatchIterator(split, 8, 2, WARP)
    _take(replay, 5)
    assert saved == replay.get_state() == {"epoch": 1, "position": 10}

    resumed = TrainBatches(split, 8, 2, mesh, WARP)
    resumed.set_state(saved)
    _assert_same_stream(_take(resumed, NUM_BATCHES - 5), expected[5:])
    # Back to an earlier position while batches were made ahead: those are dropped.
    resumed.set_state({"epoch": 0, "position": 16})
    _assert_same_stream(_take(resumed, 3), expected[2:5])
    assert resumed.get_state() == {"epoch": 1, "position": 10}
    resumed.close()
    _assert_same_stream(_take(resumed, 1), expected[5:6])  # close, then on where it was
    resumed.close()


def test_a_state_between_batches_is_refused(split, mesh):
    batches = TrainBatches(split, 8, 0, mesh)
    with pytest.raises(ValueError, match="not the start of a batch of 8 over 30 series"):
        batches.set_state({"epoch": 0, "position": 4})


def test_bad_sizes_are_refused(split, mesh):
    with pytest.raises(ValueError, match="batch of 6 does not split over 4 devices"):
        TrainBatches(split, 6, 0, mesh)
    with pytest.raises(ValueError, match="workers=-1"):
        TrainBatches(split, 8, 0, mesh, workers=-1)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_batches_are_made_ahead_only_with_prefetch(split, mesh, monkeypatch, prefetch):
    made = []
    original = pipeline.BatchRows.__call__

    def recording(rows, index):
        made.append(int(index))
        return original(rows, index)

    monkeypatch.setattr(pipeline.BatchRows, "__call__", recording)
    batches = TrainBatches(split, 8, 0, mesh, prefetch=prefetch)
    next(batches)
    # Double buffering: while batch 0 is in use, batches 1 and 2 wait on the devices and the
    # thread holds batch 3 until there is room; without prefetch nothing is made ahead.
    expected = list(range(prefetch + 2 if prefetch else 1))
    deadline = time.monotonic() + 30
    while len(made) < len(expected) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert made == expected
    batches.close()


def test_grain_worker_processes_make_the_same_stream(split, mesh):
    batches = TrainBatches(split, 8, 3, mesh, WARP, workers=2)
    got = _take(batches, 6)
    state = batches.get_state()
    batches.set_state(state)  # restarts the workers at the next batch
    got += _take(batches, 2)
    batches.close()
    _assert_same_stream(got, _take(BatchIterator(split, 8, 3, WARP), 8))
