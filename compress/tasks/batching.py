"""Running a `predict` function over tokenized features in padded batches.

`predict(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]` wraps either a PyTorch model or an ONNX
Runtime session, so both see the same int64 arrays and their outputs go through the same metric code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from compress.core.errors import ArtifactError

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

Predict = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def padded_batches(features, pad_token_id: int = 0, batch_size: int = 64) -> Iterator[tuple[list[int], dict]]:
    """(row lengths, {input name: int64 array padded to the batch's longest row}) per batch, in order.

    Padding goes on the right with attention_mask 0, so it changes no output at a real token."""
    columns = [c for c in MODEL_INPUTS if c in features.column_names]
    inputs = features.select_columns(columns)
    for lo in range(0, len(inputs), batch_size):
        rows = inputs[lo : lo + batch_size]
        lengths = [len(ids) for ids in rows["input_ids"]]
        batch = {}
        for c in columns:
            arr = np.full((len(lengths), max(lengths)), pad_token_id if c == "input_ids" else 0, dtype=np.int64)
            for i, seq in enumerate(rows[c]):
                arr[i, : len(seq)] = seq
            batch[c] = arr
        yield lengths, batch


def predict_features(
    predict: Predict, features, outputs: tuple[str, ...], pad_token_id: int = 0, batch_size: int = 64
) -> dict[str, list[np.ndarray]]:
    """{output name: one array per feature row, cut to the row's own length} (outputs with a sequence axis)."""
    out: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
    for lengths, batch in padded_batches(features, pad_token_id, batch_size):
        result = predict(batch)
        for name in outputs:
            if name not in result:
                raise ArtifactError(f"the model gives outputs {sorted(result)}, not {name!r}; is it for this task?")
            arr = np.asarray(result[name])
            out[name].extend(arr[i, :n] for i, n in enumerate(lengths))
    return out


def torch_predict(model, outputs: tuple[str, ...]) -> Predict:
    """`predict` of a transformers model: the named outputs as float32 arrays (eval mode, no gradients, on
    the model's device); inputs its forward does not take (DistilBERT's token_type_ids) are left out."""
    import inspect

    import torch

    device = next(model.parameters()).device
    accepted = set(inspect.signature(model.forward).parameters)
    model.eval()

    @torch.no_grad()
    def predict(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = model(**{k: torch.from_numpy(v).to(device) for k, v in batch.items() if k in accepted})
        return {name: result[name].float().cpu().numpy() for name in outputs}

    return predict
