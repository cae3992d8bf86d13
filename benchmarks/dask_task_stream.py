"""The dask backend, interleaved A/B in one process on nbparallel's local cluster (2 workers):

    python benchmarks/dask_task_stream.py ROUNDS

- "large": 4 items of 30 MB, one per chunk; chunks over SCATTER_BYTES scattered (the code) vs
  put in the task graph as before (SCATTER_BYTES set out of reach for the B side);
- "insights": 64 chunks of one tiny item, insights on (reading the scheduler's task stream as
  answers arrive) vs off.

Each round times both sides once, in an order that alternates between rounds, and keeps the
ratio; prints the median ratio with quartiles and range, and the median times.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable

from pairing import alternating_rounds

from nbparallel import parallel
from nbparallel.backends import dask as dask_backend

BIG = os.urandom(30_000_000)
SCATTER_BYTES = dask_backend.SCATTER_BYTES


def large(scatter: bool) -> float:
    dask_backend.SCATTER_BYTES = SCATTER_BYTES if scatter else 1 << 62
    started = time.perf_counter()
    assert parallel.map(len, [BIG] * 4, chunksize=1) == [len(BIG)] * 4
    return time.perf_counter() - started


def insights(on: bool) -> float:
    started = time.perf_counter()
    assert parallel.map(abs, range(64), chunksize=1, insights=on)[-1] == 63
    return time.perf_counter() - started


def paired(name: str, run: Callable[[bool], float], rounds: int) -> None:
    a_times, b_times, ratios = alternating_rounds(lambda: run(True), lambda: run(False), rounds)
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    print(
        f"{name}: A/B median {statistics.median(ratios):.3f} (quartiles {q1:.3f}-{q3:.3f}, "
        f"range {min(ratios):.3f}-{max(ratios):.3f}, {rounds} rounds); median seconds "
        f"A {statistics.median(a_times):.4f}, B {statistics.median(b_times):.4f}"
    )


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    warnings.simplefilter("ignore")  # dask's "Sending large graph" warning, on the B side
    parallel.configure(backend="dask", workers=2, progress=False)
    for _ in range(2):  # warm: cluster started, function scattered, task stream followed
        large(True), large(False), insights(True), insights(False)
    paired("large items, scattered (A) vs in the task graph (B)", large, rounds)
    paired("64 tiny chunks, insights on (A) vs off (B)", insights, rounds)
    print(f"load average at the end: {os.getloadavg()}")
    parallel.shutdown()


if __name__ == "__main__":
    main()
