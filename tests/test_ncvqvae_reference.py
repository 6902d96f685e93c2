"""`benchmarks.ncvqvae_reference`: the reference's side of a row runs its own code unchanged.

Needs the `peers` extra (torch) and an extracted checkout of the reference at $NCVQVAE_REF
(default /tmp/ncvqvae_ref). Only the reference side runs here (no JAX compile): the stage-2
token-index step (16 series a batch, to be quick), which also builds, runs and reloads a stage-1
tokenizer through its own loader.
"""

import os
import pathlib
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs the peers extra: make peers")

ROOT = pathlib.Path(__file__).resolve().parents[1]
REF = pathlib.Path(os.environ.get("NCVQVAE_REF", "/tmp/ncvqvae_ref")).resolve()
sys.path.insert(0, str(ROOT / "benchmarks"))

import ncvqvae_reference as harness  # noqa: E402

from ssl_vqvae import data  # noqa: E402

STAGE2_TOKEN_INDEX_PARAMS = 1_108_621  # the prior's trainable parameters on GunPoint, both sides


@pytest.fixture(scope="module")
def ref():
    if not (REF / "experiments" / "exp_siam_vqvae.py").is_file():
        pytest.skip(f"needs an NC-VQVAE checkout at {REF} (set NCVQVAE_REF)")
    return harness.import_reference(REF)


def test_stand_ins_leave_sys_modules_as_they_were(ref):
    assert isinstance(ref["experiments.exp_vqvae"].wandb, harness.StandInModule)
    for name in (*harness.ALWAYS_STANDING_IN, *harness.STANDING_IN_WHERE_MISSING):
        assert not isinstance(sys.modules.get(name), harness.StandInModule), name
    assert str(REF) not in sys.path


@pytest.fixture
def one_torch_thread():
    """One torch thread: on a busy machine a second one stalls more than it helps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_stage2_token_index_step(ref, one_torch_thread):
    dataset = data.load_ucr("GunPoint")
    batches = harness.host_batches("stage2", "none", dataset)
    assert len(batches[0]["x"]) == harness.ROWS["stage2_token_index"][2] == 160
    small = [{key: value[:16] for key, value in batch.items()} for batch in batches[:2]]
    side = harness.reference_side(ref, REF, "stage2_token_index", dataset, small)
    assert side.params == STAGE2_TOKEN_INDEX_PARAMS
    loss = side.call()  # its training_step, zero_grad, backward, AdamW step
    side.check()
    assert loss.shape == () and np.isfinite(float(loss))


def test_rows_select_by_pattern():
    args = harness.parse_args(["--ref_repo=.", "--rows=stage2_*,sampling_*"])
    assert args.rows == ["stage2_token_index", "stage2_full_embedding", "sampling_128_cfg"]
    with pytest.raises(SystemExit):
        harness.parse_args(["--ref_repo=.", "--rows=stage3_*"])
