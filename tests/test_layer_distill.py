"""Layer-wise distillation: the loss term, its learned map, and the refusals."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import compress
import helpers as h
from compress.core.config import DistillConfig
from compress.training.loop import StudentWithLoss


def _batch():
    enc = h.tiny_tokenizer()(h.POSITIVE + h.NEGATIVE, padding=True, return_tensors="pt")
    return dict(enc), torch.tensor([1] * 5 + [0] * 5)


def test_layer_loss_is_zero_for_the_teacher_itself_and_trains_the_map():
    teacher = h.tiny_model("bert").eval()
    student = h.tiny_model("bert")
    student.load_state_dict(teacher.state_dict())
    distill = DistillConfig(teacher="t", alpha_ce=0.0, alpha_teacher=0.0, layer_weight=1.0)
    wrapper = StudentWithLoss(student, None, teacher, distill).eval()  # dropout off: same activations
    batch, labels = _batch()
    wrapper.training = True  # the term is a training loss; eval() only silenced dropout
    loss = wrapper(**batch, labels=labels)["loss"]
    assert float(loss.detach()) < 1e-7
    with torch.no_grad():  # a different student: the term is positive and reaches the map and the student
        student.bert.encoder.layer[0].output.dense.weight.mul_(3)
    loss = wrapper(**batch, labels=labels)["loss"]
    assert float(loss.detach()) > 1e-5
    loss.backward()
    assert wrapper.layer_map.weight.grad.abs().sum() > 0
    assert student.bert.encoder.layer[0].output.dense.weight.grad.abs().sum() > 0


def test_prune_with_layer_distillation(tmp_path):
    h.write_sst2_like(tmp_path / "data" / "sst2", n_train=32, n_dev=8)
    h.save_checkpoint(h.tiny_model("bert"), tmp_path / "base")
    cfg = compress.PruneConfig(
        method="struct",
        lambda_reg=1.0,
        prune_hidden=True,
        distill=DistillConfig(teacher=str(tmp_path / "base"), layer_weight=1.0),
        train=compress.TrainConfig(max_steps=4, batch_size=8, progress=False),
    )
    data = compress.DataConfig(task="sst2", data_dir=str(tmp_path / "data"))
    out = compress.prune(str(tmp_path / "base"), tmp_path / "out", cfg, data=data)
    assert out.path.is_dir()
    assert not any("layer_map" in k for k in load_file(out.path / "model.safetensors"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--layer-weight", "1"], "give --teacher too"),
        (["--layer-weight", "1", "--teacher", "x", "--task", "embedding"], "use --hidden-weight"),
    ],
)
def test_refusals(tmp_path, capsys, args, message):
    code = h.main(["prune", "--method", "struct", *args, "-o", str(tmp_path / "o")])
    assert message in h.cli_error(code, capsys.readouterr().err)
