"""PyTorch compaction (transformers 5 has no prune_heads): uneven heads, a layer without heads, a layer
without FFN dims, for BERT, RoBERTa and DistilBERT; the compact model predicts what the masked one does."""

from __future__ import annotations

import copy

import pytest
import torch

from compress.core.errors import ArtifactError
from compress.core.structure import ROLES, encoder_layers, layer_linears, spec_for
from compress.pruning.compact import compact_model, linear_params, load_compact
from helpers import kill_structure, save_checkpoint, tiny_model

DEAD_HEADS = {0: [1, 3], 1: [0, 1, 2, 3], 2: [2]}
DEAD_DIMS = {0: list(range(0, 64, 3)), 1: list(range(10)), 2: list(range(64))}


def outputs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 50, (3, 13), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    return out.logits, out.hidden_states


def assert_same_predictions(a, b, atol=1e-5):
    logits_a, hidden_a = outputs(a)
    logits_b, hidden_b = outputs(b)
    torch.testing.assert_close(logits_a, logits_b, atol=atol, rtol=0)
    for x, y in zip(hidden_a, hidden_b, strict=True):
        torch.testing.assert_close(x, y, atol=atol, rtol=0)


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_compact_matches_masked_model(family):
    masked = kill_structure(tiny_model(family, layers=3), DEAD_HEADS, DEAD_DIMS)
    compact = compact_model(copy.deepcopy(masked))
    assert_same_predictions(masked, compact)
    # layer 0 keeps heads 0 and 2 (16 of 32 columns) and 42 FFN dims; layer 2 has no FFN dim left
    spec = spec_for(compact.config)  # (layer_linears needs every layer's Q/K/V; layer 1 has none left)
    lin = {role: encoder_layers(compact)[0].get_submodule(spec.path(role)) for role in ROLES}
    assert lin["query"].out_features == 16 and lin["attn_out"].in_features == 16
    assert lin["ffn_in"].out_features == 42 and lin["ffn_out"].in_features == 42
    layer2 = encoder_layers(compact)[2]
    ffn_out = layer2.ffn.lin2 if family == "distilbert" else layer2.output.dense
    assert ffn_out.in_features == 0
    attn0 = (
        encoder_layers(compact)[0].attention if family == "distilbert" else encoder_layers(compact)[0].attention.self
    )
    assert getattr(attn0, "n_heads", getattr(attn0, "num_attention_heads", None)) == 2
    # per layer: 4*H*d per head kept + biases, 2*H per FFN dim + bias
    hidden, d = 32, 8
    expected = sum(
        4 * hidden * d * h + 3 * d * h + hidden + 2 * hidden * f + f + hidden for h, f in ((2, 42), (0, 54), (3, 0))
    )
    assert linear_params(compact) == expected < linear_params(masked)
    assert compact.compress_layers[1]["heads_kept"] == []


def test_value_only_dead_head_is_folded_then_removed():
    masked = tiny_model("bert")
    value = layer_linears(masked)[0]["value"]
    with torch.no_grad():  # head 1 of layer 0 has no V weights: it outputs the constant b_v, folded into b_O
        value.weight[8:16] = 0
        value.bias[8:16] = 0.5
    compact = compact_model(copy.deepcopy(masked))
    assert compact.compress_layers[0]["heads_kept"] == [0, 2, 3]
    assert_same_predictions(masked, compact)


def test_load_compact_from_checkpoint_with_compression_json(tmp_path):
    from test_export import write_compression_json

    masked = kill_structure(tiny_model("bert", layers=3), DEAD_HEADS, DEAD_DIMS)
    ck = save_checkpoint(masked, tmp_path / "ck")
    write_compression_json(ck, masked)
    compact = load_compact(ck)
    assert type(compact).__name__ == "BertForSequenceClassification"
    assert [len(k["heads_kept"]) for k in compact.compress_layers] == [2, 0, 3]
    assert_same_predictions(masked, compact)

    live = [{"heads_kept": [0, 1, 2, 3], "ffn_dims_kept": list(range(64))}] * 3  # json says: nothing pruned
    write_compression_json(ck, masked, layers=live)
    assert [len(k["heads_kept"]) for k in load_compact(ck).compress_layers] == [4, 4, 4]

    wrong = [{"heads_kept": [0], "ffn_dims_kept": list(range(64))}] * 3  # prunes heads that are alive
    write_compression_json(ck, masked, layers=wrong)
    with pytest.raises(ArtifactError, match="not zero"):
        load_compact(ck)
