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

A finished run leaves `summary.json` beside its checkpoints; a later call with the same
settings restores that run instead of training again, which is how FCNs are cached per dataset.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.special

from ssl_vqvae import metric_log, pipeline, sharding, stage1, training
from ssl_vqvae.data import Split, UCRDataset
from ssl_vqvae.evaluation.fcn import FCN

LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-5
BATCH_SIZE = 256
DEFAULT_EPOCHS = 1000
EMA_RATE = 0.01
LOG_EVERY_STEPS = 50
CHECKPOINT_EVERY_STEPS = 1000  # and every LoopConfig.checkpoint_every_minutes (10)
# Validation of the cached FID/IS classifier only tracks progress, so it need not run every epoch.
FCN_EVAL_EVERY_EPOCHS = 10
CACHE_ENV = "SSL_VQVAE_CACHE"
DEFAULT_CACHE_DIR = "~/.cache/ssl_vqvae/fcn"
SUMMARY_FILE = "summary.json"
SETTINGS_FILE = "settings.json"
DIGEST_CHARS = 16
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


def default_cache_dir() -> pathlib.Path:
    """Folder of cached FCNs: `$SSL_VQVAE_CACHE` if set, else `~/.cache/ssl_vqvae/fcn`."""
    return pathlib.Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()


@functools.partial(jax.jit, static_argnums=0)
def _logits_and_features(model: FCN, variables: dict[str, Any], x: jax.Array) -> jax.Array:
    """Eval-mode forward pass, outputs side by side: [B, L, C] -> [B, num_classes + features]."""
    logits, features = model.apply(variables, x, train=False)
    return jnp.concatenate([logits, features], axis=-1)


def fcn_logits_and_features(
    model: FCN, variables: dict[str, Any], x: np.ndarray, mesh: jax.sharding.Mesh
) -> tuple[np.ndarray, np.ndarray]:
    """Logits [N, num_classes] and pooled features [N, 128] of series x [N, L', C], eval mode.

    The FCN pools globally over time, so `L'` may differ from the training length (e.g. the
    `2 * floor(L / 2)` samples left by the STFT round trip for odd `L`).
    """
    x = np.asarray(x, np.float32)
    if x.ndim != 3:
        raise ValueError(f"x: expected [num_series, length, channels], got shape {x.shape}")
    split = Split(x, np.zeros(len(x), np.int32))
    outputs = stage1.apply_in_batches(
        functools.partial(_logits_and_features, model),
        variables,
        split,
        pipeline.round_to_devices(BATCH_SIZE, mesh.size),
        mesh,
    )
    return outputs[:, : model.num_classes], outputs[:, model.num_classes :]


