"""Zoo: torch.onnx.export(dynamo=True) of transformers 5 models: the project's own .venv (torch 2.13,
transformers 5, onnxscript). Run by make_zoo.sh."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from zoo_common import randomize, tiny_config, versions, write_meta

OUT = Path(sys.argv[1])


class Positional(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def main():
    import transformers

    OUT.mkdir(parents=True, exist_ok=True)
    vers = versions("torch", "transformers", "onnxscript", "onnx")
    for seed, (name, mt, attn) in enumerate(
        [("bert_dynamo", "bert", "eager"), ("roberta_dynamo_sdpa", "roberta", "sdpa")], start=40
    ):
        model = randomize(transformers.AutoModel.from_config(tiny_config(mt), attn_implementation=attn), seed)
        ids = torch.randint(4, 100, (2, 11), generator=torch.Generator().manual_seed(1))
        mask = torch.ones(2, 11, dtype=torch.long)
        mask[1, 7:] = 0
        b, s = torch.export.Dim("batch"), torch.export.Dim("sequence", min=2, max=64)
        path = OUT / f"{name}.onnx"
        with torch.no_grad():
            prog = torch.onnx.export(
                Positional(model),
                (ids, mask),
                dynamo=True,
                input_names=["input_ids", "attention_mask"],
                output_names=["last_hidden_state"],
                dynamic_shapes=({0: b, 1: s}, {0: b, 1: s}),
                opset_version=18,
            )
        prog.save(str(path), external_data=False)
        write_meta(
            path,
            exporter="torch.onnx.export (dynamo=True)",
            versions=vers,
            fused=False,
            int8=None,
            model_type=mt,
            head="model",
            num_heads=4,
            hidden=model.config.hidden_size,
            external_data=False,
            attn_implementation=attn,
        )


if __name__ == "__main__":
    main()
