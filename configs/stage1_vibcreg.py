"""Stage 1 (tokenizer), ssl.method=vibcreg. Append `:tiny` for a seconds-long smoke run."""

from ssl_vqvae import config_lib


def get_config(arg: str | None = None):
    return config_lib.stage1("vibcreg", arg)
