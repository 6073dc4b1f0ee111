"""The timing harness behind every latency figure: `compress bench` and the latency tables time graphs
with the same interleaved rounds, so their numbers can be compared.

- Graphs are interleaved run by run, and the starting graph rotates every round, so a burst of load
  from another process hits all graphs alike instead of one graph's whole series.
- ORT's intra-op threads spin as they do by default in a deployed app (busy-waiting between ops and for
  ~30 ms after a run). With several sessions in one process each keeps its own threads, and spinning
  threads left by the graph that ran before take the cores from the next one; so each timed sample comes
  after settle(): a pause of settle_ms, then one untimed run of the same graph.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from compress.core.config import BenchConfig


def settle(call: Callable[[], None], config: BenchConfig) -> None:
    """Before a timed run of `call` when sessions interleave: with spinning threads, wait until the other
    sessions' threads sleep (settle_ms), then one untimed run wakes this session's threads and caches,
    which then spin as in a deployed app under steady load. Nothing to wait for without spinning."""
    if config.spinning and config.settle_ms > 0:
        time.sleep(config.settle_ms / 1e3)
        call()


def interleaved_rounds(
    calls: dict[str, Callable[[], None]],
    rounds: int,
    config: BenchConfig,
    repeats: dict[str, int] | None = None,
    after_sample: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds each timed sample took, per label: `rounds` rounds, each timing every call once, the start
    rotating by one per round. A sample runs its call repeats[label] times back to back (default once),
    after settle() whenever more than one session takes turns."""
    order = list(calls)
    n = len(order)
    samples: dict[str, list[float]] = {label: [] for label in order}
    for r in range(rounds):
        for k in range(n):
            label = order[(r + k) % n]
            call = calls[label]
            runs = repeats[label] if repeats else 1
            if n > 1:
                settle(call, config)
            t0 = time.perf_counter()
            for _ in range(runs):
                call()
            samples[label].append(time.perf_counter() - t0)
            if after_sample:
                after_sample()
    return samples


def runs_per_sample(call: Callable[[], None], min_sample_ms: float) -> int:
    """How many back-to-back runs of `call` last about `min_sample_ms` (1 to 200), so a fast graph is not
    judged by single runs that another job interrupted."""
    one = float("inf")
    for _ in range(3):  # the fastest of a few: one run slowed by another job would make the count 1
        t0 = time.perf_counter()
        call()
        one = min(one, (time.perf_counter() - t0) * 1e3)
        if one > min_sample_ms:
            break
    return max(1, min(200, math.ceil(min_sample_ms / max(one, 1e-3))))
