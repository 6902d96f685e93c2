"""Stage 1, the plain VQ-VAE baseline (SPEC §2.6): `stage1_default`, ssl.method=none."""

from __future__ import annotations

import ml_collections

from configs import stage1_default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`stage1_default.get_config(arg)` with ssl.method=none."""
    config = stage1_default.get_config(arg)
    config.ssl.method = "none"
    return config
