"""Evaluation report: `report.json`, a one-row Markdown table and the evaluation figures.

Written by the main process only (`processes.main_only`).

`report.md` adds notes where a number cannot be read as it stands (`notes`), and gives paths
relative to the workdir (or to `~`).
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from ssl_vqvae import plots, processes
from ssl_vqvae.evaluation import classifier

MAX_PLOT_CLASSES = 6
PCA_COMPONENTS = 2
SCATTER_SIZE = 6
SCATTER_ALPHA = 0.5
# An IS below 1 + this means the FCN puts (nearly) every sample in the same class ...
IS_ONE_CLASS_MARGIN = 0.05
# ... which says something about the samples only if the FCN separates the real classes.
CONFIDENT_FCN_ACCURACY = 0.9
# val_acc_ema starts at 0: it is read as it stands once that start weighs at most 10%.
EMA_TRUSTED_WEIGHT = 0.9
FIGURES = ("real_vs_generated.png", "fcn_features_pca.png", "codebook_usage.png")

# (cell key of `table_cells`, column header) of the Markdown table.
TABLE_COLUMNS = (
    ("dataset", "dataset"),
    ("ssl", "ssl method"),
    ("svm", "SVM (%)"),
    ("knn", "KNN (%)"),
    ("fid", "FID"),
    ("is", "IS"),
    ("cas", "CAS final / ema (%)"),
    ("fcn", "FCN test acc. (%)"),
)


def _percent(value: float) -> str:
    return f"{100.0 * value:.1f}"


def table_cells(report: Mapping[str, Any]) -> dict[str, str]:
    """The Markdown cells of one report, keyed like `TABLE_COLUMNS`."""
    ssl = report["ssl_method"]
    if ssl != "none":
        ssl = f"{ssl} ({report['augmentations']})"
    return {
        "dataset": report["dataset"],
        "ssl": ssl,
        "svm": _percent(report["svm_accuracy"]),
        "knn": _percent(report["knn_accuracy"]),
        "fid": f"{report['fid']:.2f}",
        "is": f"{report['is_mean']:.2f} ± {report['is_std']:.2f}",
        "cas": f"{_percent(report['cas_accuracy'])} / {_percent(report['cas_val_acc_ema'])}",
        "fcn": _percent(report["fcn_test_accuracy"]),
    }


def markdown_table(report: Mapping[str, Any]) -> str:
    """A header, a rule and one row for the report."""
    cells = table_cells(report)
    header = "| " + " | ".join(title for _, title in TABLE_COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|"
    row = "| " + " | ".join(cells[key] for key, _ in TABLE_COLUMNS) + " |"
    return "\n".join([header, rule, row])


def ema_batches(summary: Mapping[str, Any]) -> int:
    """Validation batches folded into a classifier run's `val_acc_ema` (its `summary.json`)."""
    eval_every = summary["eval_every_epochs"] * summary["steps_per_epoch"]
    validations = math.ceil(summary["num_steps"] / eval_every)  # the last step validates too
    return validations * math.ceil(summary["num_test"] / summary["batch_size"])


def ema_weight(num_batches: int, rate: float = classifier.EMA_RATE) -> float:
    """Weight of the accuracy (vs the zero start) in an EMA after `num_batches` updates."""
    return 1.0 - (1.0 - rate) ** num_batches


