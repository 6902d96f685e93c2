"""Supervised FCN training: the FID/IS feature extractor and the CAS classifier (SPEC §5.1, §5.3).

Training reuses the project's loop (`training.fit`: data-parallel jitted step over the mesh,
Orbax checkpoints, resume, `metrics.jsonl`). The recipe is the reference one: AdamW (lr 1e-3,
weight decay 1e-5) with cosine annealing over `epochs * (steps_per_epoch + 1)` updates, batch
256, the test split as validation set.

Every validation pass also advances `val_acc_ema`, the reference's CAS statistic: an EMA (rate
0.01, initial value 0) of the accuracy of each validation batch of `batch_size` test series, in
order (the last, smaller batch counts as one batch). With `eval_every_epochs=1` it matches the
reference, which validates once per epoch; Lightning's two sanity-check batches before training,
which also touch the reference EMA, are not replayed (their weight after 1000 epochs is ~0).
The EMA is checkpointed with the loop (`Evaluator.loop_state`), so a resumed run continues it.
Folders are reused through `fcn_cache`: a finished run is restored instead of trained again.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.special

from ssl_vqvae import artifacts, input_pipeline, pipeline, sharding, train_state, training
from ssl_vqvae.artifacts import DataInfo, ModelSpec
from ssl_vqvae.data import Split, UCRDataset
from ssl_vqvae.evaluation import fcn_cache
from ssl_vqvae.evaluation.fcn import FCN
from ssl_vqvae.evaluation.fcn_outputs import fcn_logits_and_features

LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-5
BATCH_SIZE = 256
DEFAULT_EPOCHS = 1000
EMA_RATE = 0.01
LOG_EVERY_STEPS = 50
CHECKPOINT_EVERY_STEPS = 1000  # and every LoopConfig.checkpoint_every_minutes (10)
# Validation of the cached FID/IS classifier only tracks progress, so it need not run every epoch.
FCN_EVAL_EVERY_EPOCHS = 10
EMA_METRIC = "eval/val_acc_ema"


@dataclasses.dataclass(frozen=True)
class ClassifierRun:
    """A trained FCN and its final validation statistics.

    Attributes:
      model: the FCN module.
      variables: `{"params", "batch_stats"}` for `model.apply`, replicated over the mesh.
      test_accuracy: accuracy on the whole test split after the last step, in [0, 1].
      val_acc_ema: the reference's EMA of per-batch test accuracy (see module docstring).
      summary: everything written to `summary.json` (settings, steps, the numbers above).
    """

    model: FCN
    variables: dict[str, Any]
    test_accuracy: float
    val_acc_ema: float
    summary: dict[str, Any]


def ema_update(ema: float, accuracies: Sequence[float], rate: float = EMA_RATE) -> float:
    """Folds validation-batch accuracies into the EMA, in order: `e <- rate a + (1 - rate) e`."""
    for accuracy in accuracies:
        ema = rate * float(accuracy) + (1.0 - rate) * ema
    return ema


def batch_accuracies(correct: np.ndarray, batch_size: int) -> np.ndarray:
    """Accuracy of each consecutive validation batch: bool [N] -> float64 [ceil(N / batch_size)]."""
    return np.array(
        [
            np.mean(correct[start : start + batch_size])
            for start in range(0, len(correct), batch_size)
        ]
    )


def steps_per_epoch(num_examples: int, batch_size: int, num_devices: int) -> int:
    """Optimizer steps per epoch with the pipeline's device-aligned global batch."""
    return math.ceil(
        num_examples / pipeline.global_batch_size(batch_size, num_examples, num_devices)
    )


def make_loss_fn(model: FCN) -> train_state.LossFn:
    """Cross-entropy `loss_fn(params, variables, batch, rng)`; BatchNorm in train mode.

    The FCN has no dropout, so the step's rng is unused. Metrics: the batch accuracy.
    """

    def loss_fn(params, variables, batch, rng):
        del rng
        (logits, _), new_variables = model.apply(
            {"params": params, **variables}, batch["x"], train=True, mutable=["batch_stats"]
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
        accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == batch["y"])
        return loss, ({"accuracy": accuracy}, new_variables)

    return loss_fn


