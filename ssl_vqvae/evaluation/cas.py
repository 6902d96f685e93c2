"""Classification accuracy score (CAS): train on synthetic, test on real (SPEC §5.3).

A synthetic train set with the real train set's class proportions is sampled class-conditionally
from the prior (scaled up to about `min_total` series when the real set is smaller), a fresh FCN
is trained on it and validated on the real test split every epoch. Both the final test accuracy
and the reference statistic `val_acc_ema` are reported.

The synthetic set is stored beside the classifier (`synthetic.npz`, keyed by a digest of the
tokenizer, the prior, the class counts and the seed) so an interrupted CAS resumes on exactly the
same series, and a rerun skips the sampling.

Generated series have `2 * floor(L / 2)` samples while the real test series keep their length L;
the FCN pools globally over time, so for odd L it is simply fed both lengths.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
from typing import TYPE_CHECKING

import jax
import numpy as np

from ssl_vqvae import generate, processes
from ssl_vqvae.evaluation import classifier

if TYPE_CHECKING:
    from ssl_vqvae.api import Experiment

MIN_SYNTHETIC_TRAIN = 1000
# Folded into the seed so class-conditional draws are independent of the unconditional ones.
CAS_SAMPLING_STREAM = 1
SYNTHETIC_FILE = "synthetic.npz"


@dataclasses.dataclass(frozen=True)
class CASResult:
    """Outcome of one CAS run.

    Attributes:
      accuracy: final accuracy on the real test split, in [0, 1].
      val_acc_ema: the reference's per-validation-batch accuracy EMA, in [0, 1].
      x: float32 [N, 2*floor(L/2), C] the synthetic train set (scaled units).
      y: int32 [N] its class ids.
      summary: the classifier's `summary.json` (epochs, steps, ...).
    """

    accuracy: float
    val_acc_ema: float
    x: np.ndarray
    y: np.ndarray
    summary: dict


def synthetic_class_counts(
    labels: np.ndarray, num_classes: int, min_total: int = MIN_SYNTHETIC_TRAIN
) -> np.ndarray:
    """Series per class of the synthetic train set: int64 [num_classes].

    The real train counts, each multiplied by `min_total / N` and rounded (half to even, like
    Python's `round` in the reference) when the real set has N < `min_total` series.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels: expected a non-empty 1-D array, got shape {labels.shape}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels: expected class ids in [0, {num_classes})")
    if min_total < 1:
        raise ValueError(f"min_total: expected a positive integer, got {min_total}")
    counts = np.bincount(labels, minlength=num_classes).astype(np.int64)
    if labels.size < min_total:
        counts = np.round(counts * (min_total / labels.size)).astype(np.int64)
    return counts


def sample_synthetic_train_set(
    experiment: Experiment, counts: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Class-conditional samples, `counts[c]` of class c: (float32 [N, L', C], int32 [N]).

    All classes go through the experiment's one compiled sampler; the guidance scale is the
    stage-2 config's (1.0 in the thesis, i.e. plain conditional logits).
    """
    class_ids = np.repeat(np.arange(len(counts)), counts).astype(np.int32)
    series = experiment.generate(
        class_ids,
        jax.random.fold_in(jax.random.key(seed), CAS_SAMPLING_STREAM),
        experiment.stage2_settings.sampling.guidance_scale,
    )
    return series, class_ids


def _generator_key(experiment: Experiment, counts: np.ndarray, seed: int) -> str:
    """Digest of everything the synthetic set depends on: models, decoding settings, counts."""
    settings = (
        f"{counts.tolist()} {seed} {experiment.decoding()} "
        f"{experiment.stage2_settings.sampling.guidance_scale} "
        f"batches {generate.BATCH_RUNGS} x {experiment.mesh.size}"
    )
    digest = hashlib.sha256(settings.encode())
    for leaf in jax.tree.leaves(
        jax.device_get((experiment.tokenizer_variables, experiment.prior_variables))
    ):
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()


def load_or_sample_synthetic_train_set(
    experiment: Experiment, counts: np.ndarray, seed: int, path: pathlib.Path
) -> tuple[np.ndarray, np.ndarray]:
    """`sample_synthetic_train_set`, stored at `path` and reused while the models are the same."""
    key = _generator_key(experiment, counts, seed)
    if path.is_file():
        with np.load(path) as stored:
            if str(stored["key"]) == key:
                return stored["x"], stored["y"]
    x, y = sample_synthetic_train_set(experiment, counts, seed)
    _store(path, x=x, y=y, key=np.asarray(key))
    return x, y


@processes.main_only
def _store(path: pathlib.Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def classification_accuracy_score(
    experiment: Experiment,
    workdir: str | pathlib.Path,
    *,
    num_epochs: int = classifier.DEFAULT_EPOCHS,
    seed: int = 0,
    min_total: int = MIN_SYNTHETIC_TRAIN,
) -> CASResult:
    """Samples the synthetic train set, trains a fresh FCN on it in `workdir`, tests on real."""
    dataset = experiment.dataset
    counts = synthetic_class_counts(dataset.train.y, dataset.num_classes, min_total)
    workdir = pathlib.Path(workdir)
    x, y = load_or_sample_synthetic_train_set(experiment, counts, seed, workdir / SYNTHETIC_FILE)
    run = classifier.fit_classifier(
        x,
        y,
        dataset.test.x,
        dataset.test.y,
        dataset.num_classes,
        workdir,
        num_epochs=num_epochs,
        seed=seed,
        eval_every_epochs=1,
        description="cas",
    )
    return CASResult(run.test_accuracy, run.val_acc_ema, x, y, run.summary)
