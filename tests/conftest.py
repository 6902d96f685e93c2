"""Test-session setup: expose 4 CPU devices so every mesh code path runs sharded."""

import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The CLIs' children start with huge pages already chosen, so they do not restart themselves
# (`ssl_vqvae.huge_pages`; tests/test_huge_pages.py runs the restart).
os.environ.setdefault("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
# One persistent compilation cache for the whole session, out of the user's home: the CLIs run
# as children and many tests build the same tiny programs again (new closures, same HLO), so
# each program compiles once per session. Tests of the cache itself set their own folder.
_SESSION_CACHE = None
if "SSL_VQVAE_JAX_CACHE" not in os.environ:
    _SESSION_CACHE = tempfile.mkdtemp(prefix="ssl_vqvae_test_jax_cache_")
    os.environ["SSL_VQVAE_JAX_CACHE"] = _SESSION_CACHE

import pytest  # noqa: E402

from ssl_vqvae import compilation_cache  # noqa: E402

compilation_cache.enable()


def pytest_sessionfinish(session, exitstatus):
    """Removes the session's compilation cache (when this session made it)."""
    if _SESSION_CACHE is not None:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_experiment(tmp_path_factory):
    """One tiny VIbCReg stage-1 + stage-2 run on bundled GunPoint, shared by every test module.

    Returns the workdir; tests must treat it as read-only (copy it to modify).
    """
    from ssl_vqvae import config_lib, stage1, stage2

    workdir = tmp_path_factory.mktemp("tiny_experiment")
    stage1.train_and_evaluate(config_lib.load_config_file("stage1_vibcreg:tiny"), str(workdir))
    stage2.train_and_evaluate(config_lib.load_config_file("stage2_maskgit:tiny"), str(workdir))
    return workdir
