"""evaluate.py's plan: budgets, step counts and the estimated duration printed before it starts."""

import math

import pytest

from ssl_vqvae import data, sharding
from ssl_vqvae.errors import UserError
from ssl_vqvae.evaluate import evaluate_experiment
from ssl_vqvae.evaluation import classifier, plan


def test_budgets_keep_the_thesis_protocol_as_default():
    assert (
        plan.BUDGETS["thesis"]
        == plan.Budget(1000, 1000)
        == plan.Budget(classifier.DEFAULT_EPOCHS, classifier.DEFAULT_EPOCHS)
    )
    quick = plan.BUDGETS["quick"]
    assert quick.fcn_epochs < 1000 and quick.cas_epochs < 1000


def test_unknown_budget_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(UserError, match="budget='fast'; expected one of") as error:
        evaluate_experiment(tmp_path / "nothing_here", budget="fast")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "nothing_here").exists()


def test_training_arithmetic_and_description():
    run = plan.Training("CAS FCN", epochs=1000, steps_per_epoch=4, seconds_per_step=1.6)
    assert run.steps == 4000 and run.seconds == pytest.approx(6400.0)
    assert "4000 steps x 1600 ms ~ 107 min" in run.describe()
    cached = plan.Training("FID/IS FCN", 1000, 1, 0.05, cached=True)
    assert cached.seconds == 0.0 and "cached" in cached.describe()
    text = plan.describe([run, cached], "thesis")
    assert text.splitlines()[0].endswith("estimated 107 min of training:")
    assert len(text.splitlines()) == 3


def test_fcn_trainings_time_real_steps_at_each_shape():
    dataset = data.load_ucr("ItalyPowerDemand")  # 67 train series of length 24
    mesh = sharding.make_mesh()
    budget = plan.Budget(fcn_epochs=7, cas_epochs=3)
    fcn, cas_run = plan.fcn_trainings(dataset, mesh, budget, num_synthetic=1000, fcn_cached=False)
    assert (fcn.epochs, fcn.steps_per_epoch) == (7, 2)  # 67 series, batches of 64
    assert (cas_run.epochs, cas_run.steps_per_epoch) == (3, 4)  # 1000 series, batch 256
    for run in (fcn, cas_run):
        assert 0 < run.seconds_per_step < 60 and math.isfinite(run.seconds)
    cached, _ = plan.fcn_trainings(dataset, mesh, budget, num_synthetic=1000, fcn_cached=True)
    assert cached.cached and cached.seconds == 0.0
