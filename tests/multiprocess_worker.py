"""One process of the multi-process tests (tests/test_multiprocess.py), and what it runs.

    python tests/multiprocess_worker.py --root=R --distributed \
        --coordinator_address=127.0.0.1:<port> --num_processes=2 --process_id=<i>

Trains (or resumes) a tiny stage 1 with ssl.method=none and a tiny stage 2 in `R/experiment` and
a tiny VIbCReg stage 1 in `R/vibcreg`, then loads the experiment and samples and encodes with it,
every process saving what it got to `R/process<i>.npz`. The single-process reference calls the
same functions in the test process.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np
from absl import flags

from ssl_vqvae import Experiment, cli, config_lib, stage1, stage2

EXPERIMENT_DIR = "experiment"
VIBCREG_DIR = "vibcreg"
STAGE1_STEPS = 8  # `tiny`, with checkpoints at 4 and 8
STAGE2_STEPS = 4
VIBCREG_STEPS = 1
NUM_SAMPLES = 6
SAMPLE_SEED = 3


def stage1_config(method: str, num_steps: int = STAGE1_STEPS):
    config = config_lib.load_config_file(f"{config_lib.STAGE1_CONFIGS[method]}:tiny")
    config.train.num_steps = num_steps
    return config


def train_tokenizer(root: pathlib.Path) -> None:
    """The ssl.method=none stage 1 of `root/experiment` (resumed if it has a checkpoint)."""
    stage1.train_and_evaluate(stage1_config("none"), str(root / EXPERIMENT_DIR))


def train_others(root: pathlib.Path) -> None:
    """Stage 2 on the stage 1 of `root/experiment`; a VIbCReg stage 1 in `root/vibcreg`."""
    config = config_lib.load_config_file("stage2_maskgit:tiny")
    config.train.num_steps = STAGE2_STEPS
    stage2.train_and_evaluate(config, str(root / EXPERIMENT_DIR))
    config = stage1_config("vibcreg", VIBCREG_STEPS)
    config.train.plot_every_eval = False  # the baseline's plots are enough
    stage1.train_and_evaluate(config, str(root / VIBCREG_DIR))


def use(root: pathlib.Path) -> dict[str, np.ndarray]:
    """Samples of class 1 and the test split's token ids, from the experiment in `root`."""
    experiment = Experiment.load(root / EXPERIMENT_DIR)
    samples, _ = experiment.sample(NUM_SAMPLES, class_id=1, seed=SAMPLE_SEED)
    return {"samples": samples, "tokens": experiment.encode(experiment.dataset.test.x)}


def main(argv: list[str]) -> None:
    del argv
    root = pathlib.Path(flags.FLAGS.root)
    train_tokenizer(root)
    train_others(root)
    np.savez(root / f"process{jax.process_index()}.npz", **use(root))


if __name__ == "__main__":
    flags.DEFINE_string("root", None, "Folder of the experiments and outputs.", required=True)
    cli.run(main)
