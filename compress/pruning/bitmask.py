"""SMP's storage claim made concrete: one frozen backbone, one small packed bit-mask file per task.

An SMP result differs from its pre-trained backbone only by (a) which encoder-linear weights are
zero and (b) the task head that trained. `save_bitmask` stores (a) as packed bits (1 bit per weight,
numpy.packbits) plus (b) in full, in one safetensors file; `apply_bitmask` rebuilds the exact
checkpoint from the backbone. It refuses a backbone whose kept weights differ from the ones the
mask was made on (the SMP premise: weights are frozen), checked through a checksum.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from compress.core.artifacts import atomic_file
from compress.core.errors import ArtifactError, InvalidConfigError
from compress.core.structure import encoder_linear_names


def _digest(tensors: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_bitmask(pruned, backbone, path: str | Path) -> dict:
    """pruned, backbone: loaded classifiers (same architecture). Writes `path`; returns sizes."""
    names = encoder_linear_names(pruned)
    p_state, b_state = pruned.state_dict(), backbone.state_dict()
    tensors, kept = {}, []
    for name in names:
        w, base = p_state[f"{name}.weight"], b_state[f"{name}.weight"]
        mask = w != 0
        if not torch.equal(w[mask], base[mask]):
            raise InvalidConfigError(f"{name}: kept weights differ from the backbone's; a bit-mask only fits SMP results "
                                     "(frozen weights) pruned from this backbone")
        tensors[f"mask.{name}"] = np.packbits(mask.numpy().astype(np.uint8).flatten())
        kept.append(base[mask])
    # Everything else that changed (the task head; with SMP the embeddings/LayerNorms stay) is stored in full.
    linear_weights = {f"{n}.weight" for n in names}
    for k, v in p_state.items():
        if k in linear_weights:
            continue
        if k not in b_state or b_state[k].shape != v.shape or not torch.equal(b_state[k], v):
            tensors[f"full.{k}"] = v.detach().contiguous().numpy()
    meta = {"format": "compress-bitmask-1", "shapes": json.dumps({n: list(p_state[f"{n}.weight"].shape) for n in names}),
            "kept_digest": _digest(kept), "config": json.dumps(pruned.config.to_dict())}
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return {"bytes": Path(path).stat().st_size, "linears": len(names)}


def apply_bitmask(backbone, path: str | Path):
    """Return the SMP checkpoint rebuilt from `backbone` (modified in place) and the mask file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as e:
        raise ArtifactError(f"cannot read bit-mask file {path} ({str(e).splitlines()[0]}); it may be truncated") from e
    if meta.get("format") != "compress-bitmask-1":
        raise ArtifactError(f"{path} is not a compress bit-mask file")
    shapes = json.loads(meta["shapes"])
    names = encoder_linear_names(backbone)
    if set(shapes) != set(names):
        raise InvalidConfigError(f"bit-mask {path} was made for a different architecture than this backbone")
    state = backbone.state_dict()
    kept = []
    with torch.no_grad():
        for name, shape in shapes.items():
            n = int(np.prod(shape))
            mask = torch.from_numpy(np.unpackbits(tensors[f"mask.{name}"])[:n].astype(bool).reshape(shape))
            w = state[f"{name}.weight"]
            if list(w.shape) != shape:
                raise InvalidConfigError(f"{name}: backbone shape {list(w.shape)} != mask shape {shape}")
            kept.append(w[mask].clone())
            w[~mask] = 0
        if _digest(kept) != meta["kept_digest"]:
            raise InvalidConfigError(f"this backbone's weights are not the ones {path} was made on; use the same pre-trained model")
        missing = []
        for key, arr in tensors.items():
            if key.startswith("full."):
                k = key[len("full."):]
                if k not in state or tuple(state[k].shape) != arr.shape:
                    missing.append(k)
                    continue
                state[k].copy_(torch.from_numpy(arr))
        if missing:
            raise InvalidConfigError(f"bit-mask holds task weights {missing[:3]} the backbone lacks; num_labels differs?")
    return backbone
