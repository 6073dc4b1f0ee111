"""Quality of a sentence encoder, measured on texts its distillation corpus never contains.

- retrieval: every question of the held-out SQuAD articles looks for its paragraph among all paragraphs
  of those articles by cosine similarity (recall@1, recall@10, MRR@10): what a retrieval encoder is for;
- pair similarity on MRPC dev: ROC-AUC and best-threshold F1 of the cosine similarity of each pair;
- fidelity to a teacher: mean cosine between student and teacher embeddings of SST-2 dev sentences and
  held-out SQuAD questions, and the Spearman correlation of their pairwise similarities.

`embed(texts) -> (N, D) float array` is the caller's, so a PyTorch model and an ONNX graph go through
the same code and give the same numbers for the same embeddings. Metrics are fractions (0..1).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from compress.core.errors import DataError, InvalidConfigError
from compress.tasks.embedding_data import mrpc_dev_pairs, retrieval_set, sst2_dev_sentences

Embed = Callable[[list[str]], np.ndarray]

RETRIEVAL_KS = (1, 10)
MRR_AT = 10


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def retrieval_metrics(queries: np.ndarray, documents: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """recall@k and MRR@10 of each query's gold document among all documents, by cosine similarity.
    A document tied with the gold one does not push it down."""
    sims = unit_rows(queries) @ unit_rows(documents).T
    gold = np.asarray(gold)
    gold_sims = sims[np.arange(len(gold)), gold]
    rank = (sims > gold_sims[:, None]).sum(axis=1) + 1
    out = {f"recall@{k}": float((rank <= k).mean()) for k in RETRIEVAL_KS}
    out[f"mrr@{MRR_AT}"] = float(np.where(rank <= MRR_AT, 1.0 / rank, 0.0).mean())
    return out


def pair_metrics(similarities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """ROC-AUC of the similarity as a score for label 1, and the F1 at the best threshold."""
    from sklearn.metrics import precision_recall_curve, roc_auc_score

    labels = np.asarray(labels)
    if len(np.unique(labels)) != 2:
        raise DataError(f"pair similarity needs pairs of both labels 0 and 1; these have {sorted(set(labels))}")
    precision, recall, _ = precision_recall_curve(labels, similarities)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return {"roc_auc": float(roc_auc_score(labels, similarities)), "f1": float(f1.max())}


def fidelity_metrics(student: np.ndarray, teacher: np.ndarray) -> dict[str, float]:
    """Mean cosine of each student embedding with the teacher's of the same text, and the Spearman
    correlation of the two models' similarities over all pairs of texts (~6M pairs for the ~3,400 default
    texts: a few seconds; similarities in float32 to halve the memory)."""
    from scipy.stats import spearmanr

    if student.shape != teacher.shape:
        raise InvalidConfigError(
            f"student embeddings are {student.shape[-1]}-dimensional, the teacher's {teacher.shape[-1]}; "
            "fidelity compares the embeddings of the same space: use the teacher the student was distilled from"
        )
    s, t = unit_rows(student), unit_rows(teacher)
    cosine = float((s * t).sum(axis=1).mean())
    s, t = s.astype(np.float32), t.astype(np.float32)
    upper = np.triu_indices(len(s), k=1)
    return {"cosine": cosine, "spearman": float(spearmanr((s @ s.T)[upper], (t @ t.T)[upper]).statistic)}


def _embed(embed: Embed, texts: list[str]) -> np.ndarray:
    out = np.asarray(embed(list(texts)), dtype=np.float32)
    if out.ndim != 2 or len(out) != len(texts):
        raise ValueError(f"embed() returned an array of shape {out.shape} for {len(texts)} texts; expected (N, D)")
    return out


def evaluate(
    embed: Embed, data_dir=None, max_samples: int | None = None, teacher_embed: Embed | None = None
) -> dict[str, float]:
    """All metrics of `embed` (fidelity only with `teacher_embed`), flat: retrieval_recall@1,
    retrieval_recall@10, retrieval_mrr@10, mrpc_roc_auc, mrpc_f1, fidelity_cosine, fidelity_spearman.

    `max_samples` caps the questions, the MRPC pairs and the SST-2 sentences (each spread evenly over its
    set); the retrieval candidates stay all paragraphs of the held-out articles."""
    if max_samples is not None and max_samples < 1:
        raise DataError(f"--max-eval-samples {max_samples} must be >= 1")
    retrieval = retrieval_set(data_dir, max_samples)
    questions = _embed(embed, retrieval.questions)
    metrics = {
        f"retrieval_{k}": v
        for k, v in retrieval_metrics(questions, _embed(embed, retrieval.paragraphs), retrieval.gold).items()
    }

    first, second, labels = mrpc_dev_pairs(data_dir, max_samples)
    pairs = _embed(embed, first + second)
    similarities = (unit_rows(pairs[: len(first)]) * unit_rows(pairs[len(first) :])).sum(axis=1)
    metrics.update({f"mrpc_{k}": v for k, v in pair_metrics(similarities, labels).items()})

    if teacher_embed is not None:
        sentences = sst2_dev_sentences(data_dir, max_samples)
        student = np.concatenate([_embed(embed, sentences), questions])
        teacher = _embed(teacher_embed, sentences + retrieval.questions)
        metrics.update({f"fidelity_{k}": v for k, v in fidelity_metrics(student, teacher).items()})
    return metrics
