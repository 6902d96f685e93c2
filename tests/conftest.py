"""Test-session setup: expose 4 CPU devices so every mesh code path runs sharded."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The CLIs run in-process or as children here: keep their compilation cache out of the user's
# home (tests that exercise the cache set their own folder).
os.environ.setdefault("SSL_VQVAE_JAX_CACHE", "off")

import pytest  # noqa: E402


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
