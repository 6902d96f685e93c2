"""Evaluates a trained experiment (SPEC §5): linear probes, FID, IS and CAS.

    python -m ssl_vqvae.evaluate --workdir=runs/gp [--budget=thesis|quick] [--fcn_epochs=N]
        [--cas_epochs=N] [--seed=0] [--cache_dir=~/.cache/ssl_vqvae/fcn]

Before the long phases it prints its plan: the steps of both FCN trainings and an estimated
duration from a few timed steps on this machine (`evaluation.plan`).

Writes `<workdir>/eval/report.json`, `report.md` and figures (real vs generated per class, a PCA
of FCN features, codebook usage). The FID/IS classifier is trained once per dataset and cached
(`evaluation.classifier.load_or_train_fcn`); the CAS classifier lives in `<workdir>/eval/cas/`.
Both resume after an interruption.
"""

from __future__ import annotations

import contextlib
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import jax.numpy as jnp
import numpy as np
from absl import flags

from ssl_vqvae import cli, huge_pages, layout, stft
from ssl_vqvae.api import Experiment
from ssl_vqvae.data import UCRDataset
from ssl_vqvae.errors import UserError
from ssl_vqvae.evaluation import cas, classifier, fcn_cache, plan, report
from ssl_vqvae.evaluation.fcn_outputs import fcn_outputs
from ssl_vqvae.evaluation.probes import linear_probe_accuracies
from ssl_vqvae.evaluation.scores import frechet_distance, inception_score

EVAL_DIR = "eval"
MIN_GENERATED = 256  # the reference samples max(N_test, 256) series and scores the first N_test
MIN_TEST_SERIES = 10  # IS splits the scored set into 10 parts
NUM_PHASES = 6


def check_test_split(dataset: UCRDataset) -> None:
    if len(dataset.test) < MIN_TEST_SERIES:
        raise UserError(
            f"dataset {dataset.name!r} has {len(dataset.test)} test series; FID, IS and CAS "
            f"need a test split of at least {MIN_TEST_SERIES}"
        )


