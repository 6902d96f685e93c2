"""The on-disk layout of one experiment (one workdir, one folder per stage).

```
<workdir>/stage1/   config.json, checkpoints/, metrics.jsonl, tensorboard/, plots/
<workdir>/stage2/   (same)
<workdir>/samples/  samples.npz, samples.png
<workdir>/eval/     report.json, report.md, plots
```
"""

from __future__ import annotations

import json
import pathlib

import ml_collections

from ssl_vqvae import config_lib, data, pipeline, training


def stage_dir(workdir: str | pathlib.Path, stage: str) -> pathlib.Path:
    return pathlib.Path(workdir).expanduser().absolute() / stage


def write_config(config: ml_collections.ConfigDict, directory: pathlib.Path) -> None:
    """Stores the resolved config so later stages and tools need nothing but the workdir."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(config.to_json(indent=2) + "\n")


def read_config(directory: pathlib.Path) -> ml_collections.ConfigDict:
    path = directory / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; is {directory.parent} an experiment workdir with a trained "
            f"{directory.name}? (run train.py with a {directory.name} config first)"
        )
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def load_dataset(config: ml_collections.ConfigDict) -> data.UCRDataset:
    return data.load_ucr(config.data.dataset, config.data.root or None, config.data.variable_length)


def validate_stage1(config: ml_collections.ConfigDict) -> None:
    """Rejects values that would otherwise fail deep inside JAX."""
    if config.ssl.method not in config_lib.SSL_METHODS:
        raise ValueError(
            f"ssl.method={config.ssl.method!r}; expected one of {config_lib.SSL_METHODS}"
        )
    if config.ssl.method == "vibcreg" and (
        config.ssl.projector_output_dim % config.ssl.iternorm_groups
    ):
        raise ValueError(
            f"ssl.projector_output_dim={config.ssl.projector_output_dim} must be divisible by "
            f"ssl.iternorm_groups={config.ssl.iternorm_groups}"
        )


class Schedule:
    """Step counts and learning rates derived from epochs for a dataset (SPEC §2.7)."""

    def __init__(
        self,
        train_config: ml_collections.ConfigDict,
        steps_per_epoch: int,
        peak_learning_rate: float,
    ):
        self.steps_per_epoch = steps_per_epoch
        if train_config.num_steps > 0:
            self.num_steps = int(train_config.num_steps)
        else:
            self.num_steps = int(train_config.num_epochs) * steps_per_epoch
        self.eval_every = max(1, int(train_config.eval_every_epochs) * steps_per_epoch)
        self.learning_rate = training.reference_cosine_schedule(
            peak_learning_rate, self.num_steps, steps_per_epoch
        )

    def loop_config(
        self, train_config: ml_collections.ConfigDict, description: str
    ) -> training.LoopConfig:
        """How `training.fit` runs a stage under this schedule."""
        return training.LoopConfig(
            num_steps=self.num_steps,
            log_every=train_config.log_every,
            eval_every=self.eval_every,
            checkpoint_every=train_config.checkpoint_every,
            description=description,
            learning_rate=self.learning_rate,
        )


def batch_sizes(
    config: ml_collections.ConfigDict, dataset: data.UCRDataset, num_devices: int
) -> tuple[int, int]:
    """(train, eval) global batch sizes that split evenly over the devices."""
    train = pipeline.global_batch_size(config.data.batch_size, len(dataset.train), num_devices)
    return train, pipeline.round_to_devices(config.data.eval_batch_size, num_devices)
