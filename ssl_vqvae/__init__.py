"""ssl-vqvae: NC-VQVAE (self-supervised VQ tokenizer + MaskGIT prior) in JAX/Flax.

Public API: `Experiment` (load a trained workdir; encode, represent, decode, sample),
`load_ucr` (datasets), and the config builders in `config_lib`.
"""

from ssl_vqvae.api import Experiment
from ssl_vqvae.data import UCRDataset, load_ucr

__version__ = "0.1.0"
__all__ = ["Experiment", "UCRDataset", "load_ucr", "__version__"]