def fcn_outputs(
    model: FCN, variables: dict[str, Any], x: np.ndarray, mesh: jax.sharding.Mesh
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities p(y|x) float32 [N, K] (for IS) and features float32 [N, 128] (FID)."""
    logits, features = fcn_logits_and_features(model, variables, x, mesh)
    probs = scipy.special.softmax(logits.astype(np.float64), axis=-1)
    return probs.astype(np.float32), features


def make_train_step(model: FCN, optimizer: optax.GradientTransformation) -> training.StepFn:
    """Cross-entropy update `(state, batch, rng) -> (state, metrics)`; BatchNorm in train mode."""

    def train_step(state, batch, rng):
        del rng  # the FCN has no dropout: a step draws no randomness

        def loss_fn(params):
            (logits, _), new_variables = model.apply(
                {"params": params, **state.variables},
                batch["x"],
                train=True,
                mutable=["batch_stats"],
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
            return loss, (logits, new_variables)

        (loss, (logits, new_variables)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
            variables=dict(new_variables),
        )
        accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == batch["y"])
        return new_state, {"loss": loss, "accuracy": accuracy}

    return train_step


def init_state(
    model: FCN, optimizer: optax.GradientTransformation, example: jax.Array, rng: jax.Array
) -> training.TrainState:
    """Fresh FCN parameters and BatchNorm statistics (example: [B, L, C])."""

    def init(rng):
        variables = model.init(rng, example, train=False)
        params = variables.pop("params")
        return training.create_train_state(params, variables, optimizer)

    return jax.jit(init)(rng)


def _variables(state: training.TrainState) -> dict[str, Any]:
    return {"params": state.params, **state.variables}


class _Validator:
    """Test-split accuracy / loss and the per-batch accuracy EMA, as `fit`'s evaluate callback.

    The EMA lives in this object; when `fit` resumes an interrupted run, the value logged at the
    previous validation (`metrics.jsonl`) is picked up, so the statistic spans the whole run.
    """

    def __init__(self, model, x_test, y_test, batch_size, mesh, workdir):
        self.model, self.x_test, self.y_test = model, x_test, y_test
        self.batch_size, self.mesh, self.workdir = batch_size, mesh, workdir
        self.ema: float | None = None
        self.last_step = 0
        self.last: dict[str, float] = {}

    def measure(self, variables: dict[str, Any]) -> tuple[dict[str, float], np.ndarray]:
        """({"accuracy", "loss"} on the whole test split, per-batch accuracies)."""
        logits, _ = fcn_logits_and_features(self.model, variables, self.x_test, self.mesh)
        correct = np.argmax(logits, axis=-1) == self.y_test
        log_probs = scipy.special.log_softmax(logits.astype(np.float64), axis=-1)
        loss = -np.mean(log_probs[np.arange(len(self.y_test)), self.y_test])
        results = {"accuracy": float(np.mean(correct)), "loss": float(loss)}
        return results, batch_accuracies(correct, self.batch_size)

    def logged_ema(self, upto: int) -> float:
        """The EMA logged by this run's latest validation at a step <= `upto` (0 if none).

        A resumed run asks for `upto` = its first validation step - 1; an interrupted run's
        records after its last checkpoint have steps from that validation on, so they never
        count.
        """
        path = self.workdir / "metrics.jsonl"
        records = metric_log.read_metrics(self.workdir) if path.is_file() else []
        logged = [(r["step"], r[EMA_METRIC]) for r in records if EMA_METRIC in r]
        earlier = [(step, value) for step, value in logged if step <= upto]
        # A stable sort keeps file order among repeated steps: the last record is the newest.
        return float(sorted(earlier, key=lambda item: item[0])[-1][1]) if earlier else 0.0

    def __call__(self, state: training.TrainState, step: int) -> dict[str, float]:
        results, accuracies = self.measure(_variables(state))
        if self.ema is None:
            self.ema = self.logged_ema(step - 1)
        self.ema = ema_update(self.ema, accuracies)
        self.last_step, self.last = step, {**results, "val_acc_ema": self.ema}
        return self.last

    def final(self, state: training.TrainState, num_steps: int) -> dict[str, float]:
        """Statistics after the last step, also when `fit` had nothing left to train."""
        if self.last_step == num_steps:
            return self.last
        results, _ = self.measure(_variables(state))
        return {**results, "val_acc_ema": self.logged_ema(num_steps)}


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

    The settings (sizes, epochs, batch, seed, a digest of the data) go to
    `workdir/settings.json`; a folder holding other settings is refused. With the same settings
    an interrupted run resumes from `workdir/checkpoints`, and a finished one (`summary.json`)
    is restored instead of trained.

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
    batches = pipeline.BatchIterator(Split(x_train, y_train), global_batch, seed)
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
        "data_digest": _digest(x_train, y_train, x_test, y_test),
        # The training recipe: a cached FCN of another recipe is not reused silently.
        "param_init": model.param_init,
        "lr_schedule": "reference_cosine",
    }
    learning_rate = training.reference_cosine_schedule(LEARNING_RATE, num_steps, per_epoch)
    optimizer = training.make_optimizer(learning_rate, WEIGHT_DECAY)
    rng = jax.random.key(seed)
    example = jnp.asarray(x_train[:global_batch])
    _claim(workdir, settings)
    summary_path = workdir / SUMMARY_FILE
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        abstract = jax.eval_shape(lambda key: init_state(model, optimizer, example, key), rng)
        state = training.restore_state(workdir, abstract, mesh)
        print(f"[{description}] reusing the trained classifier in {workdir}")
        return ClassifierRun(
            model, _variables(state), summary["test_accuracy"], summary["val_acc_ema"], summary
        )

    validator = _Validator(model, x_test, y_test, batch_size, mesh, workdir)
    state = training.fit(
        workdir=workdir,
        state=init_state(model, optimizer, example, rng),
        train_step=training.compile_step(make_train_step(model, optimizer), mesh),
        batches=batches,
        mesh=mesh,
        rng=rng,
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
    final = validator.final(state, num_steps)
    summary = {
        **settings,
        "global_batch_size": global_batch,
        "steps_per_epoch": per_epoch,
        "num_steps": num_steps,
        "test_accuracy": final["accuracy"],
        "test_loss": final["loss"],
        "val_acc_ema": final["val_acc_ema"],
    }
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return ClassifierRun(model, _variables(state), final["accuracy"], final["val_acc_ema"], summary)


def _digest(*arrays: np.ndarray) -> str:
    """Short fingerprint of the data, so a folder is never reused for other series."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:DIGEST_CHARS]


def _claim(workdir: pathlib.Path, settings: dict[str, Any]) -> None:
    """Records the settings of the run in `workdir`, or checks them against the recorded ones."""
    path = workdir / SETTINGS_FILE
    if not path.is_file():
        workdir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=2) + "\n")
        return
    recorded = json.loads(path.read_text())
    mismatch = {
        key: (recorded.get(key), value)
        for key, value in settings.items()
        if recorded.get(key) != value
    }
    if mismatch:
        raise ValueError(
            f"{workdir} holds a classifier of other settings, {{name: (recorded, requested)}} = "
            f"{mismatch}; delete that folder or use another one"
        )


def fcn_cache_dir(
    cache_dir: str | pathlib.Path | None, dataset_name: str, num_epochs: int
) -> pathlib.Path:
    """`<cache_dir>/<Dataset>/epochs<E>`, the folder of one cached FCN."""
    root = default_cache_dir() if cache_dir is None else pathlib.Path(cache_dir).expanduser()
    return root / dataset_name / f"epochs{num_epochs}"


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
    the dataset name and `num_epochs` (`fcn_cache_dir`), so every experiment on a dataset is
    scored by the same FCN.
    """
    return fit_classifier(
        dataset.train.x,
        dataset.train.y,
        dataset.test.x,
        dataset.test.y,
        dataset.num_classes,
        fcn_cache_dir(cache_dir, dataset.name, num_epochs),
        num_epochs=num_epochs,
        batch_size=batch_size,
        seed=seed,
        eval_every_epochs=min(FCN_EVAL_EVERY_EPOCHS, num_epochs),
        description=f"fcn {dataset.name}",
    )
