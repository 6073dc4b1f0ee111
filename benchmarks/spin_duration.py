"""How long ONNX Runtime's intra-op threads keep spinning after a run: the figure behind compress bench's
settle_ms default (compress.ort.timing.settle).

After one run of a session, the main thread sleeps for a given time and the process CPU time used meanwhile is
read: whatever CPU time accrues is the pool's threads busy-waiting. Repeated per sleep length; the median is kept.

Run: python benchmarks/spin_duration.py MODEL.onnx|DIR [--threads 2] [--batch 1] [--repeats 7]
Writes benchmarks/results/spin_duration.{json,md}.
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
SLEEPS_MS = (1, 2, 5, 10, 20, 30, 50, 100)


def main() -> int:
    import onnx

    from compress.ort.bench import cpu_model
    from exporters.files import resolve_onnx
    from exporters.inputs import graph_inputs, random_feeds, vocab_size
    from exporters.sessions import make_session

    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    path = resolve_onnx(a.model)
    graph = onnx.load(str(path), load_external_data=False)
    feeds = random_feeds(graph_inputs(graph), vocab_size(graph, path.parent), a.batch, 128, 0, low=1000)
    rows = []
    for spinning in (True, False):
        session = make_session(path, "cpu", a.threads, check=False, spinning=spinning)
        for _ in range(5):
            session.run(None, feeds)
        for sleep_ms in SLEEPS_MS:
            cpu = []
            for _ in range(a.repeats):
                session.run(None, feeds)
                c0 = time.process_time()
                time.sleep(sleep_ms / 1e3)
                cpu.append((time.process_time() - c0) * 1e3)
            rows.append({"spinning": spinning, "sleep_ms": sleep_ms, "cpu_ms_median": round(statistics.median(cpu), 2)})
            print(rows[-1], flush=True)
    command = "python " + shlex.join(sys.argv)
    (RESULTS / "spin_duration.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1) + "\n")
    lines = [
        "# How long ORT's threads spin after a run",
        "",
        f"Command: `{command}` ({cpu_model()}, {a.threads} intra-op threads, batch {a.batch} x 128).",
        "Process CPU time while the main thread sleeps right after one run (median of "
        f"{a.repeats}); it is the intra-op pool busy-waiting. process_time ticks are coarse (a few ms).",
        "",
        "| sleep ms | CPU ms, spinning (ORT default) | CPU ms, spinning off |",
        "|---|---|---|",
    ]
    by = {(r["spinning"], r["sleep_ms"]): r["cpu_ms_median"] for r in rows}
    lines += [f"| {s} | {by[(True, s)]} | {by[(False, s)]} |" for s in SLEEPS_MS]
    (RESULTS / "spin_duration.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
