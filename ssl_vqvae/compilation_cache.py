"""Persistent XLA compilation cache, on by default for the command-line tools.

Compiling the train steps, the generator and the evaluation FCN costs seconds to minutes on a
small CPU; with the cache a second run of the same configuration (a resume, a rerun, the next
seed of a grid) loads the compiled programs instead. The cache lives in the user cache folder
(`$XDG_CACHE_HOME/ssl_vqvae/jax`, else `~/.cache/ssl_vqvae/jax`); `SSL_VQVAE_JAX_CACHE=<dir>`
moves it and `SSL_VQVAE_JAX_CACHE=off` (or `--nocompilation_cache`) turns it off. JAX's own
`JAX_COMPILATION_CACHE_DIR`, when set, is respected.
"""

from __future__ import annotations

import os
import pathlib

import jax

ENV_VAR = "SSL_VQVAE_JAX_CACHE"
OFF_VALUES = ("", "0", "off", "false", "no")


def default_directory() -> pathlib.Path:
    """`$XDG_CACHE_HOME/ssl_vqvae/jax`, else `~/.cache/ssl_vqvae/jax`."""
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "ssl_vqvae" / "jax"


def enable(directory: str | pathlib.Path | None = None) -> pathlib.Path | None:
    """Points JAX's persistent compilation cache at `directory` (default: see module doc).

    Every compiled program is cached, however quick its compile (small programs add up on a
    busy CPU). Returns the folder in use, or None when `SSL_VQVAE_JAX_CACHE` turns it off or
    the folder cannot be created.
    """
    setting = os.environ.get(ENV_VAR)
    if directory is None and setting is not None:
        if setting.strip().lower() in OFF_VALUES:
            return None
        directory = setting
    directory = directory or os.environ.get("JAX_COMPILATION_CACHE_DIR")
    directory = pathlib.Path(directory or default_directory()).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a read-only home must not stop a run: compile without the cache
        print(f"warning: compilation cache disabled ({directory}: {error.strerror})")
        return None
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory
