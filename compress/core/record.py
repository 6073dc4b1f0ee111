"""The typed contract between the PyTorch side and the ONNX side: which heads and FFN dims each encoder
layer keeps. compression.json stores it as `layers: [{heads_kept: [...], ffn_dims_kept: [...]}]`;
in memory every module works with LayerKeep, converted once at the edge (as_layer_keeps)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from compress.core.errors import ArtifactError


@dataclass(frozen=True)
class LayerKeep:
    """Kept attention heads and FFN dims of one encoder layer (sorted indices into the dense layer)."""

    heads: tuple[int, ...]
    ffn_dims: tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, "heads", tuple(sorted(int(h) for h in self.heads)))
        object.__setattr__(self, "ffn_dims", tuple(sorted(int(j) for j in self.ffn_dims)))

    @classmethod
    def from_json(cls, data: Mapping) -> LayerKeep:
        try:
            return cls(data["heads_kept"], data["ffn_dims_kept"])
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(
                f"a layer entry of compression.json is malformed ({e!r}); expected "
                "{heads_kept: [int], ffn_dims_kept: [int]}"
            ) from e

    def to_json(self) -> dict:
        return {"heads_kept": list(self.heads), "ffn_dims_kept": list(self.ffn_dims)}


def as_layer_keeps(layers: Iterable[LayerKeep | Mapping]) -> list[LayerKeep]:
    """LayerKeeps from LayerKeeps or compression.json layer entries (dicts)."""
    return [k if isinstance(k, LayerKeep) else LayerKeep.from_json(k) for k in layers]


def layers_to_json(layers: Iterable[LayerKeep]) -> list[dict]:
    return [k.to_json() for k in layers]