def compile_step(
    model: FCN, optimizer: optax.GradientTransformation, mesh: jax.sharding.Mesh
) -> train_state.CompiledStep:
    """The FCN update compiled over `mesh` (training, and the evaluation plan's timing)."""
    step = train_state.make_train_step(make_loss_fn(model), optimizer)
    return train_state.compile_step(step, mesh)


class Validator(training.Evaluator):
    """Test-split accuracy / loss and the per-batch accuracy EMA, as `fit`'s evaluator."""

    def __init__(self, model, x_test, y_test, batch_size, mesh):
        self.model, self.x_test, self.y_test = model, x_test, y_test
        self.batch_size, self.mesh = batch_size, mesh
        self.ema = 0.0

    def measure(self, variables: dict[str, Any]) -> tuple[dict[str, float], np.ndarray]:
        """({"accuracy", "loss"} on the whole test split, per-batch accuracies)."""
        logits, _ = fcn_logits_and_features(self.model, variables, self.x_test, self.mesh)
        correct = np.argmax(logits, axis=-1) == self.y_test
        log_probs = scipy.special.log_softmax(logits.astype(np.float64), axis=-1)
        loss = -np.mean(log_probs[np.arange(len(self.y_test)), self.y_test])
        results = {"accuracy": float(np.mean(correct)), "loss": float(loss)}
        return results, batch_accuracies(correct, self.batch_size)

    def __call__(self, state: train_state.TrainState, step: int) -> dict[str, float]:
        results, accuracies = self.measure(state.model_variables())
        self.ema = ema_update(self.ema, accuracies)
        return {**results, "val_acc_ema": self.ema}

    def loop_state(self) -> dict[str, Any]:
        return {"val_acc_ema": self.ema}

    def restore_loop_state(self, record: dict[str, Any]) -> None:
        self.ema = float(record["val_acc_ema"])


def _check_split(name: str, x: np.ndarray, y: np.ndarray, num_classes: int) -> None:
    if x.ndim != 3:
        raise ValueError(f"x_{name}: expected [num_series, length, channels], got {x.shape}")
    if len(x) == 0:
        raise ValueError(f"x_{name}: expected at least one series")
    if y.shape != (len(x),):
        raise ValueError(f"y_{name}: expected shape ({len(x)},) to match x_{name}, got {y.shape}")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(
            f"y_{name}: expected class ids in [0, {num_classes}), got {y.min()}..{y.max()}"
        )
    if not np.all(np.isfinite(x)):
        raise ValueError(f"x_{name}: expected finite values, found NaN or inf")


