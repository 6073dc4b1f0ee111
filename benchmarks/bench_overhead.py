"""Step time of `prune --method hybrid` with a teacher against dense `finetune`, same batch, real model.

Both loops run the same optimizer on the same SST-2 batches (batch 32, max length 64), interleaved
step by step so machine noise hits both alike. The hybrid run uses what `compress prune` uses: the
Pruner's parametrized masks, the regulariser, and distillation targets precomputed once per dataset
(compress.training.add_teacher_logits); that pre-pass is timed too and reported amortised over one
epoch. Run: python benchmarks/bench_overhead.py [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from compress.core.config import DistillConfig, PruneConfig  # noqa: E402
from compress.core.models import load_classifier, load_tokenizer  # noqa: E402
from compress.pruning.methods import get_method  # noqa: E402
from compress.pruning.pruner import Pruner  # noqa: E402
from compress.training.data import load_task_data  # noqa: E402
from compress.training.loop import StudentWithLoss, add_teacher_logits  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="../shared/models/minilm-l6-sst2")
    ap.add_argument("--data-dir", default=os.environ.get("COMPRESS_DATA_DIR", "../shared/data"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    tok = load_tokenizer(a.model)
    td = load_task_data("sst2", tok, data_dir=a.data_dir, max_length=64, splits=("train",))
    from transformers import DataCollatorWithPadding

    coll = DataCollatorWithPadding(tok)
    n = 32 * a.steps
    subset = td.train.shuffle(seed=0).select(range(n))
    teacher = load_classifier(a.model)
    t0 = time.perf_counter()
    with_logits = add_teacher_logits(teacher, subset, tok, progress=False)
    prepass_per_example = (time.perf_counter() - t0) / n

    dense = StudentWithLoss(load_classifier(a.model), None, None, DistillConfig()).train()
    student = load_classifier(a.model)
    pruner = Pruner(student, get_method("hybrid"), PruneConfig(method="hybrid", lambda_reg=1.0))
    pruner.set_step(50, 100, 10)  # mid-schedule: masks, threshold and regulariser all active
    hybrid = StudentWithLoss(student, pruner, teacher, DistillConfig(teacher=a.model)).train()
    opts = {id(m): torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5) for m in (dense, hybrid)}

    def step(model, batch):
        t = time.perf_counter()
        out = model(**batch)
        out["loss"].backward()
        opts[id(model)].step()
        opts[id(model)].zero_grad(set_to_none=True)
        return time.perf_counter() - t

    times = {"finetune": [], "hybrid+teacher": []}
    for i in range(a.steps + 2):
        rows = [with_logits[j] for j in range(32 * (i % a.steps), 32 * (i % a.steps) + 32)]
        batch = coll(rows)
        plain = {k: v for k, v in batch.items() if k != "teacher_logits"}
        td_ = step(dense, plain)
        th = step(hybrid, batch)
        if i >= 2:  # first steps warm up allocators
            times["finetune"].append(td_)
            times["hybrid+teacher"].append(th)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    steps_per_epoch = math.ceil(len(td.train) / 32)
    amortised = med["hybrid+teacher"] + prepass_per_example * len(td.train) / steps_per_epoch
    res = {
        "command": "python " + " ".join(sys.argv),
        "model": a.model,
        "batch": 32,
        "max_length": 64,
        "threads": a.threads,
        "steps": a.steps,
        "median_seconds_per_step": med,
        "ratio_step": med["hybrid+teacher"] / med["finetune"],
        "teacher_prepass_seconds_per_example": prepass_per_example,
        "ratio_including_teacher_prepass_amortised_over_one_epoch": amortised / med["finetune"],
        "target": "<= 1.25",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "overhead.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
