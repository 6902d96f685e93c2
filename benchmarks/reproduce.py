"""Reproduces the thesis grid (SPEC §5.5): stage 1 -> stage 2 -> evaluation for every run.

    python benchmarks/reproduce.py --datasets=GunPoint --variants=vqvae,vibcreg-warp --seeds=1 \\
        --tiny --fcn_epochs=2 --cas_epochs=2 --root=runs/repro_smoke      # minutes, smoke test
    python benchmarks/reproduce.py --datasets=ECG5000,Wafer --root=runs/thesis   # SPEC settings

Each (dataset, variant, seed) run lives in `<root>/<dataset>/<variant>/seed<k>`. A run whose
`eval/report.json` exists is skipped; an interrupted one resumes (every stage and both
classifiers resume from their checkpoints), so rerunning the same command continues the grid.
Then `<root>/results.md` gets one table per metric (mean ± population std over the finished
seeds) with the published SPEC §5.5 number beside it ("—" where the thesis has none), and the
wall time of each run. Delete a run's folder to redo it with other settings.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np
import thesis_results
from absl import app, flags

from ssl_vqvae import cli, config_lib, stage1, stage2
from ssl_vqvae.evaluate import evaluate_experiment
from ssl_vqvae.evaluation import cas, classifier

# variant name -> (stage-1 file in configs/, ssl.augmentations preset or None for the plain VQ-VAE)
# The thesis's variants (SPEC §5.5), in the order of its tables; all use configs/stage2_maskgit.py.
VARIANTS: dict[str, tuple[str, str | None]] = {
    "vqvae": ("stage1_vqvae", None),
    "barlowtwins-warp": ("stage1_barlowtwins", "warp"),
    "barlowtwins-slice": ("stage1_barlowtwins", "slice"),
    "barlowtwins-gauss": ("stage1_barlowtwins", "gauss"),
    "vibcreg-warp": ("stage1_vibcreg", "warp"),
    "vibcreg-slice": ("stage1_vibcreg", "slice"),
    "vibcreg-gauss": ("stage1_vibcreg", "gauss"),
}
# TimeVQVAE's two-branch tokenizer, alone and with SSL; stage 2 is configs/stage2_timevqvae.py.
TWO_BRANCH_VARIANTS: dict[str, tuple[str, str | None]] = {
    "timevqvae": ("stage1_timevqvae", None),
    "timevqvae2023": ("stage1_timevqvae2023", None),
    "timevqvae-vibcreg-slice": ("stage1_timevqvae_vibcreg", "slice"),
    "timevqvae-barlowtwins-slice": ("stage1_timevqvae_barlowtwins", "slice"),
}
ALL_VARIANTS = {**VARIANTS, **TWO_BRANCH_VARIANTS}
STAGE2_CONFIG = "stage2_maskgit"  # the stage-2 file of the thesis's variants
TWO_BRANCH_STAGE2_CONFIG = "stage2_timevqvae"
DEFAULT_SEEDS = (1, 2, 3, 4)
WALL_TIME_FILE = "wall_time.json"
REPORT = ("eval", "report.json")

# (report key, table title, factor, decimals, key in thesis_results or None)
METRICS = (
    ("svm_accuracy", "SVM probe accuracy (%)", 100.0, 1, "svm_accuracy"),
    ("knn_accuracy", "KNN (k=5) probe accuracy (%)", 100.0, 1, "knn_accuracy"),
    ("fid", "FID (lower is better)", 1.0, 2, "fid"),
    ("is_mean", "IS (higher is better)", 1.0, 2, "is_mean"),
    ("cas_val_acc_ema", "CAS, val_acc_ema (%)", 100.0, 1, "cas_val_acc_ema"),
    ("cas_accuracy", "CAS, final test accuracy (%)", 100.0, 1, None),
    ("fcn_test_accuracy", "FID/IS FCN test accuracy (%)", 100.0, 1, None),
)
PHASES = ("stage1_s", "stage2_s", "evaluate_s")


@dataclasses.dataclass(frozen=True)
class GridSettings:
    """What every run of the grid shares.

    Attributes:
      root: folder holding `<dataset>/<variant>/seed<k>` and `results.md`.
      stage1_steps, stage2_steps: > 0 overrides the configs' 1000 epochs.
      fcn_epochs, cas_epochs: epochs of the evaluation classifiers.
      tiny: use the `:tiny` configs (smoke runs).
      data_root: UCR archive folder (empty: bundled sets, then the UCR pip packages).
      cache_dir: FCN cache (None: `$SSL_VQVAE_CACHE` or `~/.cache/ssl_vqvae/fcn`).
      cas_min_samples: size the CAS synthetic train set is scaled up to (SPEC: 1000).
    """

    root: pathlib.Path
    stage1_steps: int = 0
    stage2_steps: int = 0
    fcn_epochs: int = classifier.DEFAULT_EPOCHS
    cas_epochs: int = classifier.DEFAULT_EPOCHS
    tiny: bool = False
    data_root: str = ""
    cache_dir: str | None = None
    cas_min_samples: int = cas.MIN_SYNTHETIC_TRAIN


def run_dir(root: pathlib.Path, dataset: str, variant: str, seed: int) -> pathlib.Path:
    return root / dataset / variant / f"seed{seed}"


def variant_configs(
    variant: str, dataset: str, seed: int, settings: GridSettings
) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
    """(stage-1 config, stage-2 config) of one run."""
    if variant not in ALL_VARIANTS:
        raise ValueError(f"variant {variant!r}; expected one of {list(ALL_VARIANTS)}")
    stage1_config, augmentations = ALL_VARIANTS[variant]
    stage2_config = TWO_BRANCH_STAGE2_CONFIG if variant in TWO_BRANCH_VARIANTS else STAGE2_CONFIG
    arg = ":tiny" if settings.tiny else ""
    config1 = config_lib.load_config_file(stage1_config + arg)
    config2 = config_lib.load_config_file(stage2_config + arg)
    config1.data.dataset, config1.data.root = dataset, settings.data_root
    if augmentations is not None:
        config1.ssl.augmentations = augmentations
    for config, steps in ((config1, settings.stage1_steps), (config2, settings.stage2_steps)):
        config.seed = seed
        if steps > 0:
            config.train.num_steps = steps
    return config1, config2


def run_experiment(
    workdir: pathlib.Path,
    config1: ml_collections.ConfigDict,
    config2: ml_collections.ConfigDict,
    settings: GridSettings,
) -> dict[str, float]:
    """Trains (or resumes) both stages and evaluates; returns and stores the wall times."""
    times = {}
    start = time.perf_counter()
    stage1.train_and_evaluate(config1, str(workdir))
    times["stage1_s"] = time.perf_counter() - start
    start = time.perf_counter()
    stage2.train_and_evaluate(config2, str(workdir))
    times["stage2_s"] = time.perf_counter() - start
    start = time.perf_counter()
    evaluate_experiment(
        workdir,
        fcn_epochs=settings.fcn_epochs,
        cas_epochs=settings.cas_epochs,
        seed=config1.seed,
        cache_dir=settings.cache_dir,
        cas_min_samples=settings.cas_min_samples,
    )
    times["evaluate_s"] = time.perf_counter() - start
    times["total_s"] = sum(times.values())
    (workdir / WALL_TIME_FILE).write_text(json.dumps(times, indent=2) + "\n")
    return times


def run_grid(
    datasets: Sequence[str], variants: Sequence[str], seeds: Sequence[int], settings: GridSettings
) -> list[dict[str, Any]]:
    """Runs every unfinished (dataset, variant, seed), then writes `<root>/results.md`.

    Returns:
      One record per run: {"dataset", "variant", "seed", "report", "wall_time", "skipped"}.
    """
    unknown = [variant for variant in variants if variant not in ALL_VARIANTS]
    if unknown:
        raise ValueError(f"variants {unknown}; expected names from {list(ALL_VARIANTS)}")
    grid = [(d, v, s) for d in datasets for v in variants for s in seeds]
    records = []
    for index, (dataset, variant, seed) in enumerate(grid, start=1):
        workdir = run_dir(settings.root, dataset, variant, seed)
        tag = f"[reproduce] ({index}/{len(grid)}) {dataset}/{variant}/seed{seed}"
        skipped = workdir.joinpath(*REPORT).is_file()
        if skipped:
            print(f"{tag}: finished before, skipped", flush=True)
        else:
            print(f"{tag}: running in {workdir}", flush=True)
            config1, config2 = variant_configs(variant, dataset, seed, settings)
            run_experiment(workdir, config1, config2, settings)
        records.append(
            {
                "dataset": dataset,
                "variant": variant,
                "seed": seed,
                "skipped": skipped,
                **_load_run(workdir),
            }
        )
    settings.root.mkdir(parents=True, exist_ok=True)
    path = settings.root / "results.md"
    path.write_text(results_markdown(records, datasets, variants, settings))
    print(f"[reproduce] wrote {path}")
    return records


def _load_run(workdir: pathlib.Path) -> dict[str, Any]:
    wall = workdir / WALL_TIME_FILE
    return {
        "report": json.loads(workdir.joinpath(*REPORT).read_text()),
        "wall_time": json.loads(wall.read_text()) if wall.is_file() else None,
    }


def summary_cell(values: Sequence[float], decimals: int) -> str:
    """`mean±std (n=k)` with the population std (ddof 0), as the thesis reports."""
    values = np.asarray(values, np.float64)
    return f"{values.mean():.{decimals}f}±{values.std():.{decimals}f} (n={len(values)})"


def results_markdown(
    records: Sequence[dict[str, Any]],
    datasets: Sequence[str],
    variants: Sequence[str],
    settings: GridSettings,
) -> str:
    """One table per metric (rows: datasets, columns: variants) plus a wall-time table."""
    lines = [
        "# NC-VQVAE reproduction",
        "",
        f"Settings: {'tiny' if settings.tiny else 'SPEC'} configs; stage-1 steps "
        f"{settings.stage1_steps or 'from the config'}, stage-2 steps "
        f"{settings.stage2_steps or 'from the config'}; FCN {settings.fcn_epochs} epochs, CAS "
        f"{settings.cas_epochs} epochs (train sets scaled up to ~{settings.cas_min_samples}).",
        "Each cell: this reproduction, mean ± population std over n seeds, vs the thesis "
        "(SPEC §5.5; — where it has no number). Probes here run in eval mode, the thesis's in "
        "training mode; FID/IS/CAS use FCNs retrained here, not the thesis's pretrained ones.",
        "",
    ]
    for key, title, factor, decimals, thesis_key in METRICS:
        lines += [
            f"## {title}",
            "",
            "| dataset | " + " | ".join(variants) + " |",
            "|---" * (len(variants) + 1) + "|",
        ]
        for dataset in datasets:
            cells = []
            for variant in variants:
                values = [
                    factor * r["report"][key]
                    for r in records
                    if r["dataset"] == dataset and r["variant"] == variant
                ]
                published = (
                    thesis_results.published(thesis_key, dataset, variant) if thesis_key else None
                )
                thesis = (
                    "—"
                    if published is None
                    else (f"{published[0]:.{decimals}f}±{published[1]:.{decimals}f}")
                )
                cells.append(f"{summary_cell(values, decimals)} vs {thesis}")
            lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## Wall time per run (s; the latest session of the run)",
        "",
        "| dataset | variant | seed | stage 1 | stage 2 | evaluation | total |",
        "|---|---|---|---|---|---|---|",
    ]
    for record in records:
        wall = record["wall_time"]
        times = ["—"] * 4 if wall is None else [f"{wall[k]:.0f}" for k in (*PHASES, "total_s")]
        lines.append(
            f"| {record['dataset']} | {record['variant']} | {record['seed']} | "
            + " | ".join(times)
            + " |"
        )
    return "\n".join(lines) + "\n"


FLAGS = flags.FLAGS
flags.DEFINE_list("datasets", sorted(thesis_results.RESULTS["fid"]), "UCR datasets.")
flags.DEFINE_list(
    "variants", list(VARIANTS), f"Variants (default: the thesis's), from {list(ALL_VARIANTS)}."
)
flags.DEFINE_list("seeds", [str(seed) for seed in DEFAULT_SEEDS], "Seeds (integers).")
flags.DEFINE_integer("stage1_steps", 0, "Stage-1 steps (0: the config's 1000 epochs).")
flags.DEFINE_integer("stage2_steps", 0, "Stage-2 steps (0: the config's 1000 epochs).")
flags.DEFINE_integer("fcn_epochs", classifier.DEFAULT_EPOCHS, "Epochs of the FID/IS FCN.")
flags.DEFINE_integer("cas_epochs", classifier.DEFAULT_EPOCHS, "Epochs of the CAS FCN.")
flags.DEFINE_string("root", "runs/reproduce", "Folder of the runs and results.md.")
flags.DEFINE_bool("tiny", False, "Use the :tiny configs (smoke runs).")
flags.DEFINE_string("data_root", "", "UCR archive folder (default: bundled / pip sets).")
flags.DEFINE_string("cache_dir", None, "FCN cache (default: $SSL_VQVAE_CACHE or ~/.cache).")
flags.DEFINE_integer("cas_min_samples", cas.MIN_SYNTHETIC_TRAIN, "CAS synthetic set size floor.")


def main(argv: list[str]) -> None:
    del argv  # cli.run rejects positional arguments
    if not all(seed.lstrip("-").isdigit() for seed in FLAGS.seeds):
        raise app.UsageError(f"--seeds={','.join(FLAGS.seeds)}; expected integers")
    settings = GridSettings(
        root=pathlib.Path(FLAGS.root).expanduser().absolute(),
        stage1_steps=FLAGS.stage1_steps,
        stage2_steps=FLAGS.stage2_steps,
        fcn_epochs=FLAGS.fcn_epochs,
        cas_epochs=FLAGS.cas_epochs,
        tiny=FLAGS.tiny,
        data_root=FLAGS.data_root,
        cache_dir=FLAGS.cache_dir,
        cas_min_samples=FLAGS.cas_min_samples,
    )
    run_grid(FLAGS.datasets, FLAGS.variants, [int(seed) for seed in FLAGS.seeds], settings)


if __name__ == "__main__":
    cli.run(main)
