"""Trains one stage of an NC-VQVAE experiment.

  python train.py --config=configs/stage1_vibcreg.py --workdir=runs/gp
  python train.py --config=configs/stage2_maskgit.py --workdir=runs/gp

Rerunning the same command resumes from the latest checkpoint in the workdir, also on another
number of devices or processes (`--distributed`: see README "Scaling out"). A config that
differs from the stored one in anything but the step budget and the logging, evaluation,
checkpoint and plot intervals is refused; --overwrite moves the old stage folder aside.
"""

import jax
from absl import flags
from ml_collections import config_flags

from ssl_vqvae import cli, huge_pages, stage1, stage2
from ssl_vqvae.errors import UserError, did_you_mean

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (see configs/).", lock_config=True)
flags.DEFINE_string("workdir", None, "Experiment folder (one per experiment).")
flags.DEFINE_bool(
    "overwrite",
    False,
    "Start this stage afresh: move an existing <workdir>/<stage> aside to <stage>.old-<time>.",
)
flags.mark_flags_as_required(["config", "workdir"])

TRAINERS = {"stage1": stage1.train_and_evaluate, "stage2": stage2.train_and_evaluate}


def main(argv: list[str]) -> None:
    del argv
    config = FLAGS.config
    if config.stage not in TRAINERS:
        raise UserError(
            f"config field stage={config.stage!r}; expected one of {tuple(TRAINERS)}"
            f"{did_you_mean(config.stage, TRAINERS)}"
        )
    print(
        f"JAX {jax.__version__}: {jax.device_count()} device(s) in {jax.process_count()} "
        f"process(es) {jax.devices()}"
    )
    TRAINERS[config.stage](config, FLAGS.workdir, overwrite=FLAGS.overwrite)


if __name__ == "__main__":
    huge_pages.restart_with_huge_pages()
    cli.run(main, config_flag="config")
