"""Copy `timevqvae` 1.0.1 (PyTorch) weights and state into our Flax variables.

Tokenizer mappings (the release's `VQVAE` and its parts onto `release_codec` /
`projected_quantizer`). A torch module name maps to a Flax path by attaching each run of
`nn.Sequential` indices to the name before it, with "_" (`encoder.3.convs.1` ->
`encoder_3/convs_1`, `decoder.8.0` -> `decoder_8_0`); a codebook (`..._codebook`) becomes
the quantiser's `vq` submodule in the `'vq'` collection. Parameter layouts: see
`ssl_vqvae.weight_norm`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

Variables = dict[str, Any]


def flax_path(torch_name: str) -> tuple[str, ...]:
    """`encoder_l.encoder.3.convs.1` -> (`encoder_l`, `encoder_3`, `convs_1`)."""
    path: list[str] = []
    for part in torch_name.split("."):
        if part.isdigit():
            path[-1] = f"{path[-1]}_{part}"
        else:
            path.append("vq" if part == "_codebook" else part)
    return tuple(path)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def _leaf_variables(module: torch.nn.Module) -> dict[str, dict[str, np.ndarray]] | None:
    """{collection: {name: array}} of one torch leaf module, None for modules without state."""
    kind = type(module).__name__
    weight_normed = hasattr(module, "weight_g")
    if kind == "Conv2d":
        if weight_normed:  # [out, in/g, kh, kw] -> [kh, kw, in/g, out]
            params = {
                "weight_v": _np(module.weight_v).transpose(2, 3, 1, 0),
                "weight_g": _np(module.weight_g).reshape(-1),
            }
        else:
            params = {"kernel": _np(module.weight).transpose(2, 3, 1, 0)}
        return {"params": {**params, "bias": _np(module.bias)}}
    if kind == "ConvTranspose2d":
        if weight_normed:  # [in, out/g, kh, kw] -> [kh, kw, in, out/g]
            params = {
                "weight_v": _np(module.weight_v).transpose(2, 3, 0, 1),
                "weight_g": _np(module.weight_g).reshape(-1),
            }
        else:
            params = {"kernel": _np(module.weight).transpose(2, 3, 0, 1)}
        return {"params": {**params, "bias": _np(module.bias)}}
    if kind == "BatchNorm2d":
        return {
            "params": {"scale": _np(module.weight), "bias": _np(module.bias)},
            "batch_stats": {"mean": _np(module.running_mean), "var": _np(module.running_var)},
        }
    if kind == "SnakeActivation":
        return {"params": {"a": _np(module.a).reshape(-1)}}
    if kind == "Linear" and not weight_normed:
        return {"params": {"kernel": _np(module.weight).T, "bias": _np(module.bias)}}
    if kind == "EuclideanCodebook":
        return {"vq": codebook_state(module)}
    return None


def codebook_state(codebook: torch.nn.Module, kmeans_seed: int = 0) -> dict[str, np.ndarray]:
    """A release `EuclideanCodebook`'s buffers as `KMeansVectorQuantizer`'s `'vq'` state."""
    return {
        "codebook": _np(codebook.embed),
        "embed_sum": _np(codebook.embed_avg),
        "cluster_size": _np(codebook.cluster_size),
        "initted": np.asarray(bool(codebook.initted.item())),
        "kmeans_seed": np.asarray(kmeans_seed, np.uint32),
    }


def _insert(tree: dict, path: tuple[str, ...], leaves: dict[str, np.ndarray]) -> None:
    for key in path:
        tree = tree.setdefault(key, {})
    if tree:
        raise ValueError(f"two torch modules map to {'/'.join(path)}")
    tree.update(leaves)


def flax_variables(module: torch.nn.Module) -> Variables:
    """Every parameter, BatchNorm statistic and codebook state under `module`, as Flax
    variables `{"params": ..., "batch_stats": ..., "vq": ...}` rooted at `module`."""
    variables: Variables = {}
    for name, child in module.named_modules():
        leaves = _leaf_variables(child)
        if leaves is None:
            continue
        for collection, values in leaves.items():
            _insert(variables.setdefault(collection, {}), flax_path(name) if name else (), values)
    return variables


def disable_dropout(module: torch.nn.Module) -> None:
    """Sets every `nn.Dropout` under `module` to p = 0 (train-mode parity)."""
    for child in module.modules():
        if isinstance(child, torch.nn.Dropout):
            child.p = 0.0
