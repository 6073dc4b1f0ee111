"""Structurally broken graphs (a deleted node, a wrong initializer dtype, a truncated initializer, a tensor
produced twice, a cycle) are refused by `compress shrink`, `compress quantize` and `compress bench` in one
line with exit code 2. A sample of the campaign in benchmarks/fuzz_surgery.py."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import zoo_check

import helpers


@pytest.mark.parametrize("kind", zoo_check.DAMAGE)
@pytest.mark.parametrize("name", ["bert_legacy_op14_int8_dynamic_pc", "bert_optimum_O2"])
def test_broken_graph_is_refused_in_one_line(name, kind, tmp_path, capsys):
    src = tmp_path / "in.onnx"
    onnx.save(zoo_check.damage(zoo_check.load(name), kind, np.random.default_rng(0)), str(src))
    commands = {
        "shrink": ["shrink", str(src), str(tmp_path / "out.onnx")],
        "quantize": ["quantize", str(src), "-o", str(tmp_path / "q.onnx")],
        "bench": ["bench", str(src), "--batch-sizes", "1", "--seq-lens", "8", "--iterations", "1", "--warmup", "0"],
    }
    for verb, argv in commands.items():
        capsys.readouterr()
        helpers.cli_error(helpers.main(argv), capsys.readouterr().err)
    assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "q.onnx").exists()
