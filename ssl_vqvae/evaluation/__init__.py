"""Evaluation: the FCN feature extractor / classifier, FID and IS, and tokenizer linear probes."""

from ssl_vqvae.evaluation.fcn import FCN
from ssl_vqvae.evaluation.probes import linear_probe_accuracies
from ssl_vqvae.evaluation.scores import frechet_distance, inception_score

__all__ = ["FCN", "frechet_distance", "inception_score", "linear_probe_accuracies"]
