"""Where trained FCNs are kept, and the records that make a folder reusable.

A classifier folder holds `settings.json` (what was asked: sizes, epochs, batch, seed, a digest
of the data, the recipe) and, once training finished, `summary.json`. A later request with the
same settings reuses the folder (resuming or restoring); one with other settings is refused.
The FID/IS classifier of a dataset lives in `<cache>/<Dataset>/epochs<E>`, shared by every
experiment on that dataset. In a multi-process run every process checks, process 0 writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Any

import numpy as np

from ssl_vqvae import processes

CACHE_ENV = "SSL_VQVAE_CACHE"
DEFAULT_CACHE_DIR = "~/.cache/ssl_vqvae/fcn"
SUMMARY_FILE = "summary.json"
SETTINGS_FILE = "settings.json"
DIGEST_CHARS = 16


def default_cache_dir() -> pathlib.Path:
    """Folder of cached FCNs: `$SSL_VQVAE_CACHE` if set, else `~/.cache/ssl_vqvae/fcn`."""
    return pathlib.Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()


def fcn_cache_dir(
    cache_dir: str | pathlib.Path | None, dataset_name: str, num_epochs: int
) -> pathlib.Path:
    """`<cache_dir>/<Dataset>/epochs<E>`, the folder of one cached FCN."""
    root = default_cache_dir() if cache_dir is None else pathlib.Path(cache_dir).expanduser()
    return root / dataset_name / f"epochs{num_epochs}"


def digest(*arrays: np.ndarray) -> str:
    """Short fingerprint of the data, so a folder is never reused for other series."""
    sha = hashlib.sha256()
    for array in arrays:
        sha.update(np.ascontiguousarray(array).tobytes())
    return sha.hexdigest()[:DIGEST_CHARS]


def claim(workdir: pathlib.Path, settings: dict[str, Any]) -> None:
    """Records the settings of the run in `workdir`, or checks them against the recorded ones."""
    path = workdir / SETTINGS_FILE
    if not path.is_file():
        processes.write_once(path, json.dumps(settings, indent=2) + "\n")
        return
    recorded = json.loads(path.read_text())
    mismatch = {
        key: (recorded.get(key), value)
        for key, value in settings.items()
        if recorded.get(key) != value
    }
    if mismatch:
        raise ValueError(
            f"{workdir} holds a classifier of other settings, {{name: (recorded, requested)}} = "
            f"{mismatch}; delete that folder or use another one"
        )


def read_summary(workdir: pathlib.Path) -> dict[str, Any] | None:
    """The summary of a finished run in `workdir`, or None while none finished there."""
    path = workdir / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_summary(workdir: pathlib.Path, summary: dict[str, Any]) -> None:
    processes.write_once(workdir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
