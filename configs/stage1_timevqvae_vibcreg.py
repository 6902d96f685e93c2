"""Stage 1: the current TimeVQVAE two-branch tokenizer (`stage1_timevqvae`), VIbCReg SSL.

One projector sees the pooled codes of both bands (see ssl_vqvae/two_branch.py for why).
"""

from __future__ import annotations

import ml_collections

from configs import stage1_timevqvae


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`stage1_timevqvae.get_config(arg)` with ssl.method=vibcreg."""
    config = stage1_timevqvae.get_config(arg)
    config.ssl.method = "vibcreg"
    return config
