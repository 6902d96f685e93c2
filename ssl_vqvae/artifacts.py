"""Self-describing model artefacts: rebuild a trained module from its checkpoint alone.

Every checkpoint step stores, beside the variables (`model` item), a JSON `model_spec`: the
module's class and constructor arguments (length, channels, token grid, prior variant, ...)
plus a description of the data it was trained on (`DataInfo`: shape, classes and the scaling of
the training series). `load_model(stage_dir)` restores exactly that: no dataset, no optimizer
state and no trainer code is needed, so a trained experiment can be moved, copied or shipped.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from ssl_vqvae import sharding
from ssl_vqvae.branch_prior import TwoBranchPrior
from ssl_vqvae.checkpoints import Checkpointer
from ssl_vqvae.errors import MissingInputError, UserError
from ssl_vqvae.evaluation.fcn import FCN
from ssl_vqvae.transformer import MaskGITTransformer
from ssl_vqvae.two_branch import TwoBranchVQVAE
from ssl_vqvae.vqvae import VQVAE

CHECKPOINT_DIR = "checkpoints"
# Modules a spec may name: a checkpoint never makes us import or run arbitrary code.
MODULES: dict[str, type[nn.Module]] = {
    cls.__name__: cls for cls in (VQVAE, TwoBranchVQVAE, MaskGITTransformer, TwoBranchPrior, FCN)
}


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about its data: shape, classes and the series scaling.

    Attributes:
      name: dataset name.
      length, channels: series shape the model was built for.
      num_classes: number of classes (class ids 0..num_classes-1).
      mean, std: training series were `(x - mean) / std`; `unscale` undoes it.
    """

    name: str
    length: int
    channels: int
    num_classes: int
    mean: float
    std: float

    @classmethod
    def of(cls, dataset: Any) -> DataInfo:
        """From a `data.UCRDataset`."""
        return cls(
            dataset.name,
            dataset.length,
            dataset.channels,
            dataset.num_classes,
            float(dataset.mean),
            float(dataset.std),
        )

    def scale(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x) - self.mean) / self.std).astype(np.float32)

    def unscale(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x) * self.std + self.mean


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How to rebuild a module: its class name, constructor arguments and data."""

    module: str
    arguments: dict[str, Any]
    data: DataInfo

    @classmethod
    def of(cls, module: nn.Module, data: DataInfo) -> ModelSpec:
        """The spec of a constructed (unbound) module."""
        arguments = {
            field.name: getattr(module, field.name)
            for field in dataclasses.fields(module)
            if field.init and field.name not in ("parent", "name")
        }
        return cls(type(module).__name__, arguments, data)

    def build(self) -> nn.Module:
        if self.module not in MODULES:
            raise UserError(
                f"model_spec names module {self.module!r}; expected one of {sorted(MODULES)}"
            )
        # JSON turns tuples into lists; Linen fields must stay hashable.
        arguments = {
            key: tuple(value) if isinstance(value, list) else value
            for key, value in self.arguments.items()
        }
        return MODULES[self.module](**arguments)

    def to_json(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "arguments": jax.tree.map(_plain, self.arguments),
            "data": dataclasses.asdict(self.data),
        }

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> ModelSpec:
        return cls(record["module"], dict(record["arguments"]), DataInfo(**record["data"]))


def _plain(value: Any) -> Any:
    """A JSON-ready scalar (numpy scalars become Python ones)."""
    return value.item() if isinstance(value, np.generic) else value


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A trained module restored from a stage folder.

    Attributes:
      module: the rebuilt Linen module.
      variables: `{"params", ...collections}` for `module.apply`, replicated over the mesh.
      spec: the stored `ModelSpec`.
      step: the training step of the checkpoint.
    """

    module: nn.Module
    variables: dict[str, Any]
    spec: ModelSpec
    step: int


def load_model(stage_dir: str | pathlib.Path, mesh: jax.sharding.Mesh | None = None) -> LoadedModel:
    """Restores the newest checkpoint's `model` item of a stage folder, and nothing else.

    Raises:
      MissingInputError: the folder has no checkpoint.
      UserError: the checkpoint cannot be read, or names an unknown module.
    """
    stage_dir = pathlib.Path(stage_dir).expanduser().absolute()
    mesh = sharding.make_mesh() if mesh is None else mesh
    if not (stage_dir / CHECKPOINT_DIR).is_dir():
        raise MissingInputError(
            f"{stage_dir / CHECKPOINT_DIR} does not exist; expected a stage folder written by "
            "train.py (run that stage first)"
        )
    checkpointer = Checkpointer(stage_dir / CHECKPOINT_DIR, read_only=True)
    try:
        step = checkpointer.latest_step()
        items = checkpointer.restore({"model": None}, sharding.replicated(mesh), step)
    finally:
        checkpointer.close()
    spec = ModelSpec.from_json(items["model_spec"])
    return LoadedModel(spec.build(), dict(items["model"]), spec, int(step))
