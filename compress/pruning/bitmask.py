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
from compress.core.sparsity import kept_structure
from compress.core.structure import encoder_linear_names, geometry


def _digest(tensors: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def _structure_masks(model, kept: list[dict]) -> dict[str, torch.Tensor]:
    """Per encoder linear, the boolean weight mask implied by kept heads (Q/K/V rows, O columns) and kept FFN
    dims (W1 rows, W2 columns)."""
    geo = geometry(model.config)
    d = geo.head_size
    out = {}
    for name, (i, role) in encoder_linear_names(model).items():
        heads = torch.zeros(geo.num_heads, dtype=torch.bool)
        heads[kept[i]["heads_kept"]] = True
        dims = torch.zeros(geo.intermediate_size, dtype=torch.bool)
        dims[kept[i]["ffn_dims_kept"]] = True
        unit = heads.repeat_interleave(d) if role in ("query", "key", "value", "attn_out") else dims
        shape = model.get_submodule(name).weight.shape
        out[name] = (
            unit[:, None].expand(shape) if role in ("query", "key", "value", "ffn_in") else unit[None, :].expand(shape)
        )
    return out


def save_bitmask(pruned, backbone, path: str | Path) -> dict:
    """pruned, backbone: loaded classifiers (same architecture). Writes `path`; returns sizes.

    A result whose zeros are exactly whole heads and FFN dims (smp-struct) is stored as one bit per head
    and per FFN dim ("structured", ~1 KB for MiniLM-L6); any other zero pattern as one bit per weight."""
    names = encoder_linear_names(pruned)
    p_state, b_state = pruned.state_dict(), backbone.state_dict()
    layers = kept_structure(pruned)
    smask = _structure_masks(pruned, layers)
    structured = all(torch.equal(p_state[f"{n}.weight"], b_state[f"{n}.weight"] * smask[n]) for n in names)
    tensors, kept = {}, []
    for name in names:
        w, base = p_state[f"{name}.weight"], b_state[f"{name}.weight"]
        mask = smask[name] if structured else w != 0
        if not torch.equal(w[mask], base[mask]):
            raise InvalidConfigError(
                f"{name}: kept weights differ from the backbone's; a bit-mask only fits SMP results "
                "(frozen weights) pruned from this backbone"
            )
        if not structured:
            tensors[f"mask.{name}"] = np.packbits(mask.numpy().astype(np.uint8).flatten())
        kept.append(base[mask])
    if structured:
        geo = geometry(pruned.config)
        for i, k in enumerate(layers):
            h = np.zeros(geo.num_heads, dtype=np.uint8)
            h[k["heads_kept"]] = 1
            f = np.zeros(geo.intermediate_size, dtype=np.uint8)
            f[k["ffn_dims_kept"]] = 1
            tensors[f"heads.{i}"], tensors[f"ffn_dims.{i}"] = np.packbits(h), np.packbits(f)
    # Everything else that changed (the task head; with SMP the embeddings/LayerNorms stay) is stored in full.
    linear_weights = {f"{n}.weight" for n in names}
    for k, v in p_state.items():
        if k in linear_weights:
            continue
        if k not in b_state or b_state[k].shape != v.shape or not torch.equal(b_state[k], v):
            tensors[f"full.{k}"] = v.detach().contiguous().numpy()
    meta = {
        "format": "compress-bitmask-1",
        "layout": "structured" if structured else "weights",
        "shapes": json.dumps({n: list(p_state[f"{n}.weight"].shape) for n in names}),
        "kept_digest": _digest(kept),
        "config": json.dumps(pruned.config.to_dict()),
    }
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return {"bytes": Path(path).stat().st_size, "linears": len(names), "layout": meta["layout"]}


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
    smask = None
    if meta.get("layout") == "structured":
        geo = geometry(backbone.config)
        layers = [
            {
                "heads_kept": np.flatnonzero(np.unpackbits(tensors[f"heads.{i}"])[: geo.num_heads]).tolist(),
                "ffn_dims_kept": np.flatnonzero(
                    np.unpackbits(tensors[f"ffn_dims.{i}"])[: geo.intermediate_size]
                ).tolist(),
            }
            for i in range(geo.num_layers)
        ]
        smask = _structure_masks(backbone, layers)
    with torch.no_grad():
        for name, shape in shapes.items():
            n = int(np.prod(shape))
            if smask is not None:
                mask = smask[name]
            else:
                mask = torch.from_numpy(np.unpackbits(tensors[f"mask.{name}"])[:n].astype(bool).reshape(shape))
            w = state[f"{name}.weight"]
            if list(w.shape) != shape:
                raise InvalidConfigError(f"{name}: backbone shape {list(w.shape)} != mask shape {shape}")
            kept.append(w[mask].clone())
            w[~mask] = 0
        if _digest(kept) != meta["kept_digest"]:
            raise InvalidConfigError(
                f"this backbone's weights are not the ones {path} was made on; use the same pre-trained model"
            )
        missing = []
        for key, arr in tensors.items():
            if key.startswith("full."):
                k = key[len("full.") :]
                if k not in state or tuple(state[k].shape) != arr.shape:
                    missing.append(k)
                    continue
                state[k].copy_(torch.from_numpy(arr))
        if missing:
            raise InvalidConfigError(
                f"bit-mask holds task weights {missing[:3]} the backbone lacks; num_labels differs?"
            )
    return backbone