class _Progress:
    """Prints each phase as it starts and ends, and records its wall time."""

    def __init__(self, total: int):
        self.total, self.index, self.timings = total, 0, {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.index += 1
        tag = f"[evaluate] ({self.index}/{self.total}) {name}"
        print(f"{tag} ...", flush=True)
        start = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - start
        print(f"{tag}: done in {self.timings[name]:.1f} s", flush=True)


def linear_probes(exp: Experiment) -> dict[str, float]:
    """SVM / KNN accuracy of the tokenizer's pooled quantised latents, eval mode (SPEC §5.4)."""
    train, test = exp.dataset.train, exp.dataset.test
    return linear_probe_accuracies(
        exp.represent(train.x, scaled=True), train.y, exp.represent(test.x, scaled=True), test.y
    )


def stft_round_trip(x: np.ndarray, n_fft: int) -> np.ndarray:
    """ISTFT(STFT(x)): float32 [N, L, C] -> [N, 2*floor(L/2), C] for n_fft = 8 (SPEC §5.2)."""
    return np.asarray(stft.istft(stft.stft(jnp.asarray(x), n_fft), n_fft))


def fidelity_metrics(
    exp: Experiment, fcn: classifier.ClassifierRun, seed: int
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """FID and IS of unconditional samples against the round-tripped test split (SPEC §5.2).

    Returns:
      (metrics, arrays): arrays holds the scored series and FCN features ("real", "generated",
      "real_features", "generated_features") for the figures.
    """
    test = exp.dataset.test
    real = stft_round_trip(test.x, exp.stage1_settings.model.n_fft)
    num_generated = max(len(test), MIN_GENERATED)
    generated, _ = exp.sample(num_generated, None, scaled=True, seed=seed)
    generated = generated[: len(test)]
    _, real_features = fcn_outputs(fcn.model, fcn.variables, real, exp.mesh)
    probs, generated_features = fcn_outputs(fcn.model, fcn.variables, generated, exp.mesh)
    is_mean, is_std = inception_score(probs, rng=np.random.default_rng(seed))
    predicted = np.bincount(np.argmax(probs, axis=-1), minlength=probs.shape[-1])
    metrics = {
        "fid": frechet_distance(real_features, generated_features),
        "is_mean": is_mean,
        "is_std": is_std,
        # how the FCN classifies the scored samples: explains an IS near 1 (`report.notes`)
        "generated_class_fractions": (predicted / predicted.sum()).tolist(),
        "num_test": len(test),
        "num_generated": num_generated,
        "eval_length": int(real.shape[1]),
    }
    arrays = {
        "real": real,
        "generated": generated,
        "real_features": real_features,
        "generated_features": generated_features,
    }
    return metrics, arrays


def _print_plan(
    exp: Experiment, fcn_dir: pathlib.Path, budget: str, epochs: plan.Budget, num_synthetic: int
) -> None:
    """The steps of both FCN trainings and their estimated duration, before they start."""
    dataset = exp.dataset
    print(
        f"[evaluate] {dataset.name} on {exp.mesh.size} device(s); FID/IS on {len(dataset.test)} "
        f"test series, CAS on {num_synthetic} synthetic series; FCN cache {fcn_dir}",
        flush=True,
    )
    cached = (fcn_dir / fcn_cache.SUMMARY_FILE).is_file()
    trainings = plan.fcn_trainings(dataset, exp.mesh, epochs, num_synthetic, cached)
    print(plan.describe(trainings, budget), flush=True)


def evaluate_experiment(
    workdir: str | pathlib.Path,
    *,
    budget: str = "thesis",
    fcn_epochs: int | None = None,
    cas_epochs: int | None = None,
    seed: int = 0,
    cache_dir: str | pathlib.Path | None = None,
    cas_min_samples: int = cas.MIN_SYNTHETIC_TRAIN,
) -> dict[str, Any]:
    """Runs every metric of SPEC §5 on a trained experiment and writes `<workdir>/eval/`.

    Args:
      workdir: experiment folder with trained `stage1/` and `stage2/`.
      budget: a name of `plan.BUDGETS`: "thesis" (SPEC §5, the default) or "quick".
      fcn_epochs: epochs of the cached FID/IS classifier (trained once per dataset); None: the
        budget's.
      cas_epochs: epochs of the CAS classifier trained on synthetic series; None: the budget's.
      seed: seeds sampling, the IS shuffle and the CAS classifier.
      cache_dir: FCN cache root (default `$SSL_VQVAE_CACHE` or `~/.cache/ssl_vqvae/fcn`).
      cas_min_samples: the synthetic train set is scaled up to about this many series.

    Returns:
      The report (also written to `report.json`): probe accuracies, FID, IS, CAS, FCN accuracy,
      codebook usage, settings and per-phase wall times.
    """
    if budget not in plan.BUDGETS:
        raise UserError(f"budget={budget!r}; expected one of {tuple(plan.BUDGETS)}")
    epochs = plan.Budget(
        fcn_epochs or plan.BUDGETS[budget].fcn_epochs,
        cas_epochs or plan.BUDGETS[budget].cas_epochs,
    )
    fcn_epochs, cas_epochs = epochs.fcn_epochs, epochs.cas_epochs
    workdir = pathlib.Path(workdir).expanduser().absolute()
    stage1_dir, _ = layout.check_trained(workdir)
    out = workdir / EVAL_DIR
    dataset_name = layout.read_config(stage1_dir).data.dataset
    fcn_dir = fcn_cache.fcn_cache_dir(cache_dir, dataset_name, fcn_epochs)
    layout.check_writable(out)
    if not (fcn_dir / fcn_cache.SUMMARY_FILE).is_file():  # a cached FCN is only read
        layout.check_writable(fcn_dir)
    progress = _Progress(NUM_PHASES)
    with progress.phase("load experiment"):
        exp = Experiment.load(workdir, require_prior=True)
        check_test_split(exp.dataset)
    dataset = exp.dataset
    counts = cas.synthetic_class_counts(dataset.train.y, dataset.num_classes, cas_min_samples)
    _print_plan(exp, fcn_dir, budget, epochs, int(counts.sum()))

    with progress.phase("linear probes"):
        probes = linear_probes(exp)
    with progress.phase("FID/IS classifier"):
        fcn = classifier.load_or_train_fcn(dataset, cache_dir, num_epochs=fcn_epochs)
    with progress.phase("FID and IS"):
        fidelity, arrays = fidelity_metrics(exp, fcn, seed)
    with progress.phase("CAS"):
        cas_result = cas.classification_accuracy_score(
            exp,
            out / "cas" / f"epochs{cas_epochs}_seed{seed}",
            num_epochs=cas_epochs,
            seed=seed,
            min_total=cas_min_samples,
        )
    with progress.phase("codebook usage, report and figures"):
        tokens = exp.encode(dataset.test.x, scaled=True)
        counts, token_stats = report.segment_statistics(tokens, exp.tokenizer.token_segments)
        results = {
            "workdir": str(workdir),
            "dataset": dataset.name,
            "ssl_method": exp.stage1_settings.ssl.method,
            "augmentations": exp.stage1_settings.ssl.augmentations,
            "prior_variant": exp.stage2_resolved["prior_variant"],
            "seed": seed,
            "budget": budget,
            **probes,
            **fidelity,
            "fcn_test_accuracy": fcn.test_accuracy,
            "fcn_epochs": fcn_epochs,
            "fcn_steps": fcn.summary["num_steps"],
            "fcn_dir": str(fcn_dir),
            "cas_accuracy": cas_result.accuracy,
            "cas_val_acc_ema": cas_result.val_acc_ema,
            "cas_ema_batches": report.ema_batches(cas_result.summary),
            "cas_num_train": len(cas_result.y),
            "cas_epochs": cas_epochs,
            "cas_steps": cas_result.summary["num_steps"],
            **token_stats,
        }
        _write_figures(out, dataset, arrays, cas_result, counts)
    results["timings_s"] = progress.timings
    report.write_report(results, out)
    print(f"[evaluate] wrote {out / 'report.json'} and {out / 'report.md'}")
    return results


def _write_figures(
    out: pathlib.Path,
    dataset: UCRDataset,
    arrays: dict[str, np.ndarray],
    cas_result: cas.CASResult,
    counts: np.ndarray,
) -> None:
    report.plot_real_vs_generated(
        out / "real_vs_generated.png",
        dataset.test.x,
        dataset.test.y,
        cas_result.x,
        cas_result.y,
        title=f"{dataset.name}: real test series vs class-conditional samples",
    )
    report.plot_feature_pca(
        out / "fcn_features_pca.png",
        arrays["real_features"],
        arrays["generated_features"],
        title=f"{dataset.name}: FCN features, real (STFT round trip) vs unconditional samples",
    )
    report.plot_codebook_usage(
        out / "codebook_usage.png", counts, title=f"{dataset.name}: codes of the test-set tokens"
    )


def define_flags() -> None:
    """Command-line flags of the evaluation entry points (bounds checked while parsing)."""
    flags.DEFINE_string("workdir", None, "Experiment folder with trained stage1/ and stage2/.")
    flags.DEFINE_enum(
        "budget",
        "thesis",
        list(plan.BUDGETS),
        "thesis: SPEC §5's 1000-epoch FCNs (hours on a CPU); quick: "
        + ", ".join(f"{k}={v}" for k, v in vars(plan.BUDGETS["quick"]).items())
        + " (not comparable with published numbers).",
    )
    flags.DEFINE_integer(
        "fcn_epochs", None, "Epochs of the FID/IS FCN (default: the budget's).", lower_bound=1
    )
    flags.DEFINE_integer(
        "cas_epochs", None, "Epochs of the CAS FCN (default: the budget's).", lower_bound=1
    )
    flags.DEFINE_integer(
        "seed", 0, "Seed of sampling, the IS shuffle and the CAS FCN.", lower_bound=0
    )
    flags.DEFINE_string(
        "cache_dir",
        None,
        f"FCN cache (default ${fcn_cache.CACHE_ENV} or {fcn_cache.DEFAULT_CACHE_DIR}).",
    )
    flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
    """Entry point for `cli.run` after `define_flags` (see the module docstring)."""
    del argv  # cli.run rejects positional arguments
    options = flags.FLAGS
    results = evaluate_experiment(
        options.workdir,
        budget=options.budget,
        fcn_epochs=options.fcn_epochs,
        cas_epochs=options.cas_epochs,
        seed=options.seed,
        cache_dir=options.cache_dir,
    )
    print(report.markdown_table(results))


if __name__ == "__main__":
    huge_pages.restart_with_huge_pages()
    define_flags()
    cli.run(main)
