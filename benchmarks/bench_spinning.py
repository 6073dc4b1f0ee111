"""Why `compress bench` settles spinning threads before each timed run: the same graphs timed four ways,
with ONNX Runtime's thread spinning on (its default) and off.

  interleaved: one timed run per model per round, rotating (what compress bench does, so that load from
               other processes hits every model alike);
  re-warmed:   as interleaved, with one untimed run of the same model right before each timed run;
  settled:     as interleaved, with compress bench's settle() before each timed run (with spinning: a
               pause of settle_ms, then one untimed run; without spinning it does nothing);
  alone:       all runs of one model back to back, as a server running only that model.

After a run ORT's intra-op threads busy-wait for the next one; interleaved sessions each keep their own
spinning threads, which take the cores from whichever model runs next (for ~30 ms after their run).
Without spinning every op waits for a sleeping thread to wake up, which a deployed model does not.

Run: python benchmarks/bench_spinning.py RUN_DIR/onnx [--rounds-b1 40] [--rounds-b32 10]
(RUN_DIR: a `compress run` output; its onnx/ holds dense, pruned, dense-int8, pruned-int8.)
Writes benchmarks/results/bench_spinning.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
MODELS = ["dense", "pruned", "dense-int8", "pruned-int8"]


def main() -> int:
    from compress.core.config import BenchConfig
    from compress.ort.bench import cpu_model
    from compress.ort.timing import settle
    from exporters.files import resolve_onnx
    from exporters.inputs import graph_inputs, random_feeds, vocab_size
    from exporters.sessions import make_session

    ap = argparse.ArgumentParser()
    ap.add_argument("onnx_dir")
    ap.add_argument("--rounds-b1", type=int, default=40)
    ap.add_argument("--rounds-b32", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--settle-ms", type=float, default=BenchConfig.settle_ms)
    a = ap.parse_args()
    import onnx

    def call(name: str, batch: int, spinning: bool):
        path = resolve_onnx(Path(a.onnx_dir) / name)
        session = make_session(path, "cpu", a.threads, check=False, spinning=spinning)
        graph = onnx.load(str(path), load_external_data=False)
        feeds = random_feeds(graph_inputs(graph), vocab_size(graph, path.parent), batch, 128, 0, low=1000)
        return lambda: session.run(None, feeds)

    def timed(f) -> float:
        t0 = time.perf_counter()
        f()
        return (time.perf_counter() - t0) * 1e3

    rows = []
    for batch, rounds in ((1, a.rounds_b1), (32, a.rounds_b32)):
        for spinning in (True, False):
            calls = {m: call(m, batch, spinning) for m in MODELS}
            for f in calls.values():
                f(), f()
            bc = BenchConfig(spinning=spinning, settle_ms=a.settle_ms)
            for mode in ("interleaved", "re-warmed", "settled", "alone"):
                times = {m: [] for m in MODELS}
                if mode == "alone":
                    times = {m: [timed(calls[m]) for _ in range(rounds)] for m in MODELS}
                else:
                    for r in range(rounds):
                        for m in MODELS[r % 4 :] + MODELS[: r % 4]:
                            if mode == "re-warmed":
                                calls[m]()
                            elif mode == "settled":
                                settle(calls[m], bc)
                            times[m].append(timed(calls[m]))
                med = {m: statistics.median(v) for m, v in times.items()}
                rows.append(
                    {
                        "shape": f"{batch}x128",
                        "spinning": spinning,
                        "mode": mode,
                        "ms": {m: round(v, 2) for m, v in med.items()},
                        "speedup": {m: round(med["dense"] / v, 3) for m, v in med.items()},
                    }
                )
                print(rows[-1], flush=True)
    command = "python " + shlex.join(sys.argv)
    (RESULTS / "bench_spinning.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1) + "\n")
    lines = [
        "# ORT thread spinning and interleaved timing",
        "",
        f"Command: `{command}` ({cpu_model()}, {a.threads} threads; graphs of "
        "`benchmarks/results/targets_sst2/hybrid-3x-fisher`: its dense and 3x-pruned exports and their dynamic int8).",
        "Median ms per run; speedup = dense fp32 / model, same mode.",
        "",
        "| shape | spinning | mode | dense ms | pruned ms | dense-int8 ms | pruned-int8 ms | pruned speedup "
        "| pruned-int8 speedup |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ms, sp = r["ms"], r["speedup"]
        lines.append(
            f"| {r['shape']} | {'on' if r['spinning'] else 'off'} | {r['mode']} | {ms['dense']} | {ms['pruned']} | "
            f"{ms['dense-int8']} | {ms['pruned-int8']} | {sp['pruned']:.2f}x | {sp['pruned-int8']:.2f}x |"
        )
    (RESULTS / "bench_spinning.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