def fit_classifier(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    workdir: str | pathlib.Path,
    *,
    num_epochs: int = DEFAULT_EPOCHS,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
    eval_every_epochs: int = 1,
    description: str = "fcn",
) -> ClassifierRun:
    """Trains a fresh FCN on (x_train, y_train), validating on the test split (SPEC §5.1).

    The settings (sizes, epochs, batch, seed, a digest of the data) are claimed in `workdir`
    (`fcn_cache.claim`): a folder holding other settings is refused. With the same settings an
    interrupted run resumes from its checkpoints, and a finished one is restored, not trained.

    Args:
      x_train, x_test: float32 [N, L, C] scaled series (the lengths may differ).
      y_train, y_test: int [N] class ids in [0, num_classes).
      workdir: this classifier's folder (checkpoints, metrics.jsonl, summary.json).
      num_epochs: passes over the train set; steps = epochs * ceil(N / global batch).
      eval_every_epochs: validation period; 1 makes `val_acc_ema` the reference statistic.
    """
    x_train, x_test = np.asarray(x_train, np.float32), np.asarray(x_test, np.float32)
    y_train, y_test = np.asarray(y_train, np.int32), np.asarray(y_test, np.int32)
    if num_classes < 2:
        raise ValueError(f"num_classes: expected at least 2, got {num_classes}")
    _check_split("train", x_train, y_train, num_classes)
    _check_split("test", x_test, y_test, num_classes)
    if num_epochs < 1 or eval_every_epochs < 1:
        raise ValueError(
            f"num_epochs={num_epochs}, eval_every_epochs={eval_every_epochs}: expected >= 1"
        )
    workdir = pathlib.Path(workdir).expanduser().absolute()
    mesh = sharding.make_mesh()
    model = FCN(num_classes=num_classes)
    global_batch = pipeline.global_batch_size(batch_size, len(x_train), mesh.size)
    batches = input_pipeline.TrainBatches(Split(x_train, y_train), global_batch, seed, mesh)
    per_epoch = batches.steps_per_epoch
    num_steps = num_epochs * per_epoch
    settings = {
        "num_train": len(x_train),
        "num_test": len(x_test),
        "train_length": int(x_train.shape[1]),
        "num_classes": num_classes,
        "num_epochs": num_epochs,
        "batch_size": batch_size,
        "seed": seed,
        "eval_every_epochs": eval_every_epochs,
        "data_digest": fcn_cache.digest(x_train, y_train, x_test, y_test),
        # The training recipe: a cached FCN of another recipe is not reused silently.
        "param_init": model.param_init,
        "lr_schedule": "reference_cosine",
    }
    fcn_cache.claim(workdir, settings)
    summary = fcn_cache.read_summary(workdir)
    if summary is not None:
        loaded = artifacts.load_model(workdir, mesh)
        print(f"[{description}] reusing the trained classifier in {workdir}")
        return ClassifierRun(
            loaded.module,
            loaded.variables,
            summary["test_accuracy"],
            summary["val_acc_ema"],
            summary,
        )

    learning_rate = train_state.reference_cosine_schedule(LEARNING_RATE, num_steps, per_epoch)
    optimizer = train_state.make_optimizer(learning_rate, WEIGHT_DECAY)
    example = jax.ShapeDtypeStruct((1, *x_train.shape[1:]), jnp.float32)
    validator = Validator(model, x_test, y_test, batch_size, mesh)
    data = DataInfo(description, x_train.shape[1], x_train.shape[2], num_classes, 0.0, 1.0)
    state = training.fit(
        workdir=workdir,
        factory=train_state.StateFactory(
            train_state.module_init(model, optimizer, example, train=False),
            jax.random.key(seed),
        ),
        spec=ModelSpec.of(model, data),
        train_step=compile_step(model, optimizer, mesh),
        batches=batches,
        mesh=mesh,
        rng=jax.random.key(seed),
        loop=training.LoopConfig(
            num_steps=num_steps,
            log_every=LOG_EVERY_STEPS,
            eval_every=eval_every_epochs * per_epoch,
            checkpoint_every=CHECKPOINT_EVERY_STEPS,
            description=description,
            learning_rate=learning_rate,
        ),
        evaluate=validator,
    )
    final, _ = validator.measure(state.model_variables())
    summary = {
        **settings,
        "global_batch_size": global_batch,
        "steps_per_epoch": per_epoch,
        "num_steps": num_steps,
        "test_accuracy": final["accuracy"],
        "test_loss": final["loss"],
        "val_acc_ema": validator.ema,
    }
    fcn_cache.write_summary(workdir, summary)
    return ClassifierRun(model, state.model_variables(), final["accuracy"], validator.ema, summary)


def load_or_train_fcn(
    dataset: UCRDataset,
    cache_dir: str | pathlib.Path | None = None,
    *,
    num_epochs: int = DEFAULT_EPOCHS,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
) -> ClassifierRun:
    """The dataset's FID/IS classifier, trained once on its train split and cached.

    Trained on the original series length L and validated on the test split; the cache key is
    the dataset name and `num_epochs` (`fcn_cache.fcn_cache_dir`), so every experiment on a
    dataset is scored by the same FCN.
    """
    return fit_classifier(
        dataset.train.x,
        dataset.train.y,
        dataset.test.x,
        dataset.test.y,
        dataset.num_classes,
        fcn_cache.fcn_cache_dir(cache_dir, dataset.name, num_epochs),
        num_epochs=num_epochs,
        batch_size=batch_size,
        seed=seed,
        eval_every_epochs=min(FCN_EVAL_EVERY_EPOCHS, num_epochs),
        description=f"fcn {dataset.name}",
    )
