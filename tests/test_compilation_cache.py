"""The persistent compilation cache: a second process with the same programs compiles nothing."""

import json
import os
import subprocess
import sys

import pytest

from ssl_vqvae import compilation_cache

# Compiles a tiny tokenizer's init and forward pass and reports the cache events it saw.
_PROGRAM = """
import json, sys
import jax, jax.numpy as jnp
from jax._src import monitoring
from ssl_vqvae import compilation_cache, config_lib, stage1

events = {"hits": 0, "misses": 0}
def listen(event, **kwargs):
    if event.endswith("/cache_hits"):
        events["hits"] += 1
    elif event.endswith("/cache_misses"):
        events["misses"] += 1
monitoring.register_event_listener(listen)
print(json.dumps({"directory": str(compilation_cache.enable())}))
model = stage1.build_model(config_lib.load_config_file("stage1_vqvae:tiny"), 64, 1)
x = jnp.ones((2, 64, 1))
variables = jax.jit(lambda key: model.init(key, x, train=False))(jax.random.key(0))
jax.jit(lambda v: model.apply(v, x, train=False))(variables)
print(json.dumps(events))
"""


def _run(env: dict[str, str]) -> list[dict]:
    result = subprocess.run(
        [sys.executable, "-c", _PROGRAM], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


@pytest.fixture
def env(tmp_path):
    return {**os.environ, compilation_cache.ENV_VAR: str(tmp_path / "jax_cache")}


def test_second_process_loads_every_program_from_the_cache(env, tmp_path):
    (first_dir, first), (_, second) = _run(env), _run(env)
    assert first_dir["directory"] == str(tmp_path / "jax_cache")
    assert first["misses"] >= 2 and first["hits"] == 0
    assert second == {"hits": first["misses"], "misses": 0}
    assert any((tmp_path / "jax_cache").iterdir())


def test_environment_variable_turns_it_off(env):
    env[compilation_cache.ENV_VAR] = "off"
    (directory, events) = _run(env)
    assert directory["directory"] == "None"
    assert events == {"hits": 0, "misses": 0}


def test_default_directory_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compilation_cache.default_directory() == tmp_path / "ssl_vqvae" / "jax"
