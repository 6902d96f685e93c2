"""Stage 1 with the VIbCReg loss (SPEC §3.5): `stage1_default`, ssl.method=vibcreg."""

from __future__ import annotations

import ml_collections

from configs import stage1_default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`stage1_default.get_config(arg)` with ssl.method=vibcreg."""
    config = stage1_default.get_config(arg)
    config.ssl.method = "vibcreg"
    return config
