"""The train state, its optimizer and learning-rate rule, and the one generic train step.

Stage 1, stage 2 and the FCN classifier differ only in their model and `loss_fn`; this module
turns a loss into a jitted, data-parallel, buffer-donating update, and allocates the state
abstractly first (`jax.eval_shape`) so that a resumed run never initialises what it restores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from ssl_vqvae import sharding

Metrics = dict[str, jax.Array]
StepFn = Callable[..., tuple[Any, Metrics]]
# loss_fn(params, variables, batch, rng, *frozen) -> (loss, (metrics, new_variables))
LossFn = Callable[..., tuple[jax.Array, tuple[Metrics, dict[str, Any]]]]


@flax.struct.dataclass
class TrainState:
    """Everything a step changes.

    Attributes:
      step: int32 [] number of optimizer steps taken.
      params: trainable parameters.
      opt_state: optimizer state.
      variables: the model's mutable, non-trainable collections (e.g. `batch_stats`, `vq`).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    variables: dict[str, Any]

    def model_variables(self) -> dict[str, Any]:
        """`{"params", ...collections}`: what `module.apply` takes and the `model` item stores."""
        return {"params": self.params, **self.variables}

    def train_only(self) -> dict[str, Any]:
        """What only training needs: the checkpoint's `train` item."""
        return {"step": self.step, "opt_state": self.opt_state}

    @classmethod
    def from_items(cls, model: dict[str, Any], train: dict[str, Any]) -> TrainState:
        """Inverse of (`model_variables`, `train_only`)."""
        variables = dict(model)
        params = variables.pop("params")
        return cls(train["step"], params, train["opt_state"], variables)


def create_train_state(
    variables: dict[str, Any], optimizer: optax.GradientTransformation
) -> TrainState:
    """A step-0 state from a module's initial variables (`module.init` output)."""
    variables = dict(variables)
    params = variables.pop("params")
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), variables)


def make_optimizer(
    learning_rate: optax.Schedule, weight_decay: float
) -> optax.GradientTransformation:
    """AdamW (default betas and eps, decoupled weight decay) as in every reference trainer.

    Always driven by a schedule (use `optax.constant_schedule` for a fixed rate), so the
    optimizer state has one structure whatever the rate: checkpoints restore into it.
    """
    if not callable(learning_rate):
        raise TypeError(f"learning_rate must be a schedule, got {learning_rate!r}")
    return optax.adamw(learning_rate, weight_decay=weight_decay)


def reference_cosine_schedule(
    peak: float, num_updates: int, steps_per_epoch: int
) -> Callable[[jax.Array | int], jax.Array]:
    """The reference's cosine-annealed learning rate of each optimiser update (SPEC §2.7).

    The reference steps `CosineAnnealingLR(T_max = epochs * (S + 1), eta_min = 0)` once per batch
    inside `training_step` (before that batch's optimiser step) and once more at every epoch end,
    S batches per epoch. Update g (0-based) therefore runs at scheduler step
    `t = g + 1 + floor(g / S)`, and the last update of the run sits one step before `T_max`, at
    a rate of ~0. A step budget that is not a whole number of epochs ends with a partial epoch;
    `T_max = n + ceil(n / S)` keeps the same rule for it.

    Args:
      peak: the initial learning rate.
      num_updates: optimiser updates in the whole run (n).
      steps_per_epoch: S, batches per epoch.

    Returns:
      `schedule(g) -> lr`, usable by optax (g is the update count) and on the host.
    """
    if num_updates < 1 or steps_per_epoch < 1:
        raise ValueError(
            f"num_updates={num_updates} and steps_per_epoch={steps_per_epoch} must be >= 1"
        )
    t_max = num_updates + -(-num_updates // steps_per_epoch)

    def schedule(update: jax.Array | int) -> jax.Array:
        update = jnp.asarray(update)
        t = update + 1 + update // steps_per_epoch
        return peak * 0.5 * (1.0 + jnp.cos(jnp.pi * t / t_max))

    return schedule


def count_params(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation) -> StepFn:
    """The pure update `(state, batch, rng, *frozen) -> (state, metrics)` of a loss.

    The step folds its number into `rng` (so every step draws fresh randomness from one key),
    differentiates `loss_fn` with respect to the params, applies the optimizer, and adds `loss`
    and the global `grad_norm` to the loss's metrics.

    Args:
      loss_fn: `(params, variables, batch, rng, *frozen) -> (loss, (metrics, new_variables))`;
        `variables` are the state's mutable collections, `frozen` the step's trailing replicated
        arguments (e.g. the stage-1 tokenizer in stage 2).
    """

    def train_step(
        state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, *frozen: Any
    ) -> tuple[TrainState, Metrics]:
        rng = jax.random.fold_in(rng, state.step)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (metrics, new_variables)), grads = grad_fn(
            state.params, state.variables, batch, rng, *frozen
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
            variables=dict(new_variables),
        )
        return new_state, {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads)}

    return train_step


