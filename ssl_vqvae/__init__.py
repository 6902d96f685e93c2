"""ssl-vqvae: NC-VQVAE (self-supervised VQ tokenizer + MaskGIT prior) in JAX/Flax."""

__version__ = "0.1.0"
