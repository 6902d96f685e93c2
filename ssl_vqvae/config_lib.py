"""What the config files share that is not a field default: choices, `flatten`, the loader.

Every field and its default lives in `configs/` (`stage1_default.py`, `stage2_maskgit.py`);
`load_config_file` loads one of those files as `--config=<file>[:<argument>]` does.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from collections.abc import Mapping
from typing import Any

import ml_collections

from ssl_vqvae.errors import MissingInputError, UserError, did_you_mean

SSL_METHODS = ("none", "barlowtwins", "vibcreg")
PRIOR_VARIANTS = ("auto", "token_index", "full_embedding", "two_branch")
SPLITS = ("none", "lfhf")
# Branch architectures of an lfhf tokenizer (ssl_vqvae/branch.py).
CODECS = ("ncvqvae", "timevqvae")
MASKING_MODES = ("thesis", "standard")
CONFIG_ARGUMENTS = ("tiny",)  # what may follow the config file name: `configs/x.py:tiny`
# ssl.method -> the file in configs/ that selects it
STAGE1_CONFIGS = {
    "none": "stage1_vqvae",
    "barlowtwins": "stage1_barlowtwins",
    "vibcreg": "stage1_vibcreg",
}
# The repository's configs/ folder, where bare names such as "stage1_vibcreg" are looked up.
REPO_CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"


def flatten(config: ml_collections.ConfigDict | Mapping[str, Any], prefix: str = "") -> dict:
    """`{"a.b": leaf}` for every leaf of a (nested) config or of its JSON form."""
    leaves = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, (ml_collections.ConfigDict, Mapping)):
            leaves.update(flatten(value, f"{path}."))
        else:
            leaves[path] = value
    return leaves


def load_config_file(spec: str, *, bare_names: bool = True) -> ml_collections.ConfigDict:
    """`get_config(<argument>)` of the config file `spec` = `<file>[:<argument>]`.

    The same config as `--config=<spec>` gives. `<file>` is a path, relative to the working
    directory or absolute, or (if `bare_names`) a name without folder and `.py` such as
    `stage1_vibcreg`, looked up in the repository's configs/. The folder holding the file's
    `configs` package (else the repository's) goes on `sys.path`, so that config files can
    `from configs import ...` from any working directory.

    Raises:
      MissingInputError: no such file.
      UserError: the file defines no get_config(); the argument is unknown (configs/arguments.py).
    """
    path_text, colon, argument = spec.partition(":")
    path = _config_path(path_text, bare_names)
    _make_configs_importable(path)
    module_spec = importlib.util.spec_from_file_location(f"_config_file_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise UserError(f"{path_text} defines no get_config() function")
    return get_config(argument) if colon else get_config()


def _config_path(text: str, bare_names: bool) -> pathlib.Path:
    """The file that `text` names; a listing of the config files beside it if there is none."""
    bare = bare_names and text != "" and pathlib.Path(text).name == text and "." not in text
    path = REPO_CONFIGS / f"{text}.py" if bare else pathlib.Path(text)
    if path.is_file():
        return path
    folder = path.parent
    files = sorted(folder.glob("*.py")) if folder.is_dir() else []
    known = [p.stem if bare else str(p) for p in files if "def get_config" in p.read_text()]
    listing = f" (in {folder}: {', '.join(known)})" if known else ""
    raise MissingInputError(
        f"no config file {text}; expected a Python file with get_config(){listing}"
        f"{did_you_mean(text, known)}"
    )


def _make_configs_importable(path: pathlib.Path) -> None:
    """Puts the folder above the `configs` package of `path` (else the repo's) on sys.path."""
    folder = path.resolve().parent
    in_package = folder.name == "configs" and (folder / "__init__.py").is_file()
    root = str(folder.parent if in_package else REPO_CONFIGS.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