@dataclasses.dataclass(frozen=True)
class CompiledStep:
    """A train step jitted over a mesh, called as `step(state, batch, rng)`.

    Attributes:
      jitted: the `jax.jit` function `(state, batch, rng, *frozen) -> (state, metrics)` (for
        lowering, cost analysis and profiling).
      frozen: the replicated trailing arguments passed on every call.
    """

    jitted: Any
    frozen: tuple[Any, ...]

    def __call__(self, state: Any, batch: dict[str, jax.Array], rng: jax.Array) -> Any:
        return self.jitted(state, batch, rng, *self.frozen)


def compile_step(step_fn: Callable, mesh: Mesh, *frozen: Any) -> CompiledStep:
    """Jits a train step data-parallel over `mesh`, donating the incoming state.

    Args:
      step_fn: `(state, batch, rng, *frozen) -> (state, metrics)`.
      frozen: replicated pytrees passed as trailing arguments on every call (e.g. the frozen
        stage-1 tokenizer in stage 2); passing them as arguments, not closing over them, keeps
        them out of the compiled program as constants.

    Returns:
      a `CompiledStep`: `(state, batch, rng) -> (state, metrics)`.
    """
    replicated = sharding.replicated(mesh)
    jitted = jax.jit(
        step_fn,
        in_shardings=(replicated, sharding.batch_sharded(mesh), replicated)
        + (replicated,) * len(frozen),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )
    return CompiledStep(jitted, tuple(sharding.replicate(frozen, mesh)))


@dataclasses.dataclass(frozen=True)
class StateFactory:
    """How to make a fresh train state, run only when there is nothing to restore.

    `init(rng, *inputs) -> TrainState` is traced abstractly first (`abstract`, free: nothing is
    computed or allocated) to know what to restore into; `initialise` compiles and runs it once,
    placing the result replicated on the mesh.
    """

    init: Callable[..., TrainState]
    rng: jax.Array
    inputs: tuple[Any, ...] = ()

    def abstract(self) -> TrainState:
        return jax.eval_shape(self.init, initialisation_key(self.rng), *self.inputs)

    def initialise(self, mesh: Mesh) -> TrainState:
        init = jax.jit(self.init, out_shardings=sharding.replicated(mesh))
        return init(initialisation_key(self.rng), *self.inputs)


def initialisation_key(rng: jax.Array) -> jax.Array:
    """The threefry key `rng` as a key of JAX's "rbg" generator, for initialising parameters.

    Why: XLA expands every threefry draw inline (~100 ops each), and a model's few hundred
    parameter draws made init the slowest program to compile (19 of 20 s for the `:tiny`
    two-branch tokenizer). An "rbg" draw is one RngBitGenerator op (keys are still derived by
    threefry), which halves that compile. The values are a deterministic function of the seed,
    but not threefry's.
    """
    data = jax.random.key_data(rng)
    return jax.random.wrap_key_data(jnp.concatenate([data, data]), impl="rbg")


def module_init(
    module: Any,
    optimizer: optax.GradientTransformation,
    *example: jax.ShapeDtypeStruct,
    **kwargs: Any,
) -> Callable[[jax.Array], TrainState]:
    """`init(rng) -> TrainState` of a module called on zeros shaped like `example`.

    Keyword arguments go to `module.init` (e.g. `train=False`).
    """

    def init(rng: jax.Array) -> TrainState:
        inputs = [jnp.zeros(spec.shape, spec.dtype) for spec in example]
        return create_train_state(module.init(rng, *inputs, **kwargs), optimizer)

    return init
