"""Stage 2 (MaskGIT prior) on the stage-1 tokenizer of the same workdir. `:tiny` shrinks it."""

from ssl_vqvae import config_lib


def get_config(arg: str | None = None):
    return config_lib.stage2(arg)