def notes(report: Mapping[str, Any]) -> list[str]:
    """Warnings for numbers of the table that cannot be read as they stand."""
    found = []
    if report["fcn_test_accuracy"] < CONFIDENT_FCN_ACCURACY:
        found.append(
            f"The FID/IS FCN classifies only {report['fcn_test_accuracy']:.0%} of the real test "
            f"series correctly ({report['fcn_epochs']} epochs): FID and IS say little until it "
            "separates the classes (--fcn_epochs; SPEC: 1000)."
        )
    fractions = report.get("generated_class_fractions")
    if (
        fractions
        and report["is_mean"] < 1.0 + IS_ONE_CLASS_MARGIN
        and report["fcn_test_accuracy"] >= CONFIDENT_FCN_ACCURACY
    ):
        top = max(range(len(fractions)), key=fractions.__getitem__)
        found.append(
            f"IS {report['is_mean']:.2f} is about 1 while the FCN classifies "
            f"{report['fcn_test_accuracy']:.0%} of the real test series correctly: it puts "
            f"{fractions[top]:.0%} of the unconditional samples in class {top}, so the samples "
            f"cover one class, not the {len(fractions)} of the data set (the score describes the "
            "samples, not the classifier)."
        )
    batches = report.get("cas_ema_batches")
    if batches is not None and ema_weight(batches) < EMA_TRUSTED_WEIGHT:
        weight, rate = ema_weight(batches), classifier.EMA_RATE
        needed = math.ceil(math.log(1.0 - EMA_TRUSTED_WEIGHT) / math.log(1.0 - rate))
        corrected = _percent(report["cas_val_acc_ema"] / weight)
        found.append(
            f"CAS val_acc_ema {_percent(report['cas_val_acc_ema'])}% vs final accuracy "
            f"{_percent(report['cas_accuracy'])}%: the EMA (rate {rate}, starting at 0) saw only "
            f"{batches} validation batch{'' if batches == 1 else 'es'}, so its zero start still "
            f"weighs {1.0 - weight:.0%}; it needs {needed} batches to mean anything. Divided by "
            f"{weight:.2f} (bias-corrected) it reads {corrected}%; use the final accuracy."
        )
    return found


def display_path(path: str | pathlib.Path, workdir: str | pathlib.Path) -> str:
    """`path` relative to the workdir if inside it, else to `~` if inside that, else as is."""
    path = pathlib.Path(path)
    for base, prefix in ((pathlib.Path(workdir), ""), (pathlib.Path.home(), "~/")):
        if path.is_relative_to(base):
            return prefix + str(path.relative_to(base))
    return str(path)


@processes.main_only
def write_report(report: Mapping[str, Any], directory: pathlib.Path) -> None:
    """Writes `report.json` (everything) and `report.md` (the table, settings and notes)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    workdir = pathlib.Path(report["workdir"])
    lines = [
        f"# Evaluation of {workdir.name}",
        "",
        markdown_table(report),
        "",
        f"- FID / IS: {report['num_test']} real test series (STFT round trip) vs the first "
        f"{report['num_test']} of {report['num_generated']} unconditional samples, length "
        f"{report['eval_length']}; FCN trained {report['fcn_epochs']} epochs "
        f"({report['fcn_steps']} steps), cached in `{display_path(report['fcn_dir'], workdir)}`.",
        f"- CAS: FCN trained {report['cas_epochs']} epochs ({report['cas_steps']} steps) on "
        f"{report['cas_num_train']} class-conditional samples; final test accuracy / "
        "val_acc_ema (EMA 0.01 of per-batch test accuracy).",
        "- Linear probes on pooled quantised latents in eval mode (the thesis ran them in "
        "training mode, SPEC §5.4).",
        f"- Test-set tokens use {report['codebook_usage']:.0%} of the codebook "
        f"(perplexity {report['token_perplexity']:.1f}); seed {report['seed']}.",
        "- Paths are relative to the workdir; figures: "
        + ", ".join(f"[{name}]({name})" for name in FIGURES)
        + f" (in `{display_path(directory, workdir)}/`).",
        "",
    ]
    found = notes(report)
    if found:
        lines += ["## Notes", "", *(f"- {note}" for note in found), ""]
    (directory / "report.md").write_text("\n".join(lines))


def pca_2d(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Projection onto the first two principal axes (numpy SVD of the centred features).

    Args:
      features: [N, D].

    Returns:
      (projected [N, 2], explained variance ratio [2]).
    """
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2 or features.shape[1] < PCA_COMPONENTS:
        raise ValueError(f"features: expected [N >= 2, D >= 2], got shape {features.shape}")
    centred = features - features.mean(axis=0)
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    variance = singular**2
    ratio = variance[:PCA_COMPONENTS] / max(variance.sum(), np.finfo(np.float64).tiny)
    return centred @ axes[:PCA_COMPONENTS].T, ratio


