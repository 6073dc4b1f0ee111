"""SMP's head-free mode: classify by reading the pre-trained MLM head at label words.

The input is wrapped in a template holding one [MASK] ("{text} It was {mask} ."); the class logits
are the MLM logits of the label words (e.g. "terrible", "great") at the mask position. Nothing
task-specific is trained: with SMP only the mask scores learn.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn as nn

from compress.core.errors import InvalidConfigError

DEFAULT_TEMPLATES = {False: "{text} It was {mask} .", True: "{text} ? {mask} , {text_pair}"}


class LabelWordClassifier(nn.Module):
    def __init__(self, mlm: nn.Module, label_word_ids: list[int], mask_token_id: int):
        super().__init__()
        self.mlm = mlm
        self.register_buffer("label_word_ids", torch.tensor(label_word_ids), persistent=False)
        self.mask_token_id = mask_token_id

    # The structure tables and the Pruner look at .config and .base_model, like any HF model.
    @property
    def config(self):
        return self.mlm.config

    @property
    def base_model(self):
        return self.mlm.base_model

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None):
        kw = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        logits = self.mlm(input_ids=input_ids, attention_mask=attention_mask, **kw).logits
        pos = (input_ids == self.mask_token_id).int().argmax(dim=1)  # first mask of each row
        at_mask = logits[torch.arange(len(pos), device=logits.device), pos]
        return SimpleNamespace(logits=at_mask[:, self.label_word_ids])


def label_word_ids(tokenizer, words: list[str]) -> list[int]:
    ids = []
    for w in words:
        toks = tokenizer.tokenize(w)
        if len(toks) != 1 or tokenizer.convert_tokens_to_ids(toks[0]) == tokenizer.unk_token_id:
            raise InvalidConfigError(
                f"label word {w!r} is not a single token of this vocabulary ({toks}); pick another word"
            )
        ids.append(tokenizer.convert_tokens_to_ids(toks[0]))
    return ids


def load_mlm(name: str):
    """AutoModelForMaskedLM, refusing a model whose checkpoint has no MLM head (it would be random)."""
    from transformers import AutoModelForMaskedLM

    try:
        model, info = AutoModelForMaskedLM.from_pretrained(name, output_loading_info=True)
    except Exception as e:
        raise InvalidConfigError(
            f"cannot load {name} as a masked language model ({str(e).splitlines()[0][:150]})"
        ) from e
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("position_ids")]
    if missing:
        raise InvalidConfigError(
            f"{name} has no masked-language-model head ({len(missing)} head weights missing, e.g. {sorted(missing)[0]}); "
            "--label-words needs a model saved with its MLM head, or drop --label-words to train a classifier head"
        )
    return model
