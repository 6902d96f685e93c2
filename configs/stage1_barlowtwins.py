"""Stage 1 with the Barlow Twins loss (SPEC §3.4): `stage1_default`, ssl.method=barlowtwins."""

from __future__ import annotations

import ml_collections

from configs import stage1_default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`stage1_default.get_config(arg)` with ssl.method=barlowtwins."""
    config = stage1_default.get_config(arg)
    config.ssl.method = "barlowtwins"
    return config
