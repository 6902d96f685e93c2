"""Tests for the `ucr` TFDS builder: prepared ArrayRecord files read via `tfds.data_source`."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ssl_vqvae import data, tfds_ucr, ucr_tsv

GUNPOINT_SIZES = {"train": 50, "test": 150}


def _write_tsv(path: pathlib.Path, labels: list[float], rows: list[list[float]]) -> None:
    lines = [
        "\t".join(str(v) for v in [label, *row]) for label, row in zip(labels, rows, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def gunpoint(tmp_path_factory):
    """Prepares GunPoint once in a temporary data_dir; returns (data_dir, data sources)."""
    data_dir = tmp_path_factory.mktemp("tfds")
    tfds.builder("ucr/GunPoint", data_dir=data_dir).download_and_prepare(file_format="array_record")
    return data_dir, tfds.data_source("ucr/GunPoint", data_dir=data_dir)


@pytest.fixture(scope="module")
def gunpoint_files():
    """(labels, values) of the bundled GunPoint files per split, read independently of TFDS."""
    train_path, test_path = data.locate_dataset("GunPoint")
    return {"train": ucr_tsv.read_ucr_file(train_path), "test": ucr_tsv.read_ucr_file(test_path)}


def test_builder_registered_with_bundled_and_package_configs():
    assert tfds.builder_cls("ucr") is tfds_ucr.Ucr
    configs = set(tfds_ucr.Ucr.builder_configs)
    assert set(data.bundled_datasets()) <= configs
    assert {"GunPoint", "ArrowHead", "ItalyPowerDemand"} <= configs
    for folder in data.package_data_dirs():
        assert set(tfds_ucr._datasets_in(folder)) <= configs


def test_prepared_files_are_array_record(gunpoint):
    data_dir, _ = gunpoint
    version_dir = data_dir / "ucr" / "GunPoint" / str(tfds_ucr.Ucr.VERSION)
    for split in GUNPOINT_SIZES:
        assert list(version_dir.glob(f"ucr-{split}.array_record-*"))


@pytest.mark.parametrize("split", sorted(GUNPOINT_SIZES))
def test_records_equal_archive_rows(gunpoint, gunpoint_files, split):
    _, sources = gunpoint
    source = sources[split]
    labels, values = gunpoint_files[split]
    assert len(source) == GUNPOINT_SIZES[split] == len(labels)
    records = [source[i] for i in range(len(source))]
    series = np.stack([r["series"] for r in records])
    assert series.dtype == np.float32
    np.testing.assert_array_equal(series, values.astype(np.float32)[..., None])
    # GunPoint labels are 1 and 2: class ids 0 and 1.
    np.testing.assert_array_equal([r["label"] for r in records], labels.astype(int) - 1)


def test_label_names_restored_from_prepared_dir(gunpoint):
    data_dir, _ = gunpoint
    builder = tfds.builder("ucr/GunPoint", data_dir=data_dir)
    assert builder.info.features["label"].names == ["1", "2"]
    assert builder.info.splits["train"].num_examples == GUNPOINT_SIZES["train"]


def test_random_access_by_index(gunpoint, gunpoint_files):
    _, sources = gunpoint
    labels, values = gunpoint_files["test"]
    indices = np.random.default_rng(0).permutation(GUNPOINT_SIZES["test"])[:10]
    for index in indices:
        record = sources["test"][int(index)]
        np.testing.assert_array_equal(record["series"][:, 0], values[index].astype(np.float32))
        assert record["label"] == int(labels[index]) - 1
    batch = sources["test"].__getitems__([int(i) for i in indices[:3]])
    for index, record in zip(indices[:3], batch, strict=True):
        np.testing.assert_array_equal(record["series"][:, 0], values[index].astype(np.float32))


def test_data_source_prepares_missing_dataset_as_array_record(tmp_path):
    sources = tfds.data_source("ucr/ItalyPowerDemand", data_dir=tmp_path)
    train_path, _ = data.locate_dataset("ItalyPowerDemand")
    labels, values = ucr_tsv.read_ucr_file(train_path)
    assert len(sources["train"]) == len(labels)
    np.testing.assert_array_equal(sources["train"][5]["series"][:, 0], values[5].astype(np.float32))
    assert list((tmp_path / "ucr" / "ItalyPowerDemand").glob("*/ucr-train.array_record-*"))


def test_archive_root_nan_kept_and_labels_sorted_numerically(tmp_path):
    root = tmp_path / "archive"
    (root / "Toy").mkdir(parents=True)
    train_rows = [[0.5, float("nan"), 2.0], [1.0, 2.0, 3.0], [-1.0, 0.0, 1.0], [4.0, 5.0, 6.0]]
    _write_tsv(root / "Toy" / "Toy_TRAIN.tsv", [10, 2, -1, 2], train_rows)
    _write_tsv(root / "Toy" / "Toy_TEST.tsv", [-1, 10], [[7.0, float("nan"), 8.0], [1.0, 1.0, 1.0]])
    data_dir = tmp_path / "tfds"

    builder = tfds_ucr.prepare("Toy", data_dir, root=str(root))
    # Numeric order (-1 < 2 < 10), not string order.
    assert builder.info.features["label"].names == ["-1", "2", "10"]
    sources = tfds.data_source("ucr/Toy", data_dir=data_dir)
    train = [sources["train"][i] for i in range(len(train_rows))]
    np.testing.assert_array_equal(
        np.stack([r["series"][:, 0] for r in train]), np.array(train_rows, np.float32)
    )
    assert [r["label"] for r in train] == [2, 1, 0, 1]
    # Class ids agree with the preprocessing pipeline.
    assert [r["label"] for r in train] == data.load_ucr("Toy", root=str(root)).train.y.tolist()
    test = sources["test"][0]
    assert test["label"] == 0
    np.testing.assert_array_equal(test["series"][:, 0], np.array([7.0, np.nan, 8.0], np.float32))


def test_test_label_missing_from_train_raises(tmp_path):
    root = tmp_path / "archive"
    (root / "Bad").mkdir(parents=True)
    _write_tsv(root / "Bad" / "Bad_TRAIN.tsv", [1, 2], [[0.0, 1.0], [1.0, 0.0]])
    _write_tsv(root / "Bad" / "Bad_TEST.tsv", [3], [[0.0, 1.0]])
    with pytest.raises(ValueError, match="do not occur in the train labels"):
        tfds_ucr.prepare("Bad", tmp_path / "tfds", root=str(root))


def test_env_root_adds_configs_at_import(tmp_path):
    root = tmp_path / "archive"
    (root / "Toy").mkdir(parents=True)
    _write_tsv(root / "Toy" / "Toy_TRAIN.tsv", [1, 2], [[0.0, 1.0], [1.0, 0.0]])
    _write_tsv(root / "Toy" / "Toy_TEST.tsv", [2], [[3.0, 4.0]])
    script = (
        "import sys, tensorflow_datasets as tfds, ssl_vqvae.tfds_ucr\n"
        "ds = tfds.data_source('ucr/Toy', data_dir=sys.argv[1])\n"
        "print(len(ds['train']), ds['test'][0]['series'].ravel().tolist(), ds['test'][0]['label'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "tfds")],
        env={**os.environ, tfds_ucr.ROOT_ENV: str(root)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip().splitlines()[-1] == "2 [3.0, 4.0] 1"


@pytest.mark.parametrize(("value", "name"), [(1.0, "1"), (-1.0, "-1"), (10.0, "10"), (0.5, "0.5")])
def test_label_name(value, name):
    assert tfds_ucr.label_name(value) == name
