"""The learning-rate schedule of every trainer against the reference's stepping (SPEC §2.7)."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_vqvae import train_state

PEAK = 1e-3
STEPS_PER_EPOCH = (1, 2, 4, 29)


def _reference_rates(epochs: int, steps_per_epoch: int) -> list[float]:
    """The rate each update uses when CosineAnnealingLR is stepped as the reference steps it.

    One scheduler step inside every `training_step` (before that batch's optimiser step) and one
    more at each epoch end, with T_max = epochs * (S + 1); the closed form of torch's cosine
    annealing (eta_min = 0) is lr0 * (1 + cos(pi * t / T_max)) / 2.
    """
    t_max = epochs * (steps_per_epoch + 1)
    t, rates = 0, []
    for _ in range(epochs):
        for _ in range(steps_per_epoch):
            t += 1  # sch.step() in training_step
            rates.append(PEAK * 0.5 * (1 + math.cos(math.pi * t / t_max)))
        t += 1  # the framework's per-epoch scheduler step
    return rates


@pytest.mark.parametrize("steps_per_epoch", STEPS_PER_EPOCH)
@pytest.mark.parametrize("epochs", [1, 3, 7])
def test_schedule_matches_reference_stepping(epochs, steps_per_epoch):
    expected = _reference_rates(epochs, steps_per_epoch)
    schedule = train_state.reference_cosine_schedule(
        PEAK, epochs * steps_per_epoch, steps_per_epoch
    )
    got = np.asarray(jax.vmap(schedule)(jnp.arange(len(expected))))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-10)


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")
@pytest.mark.parametrize("steps_per_epoch", STEPS_PER_EPOCH)
def test_schedule_matches_torch_cosine_annealing(steps_per_epoch):
    """The same, driven through torch's own CosineAnnealingLR (recursive form) and optimiser."""
    torch = pytest.importorskip(
        "torch", reason="parity extra not installed: pip install -e '.[parity]'"
    )
    epochs = 4
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=PEAK)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=epochs * (steps_per_epoch + 1)
    )
    used = []
    for _ in range(epochs):
        for _ in range(steps_per_epoch):
            scheduler.step()  # the reference's training_step steps before the optimiser does
            used.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
        scheduler.step()
    schedule = train_state.reference_cosine_schedule(
        PEAK, epochs * steps_per_epoch, steps_per_epoch
    )
    got = [float(schedule(g)) for g in range(len(used))]
    np.testing.assert_allclose(got, used, rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize("steps_per_epoch", STEPS_PER_EPOCH)
def test_last_update_rate_is_near_zero(steps_per_epoch):
    """The thesis budget (1000 epochs) ends at ~0, where the old rule ended at up to lr0 / 2."""
    num_updates = 1000 * steps_per_epoch
    schedule = train_state.reference_cosine_schedule(PEAK, num_updates, steps_per_epoch)
    assert float(schedule(num_updates - 1)) < 1e-5 * PEAK
    assert float(schedule(0)) == pytest.approx(PEAK, rel=1e-4)
    rates = np.asarray(jax.vmap(schedule)(jnp.arange(num_updates)))
    assert np.all(np.diff(rates) <= 0)  # float32 ties near the peak


def test_partial_last_epoch_still_ends_near_zero():
    """A step budget that is not whole epochs (num_steps override) keeps the same rule."""
    schedule = train_state.reference_cosine_schedule(PEAK, 301, steps_per_epoch=4)
    assert float(schedule(300)) < 1e-3 * PEAK
    t_max = 301 + 76  # n + ceil(n / S)
    assert float(schedule(0)) == pytest.approx(PEAK * 0.5 * (1 + math.cos(math.pi / t_max)))


def test_optimizer_applies_the_schedule_per_update():
    """AdamW's update under a constant gradient has magnitude lr(g) exactly (bias-corrected)."""
    steps_per_epoch = 2
    schedule = train_state.reference_cosine_schedule(PEAK, 6, steps_per_epoch)
    optimizer = train_state.make_optimizer(schedule, weight_decay=0.0)
    params = jnp.zeros(3)
    state = optimizer.init(params)
    grads = jnp.ones(3)
    for update in range(6):
        updates, state = optimizer.update(grads, state, params)
        np.testing.assert_allclose(-np.asarray(updates), float(schedule(update)), rtol=1e-4)


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_trainers_log_the_learning_rate(tiny_experiment, stage):
    """Each stage writes train/learning_rate: the rate of the last update of each log window."""
    records = [json.loads(line) for line in (tiny_experiment / stage / "metrics.jsonl").open()]
    logged = {r["step"]: r["train/learning_rate"] for r in records if "train/learning_rate" in r}
    assert sorted(logged) == [4, 8]  # :tiny trains 8 steps and logs every 4
    config = json.loads((tiny_experiment / stage / "config.json").read_text())
    peak = config["optim"]["learning_rate"]
    # GunPoint at the tiny batch of 16: 50 train series -> ceil(50 / 16) = 4 batches per epoch.
    schedule = train_state.reference_cosine_schedule(peak, 8, steps_per_epoch=4)
    for step, rate in logged.items():
        assert rate == pytest.approx(float(schedule(step - 1)), rel=1e-6)
    assert logged[8] < 0.05 * peak
