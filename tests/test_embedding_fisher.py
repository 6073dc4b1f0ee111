"""retrain-free on an embedding model: the Fisher information of a Gaussian likelihood on the embedding,
estimated with one random direction per example, is diag(J^T J) of the embedding's Jacobian in the masks."""

from __future__ import annotations

import torch
from test_embedding_task import tiny_encoder

from compress.pruning.retrain_free import StructureMasks, fisher_gradients
from helpers import tiny_tokenizer


def _exact_diag(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """diag(J^T J) for the head and FFN masks of one example, from the full Jacobian."""
    from compress.core.structure import geometry

    geo = geometry(model.config)
    with StructureMasks(model) as sm:

        def embedding(head, ffn):
            sm.head, sm.ffn = head, ffn
            return model(**batch)["sentence_embedding"][0]

        ones = torch.ones(1, geo.num_layers, geo.num_heads), torch.ones(1, geo.num_layers, geo.intermediate_size)
        jh, jf = torch.autograd.functional.jacobian(embedding, ones)
    return (jh**2).sum(0)[0], (jf**2).sum(0)[0]


def test_random_direction_fisher_estimates_jacobian_diagonal():
    torch.manual_seed(0)
    model = tiny_encoder("bert", "mean", normalize=True).eval()
    batch = dict(tiny_tokenizer()(["the movie was great fun"], return_tensors="pt"))
    exact_h, exact_f = _exact_diag(model, batch)
    repeated = [{k: v.repeat(128, 1) for k, v in batch.items()} for _ in range(4)]  # 512 random directions
    gh, gf = fisher_gradients(model, repeated, output="sentence_embedding", seed=0)
    est_h, est_f = (gh**2).mean(0), (gf**2).mean(0)
    assert exact_h.abs().sum() > 0
    # Monte Carlo over 512 directions (relative error ~ sqrt(2 / 512) = 6% per entry).
    assert torch.allclose(est_h.sum(), exact_h.sum(), rtol=0.15)
    assert torch.allclose(est_f.sum(), exact_f.sum(), rtol=0.15)
    rel = (est_h - exact_h).abs().sum() / exact_h.abs().sum()
    assert rel < 0.25, rel
    # The ranking that the budget search uses is the exact one's: the most important heads agree.
    assert set(est_h.flatten().topk(3).indices.tolist()) & set(exact_h.flatten().topk(3).indices.tolist())


def test_classifier_fisher_is_cross_entropy_at_predictions():
    """The classifier path is unchanged: without `output`, gradients are those of CE at the argmax."""
    from transformers import BertForSequenceClassification

    from helpers import tiny_config

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config("bert")).eval()
    batch = dict(tiny_tokenizer()(["a fine film", "dull"], padding=True, return_tensors="pt"))
    gh, _ = fisher_gradients(model, [batch])
    assert gh.shape[0] == 2 and gh.abs().sum() > 0