def plot_real_vs_generated(
    path: pathlib.Path,
    real: np.ndarray,
    real_labels: np.ndarray,
    generated: np.ndarray,
    generated_labels: np.ndarray,
    title: str,
) -> None:
    """Rows of real then generated series for each class present in both (at most 6 classes)."""
    rows = []
    classes = np.intersect1d(np.unique(real_labels), np.unique(generated_labels))
    for label in classes[:MAX_PLOT_CLASSES]:
        rows.append((f"real {label}", real[real_labels == label]))
        rows.append((f"generated {label}", generated[generated_labels == label]))
    plots.plot_series_rows(path, rows, title=title)


@processes.main_only
def plot_feature_pca(
    path: pathlib.Path, real_features: np.ndarray, generated_features: np.ndarray, title: str
) -> None:
    """Scatter of FCN features, real vs generated, on the principal axes of both together."""
    projected, ratio = pca_2d(np.concatenate([real_features, generated_features]))
    figure, axis = plt.subplots(figsize=(5, 4))
    split = len(real_features)
    for name, points in (("real", projected[:split]), ("generated", projected[split:])):
        axis.scatter(points[:, 0], points[:, 1], s=SCATTER_SIZE, alpha=SCATTER_ALPHA, label=name)
    axis.set_xlabel(f"PC1 ({ratio[0]:.0%})")
    axis.set_ylabel(f"PC2 ({ratio[1]:.0%})")
    axis.legend()
    axis.set_title(title, fontsize=9)
    plots.save_figure(figure, path)


def codebook_counts(tokens: np.ndarray, codebook_size: int) -> np.ndarray:
    """How often each code occurs: int [N, tokens] -> int64 [codebook_size]."""
    return np.bincount(np.asarray(tokens).ravel(), minlength=codebook_size)


def segment_statistics(
    tokens: np.ndarray, segments: tuple[tuple[int, int], ...]
) -> tuple[np.ndarray, dict[str, float]]:
    """Code counts of the first codebook and the statistics of every codebook.

    `segments` is the tokenizer's `token_segments`: NC-VQVAE has one codebook; an LF/HF
    tokenizer's ids are the LF ids then the HF ids, whose statistics get an `hf_` prefix.
    """
    counts, start = [], 0
    for count, codebook_size in segments:
        counts.append(codebook_counts(tokens[:, start : start + count], codebook_size))
        start += count
    stats = token_statistics(counts[0])
    for prefix, extra in zip(("hf_",), counts[1:], strict=False):
        stats.update({f"{prefix}{name}": value for name, value in token_statistics(extra).items()})
    return counts[0], stats


def token_statistics(counts: np.ndarray) -> dict[str, float]:
    """Fraction of codes used and the perplexity `exp(H)` of the code frequencies."""
    probs = counts / counts.sum()
    used = probs[probs > 0]
    return {
        "codebook_usage": float(np.mean(counts > 0)),
        "token_perplexity": float(np.exp(-np.sum(used * np.log(used)))),
    }


@processes.main_only
def plot_codebook_usage(path: pathlib.Path, counts: np.ndarray, title: str) -> None:
    """Bar chart of code frequencies."""
    figure, axis = plt.subplots(figsize=(6, 3))
    axis.bar(np.arange(len(counts)), counts / counts.sum(), width=0.9)
    axis.set_xlabel("code id")
    axis.set_ylabel("frequency")
    axis.set_title(title, fontsize=9)
    plots.save_figure(figure, path)
