"""Zoo: transformers 4.x models through torch's legacy TorchScript exporter (torch.onnx.export(dynamo=False)),
the way years of tutorials, sentence-transformers users and optimum < 2 exported them.
Run by make_zoo.sh in /tmp/zoo-legacy (torch 2.13.0 standing in for torch 2.3, transformers 4.46.3,
sentence-transformers 3.3.1)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from zoo_common import randomize, tiny_config, versions, write_meta

OUT = Path(sys.argv[1])
VERS = versions("torch", "transformers", "sentence_transformers", "onnx")
DYN = {0: "batch", 1: "sequence"}


class Positional(torch.nn.Module):
    """Positional tensors in a fixed order: what export scripts in the wild wrap models in."""

    def __init__(self, model, names, output):
        super().__init__()
        self.model, self.names, self.output = model, names, output

    def forward(self, *tensors):
        out = self.model(**dict(zip(self.names, tensors)))
        return out[self.output]


def sample(names, batch=2, length=11):
    g = torch.Generator().manual_seed(1)
    feeds = {
        "input_ids": torch.randint(4, 100, (batch, length), generator=g),
        "attention_mask": torch.ones(batch, length, dtype=torch.long),
        "token_type_ids": torch.zeros(batch, length, dtype=torch.long),
    }
    feeds["attention_mask"][1, 7:] = 0
    return tuple(feeds[n] for n in names)


def export(module, names, outputs, path: Path, opset: int, external: bool = False):
    args = sample(names)
    axes = {n: DYN for n in names}
    axes.update(
        {
            o: ({0: "batch", 1: "sequence"} if o in ("last_hidden_state", "token_embeddings") else {0: "batch"})
            for o in outputs
        }
    )
    with torch.no_grad():
        if not external:
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=names,
                output_names=outputs,
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
            return
        import onnx

        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp) / "m.onnx"
            torch.onnx.export(
                module,
                args,
                str(t),
                input_names=names,
                output_names=outputs,
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
            m = onnx.load(str(t))
        # What users get for models past 2 GB; forced here (size_threshold=0) on a tiny one.
        onnx.save(
            m,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
            size_threshold=0,
        )


def hf(model_type, head, attn="sdpa", seed=0):
    import transformers

    cfg = tiny_config(model_type)
    cls = getattr(transformers, {"model": "AutoModel", "cls": "AutoModelForSequenceClassification"}[head])
    model = cls.from_config(cfg, attn_implementation=attn)
    return randomize(model, seed)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    base = dict(
        exporter="torch.onnx.export (TorchScript, dynamo=False)",
        versions=VERS,
        fused=False,
        int8=None,
        note="torch 2.13.0 stands in for torch 2.3 (only CPU wheel on disk)",
    )
    entries = [
        # name, model_type, head, inputs, attn, opset, external
        ("bert_legacy_op14_tt", "bert", "cls", ["input_ids", "attention_mask", "token_type_ids"], "sdpa", 14, False),
        ("bert_legacy_op17_tt", "bert", "cls", ["input_ids", "attention_mask", "token_type_ids"], "sdpa", 17, False),
        ("bert_legacy_op14_nott", "bert", "model", ["input_ids", "attention_mask"], "sdpa", 14, False),
        ("bert_legacy_op17_nott_eager", "bert", "model", ["input_ids", "attention_mask"], "eager", 17, False),
        (
            "bert_legacy_op17_extdata",
            "bert",
            "model",
            ["input_ids", "attention_mask", "token_type_ids"],
            "sdpa",
            17,
            True,
        ),
        ("roberta_legacy_op14", "roberta", "model", ["input_ids", "attention_mask"], "sdpa", 14, False),
        ("distilbert_legacy_op17", "distilbert", "cls", ["input_ids", "attention_mask"], "sdpa", 17, False),
    ]
    for seed, (name, mt, head, names, attn, opset, external) in enumerate(entries):
        model = hf(mt, head, attn, seed)
        output = "logits" if head == "cls" else "last_hidden_state"
        path = OUT / f"{name}.onnx"
        export(Positional(model, names, output), names, [output], path, opset, external)
        cfg = model.config
        write_meta(
            path,
            **base,
            model_type=mt,
            attn_implementation=attn,
            external_data=external,
            num_heads=getattr(cfg, "num_attention_heads", getattr(cfg, "n_heads", None)),
            hidden=getattr(cfg, "hidden_size", getattr(cfg, "dim", None)),
            head=head,
        )

    # sentence-transformers: Transformer + mean Pooling, exported with the pooling inside the graph
    # (the 'sentence_embedding' output other projects ship), no classifier.
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as st_models

    with tempfile.TemporaryDirectory() as tmp:
        bert = hf("bert", "model", "sdpa", 11)
        bert.save_pretrained(tmp)
        _write_vocab(Path(tmp))
        word = st_models.Transformer(tmp, max_seq_length=64)
        word.auto_model = bert  # keep the randomized weights (the dir holds the same ones)
        pool = st_models.Pooling(word.get_word_embedding_dimension(), pooling_mode="mean")
        st = SentenceTransformer(modules=[word, pool], device="cpu").eval()

        class Pooled(torch.nn.Module):
            def __init__(self, st):
                super().__init__()
                self.st = st

            def forward(self, input_ids, attention_mask):
                return self.st({"input_ids": input_ids, "attention_mask": attention_mask})["sentence_embedding"]

        names = ["input_ids", "attention_mask"]
        path = OUT / "st_meanpool_legacy_op14.onnx"
        export(Pooled(st), names, ["sentence_embedding"], path, 14)
        write_meta(
            path,
            **base,
            model_type="bert",
            attn_implementation="sdpa",
            external_data=False,
            num_heads=4,
            hidden=64,
            head="sentence-transformers mean pooling",
        )


def _write_vocab(d: Path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]
    (d / "vocab.txt").write_text("\n".join(words) + "\n")
    from transformers import BertTokenizer

    BertTokenizer(str(d / "vocab.txt")).save_pretrained(str(d))


if __name__ == "__main__":
    main()
