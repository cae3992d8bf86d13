"""What insights=True costs: the 200,000 tiny-item map with insights on and off, interleaved.

    python benchmarks/insights.py ROUNDS

One process, one warm pool of 2 workers, no progress bar (so that only recording differs). Each
round times the map once with insights off and once on, in an order that alternates between
rounds, and keeps the ratio on/off; the machine's load drifts, but both calls of a round see the
same. Prints the median ratio with its quartiles and extremes, then each median time.
"""

from __future__ import annotations

import statistics
import sys
import time

from nbparallel import parallel

ITEMS = 200_000


def map_seconds(insights: bool) -> float:
    started = time.perf_counter()
    out = parallel.map(lambda x: x + 1, range(ITEMS), insights=insights)
    seconds = time.perf_counter() - started
    assert out[-1] == ITEMS
    return seconds


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    parallel.configure(workers=2, progress=False)
    for _ in range(3):  # warm: workers started, functions cached, code paths compiled
        map_seconds(False)
        map_seconds(True)
    ratios, off_times, on_times = [], [], []
    for round_number in range(rounds):
        if round_number % 2:
            on, off = map_seconds(True), map_seconds(False)
        else:
            off, on = map_seconds(False), map_seconds(True)
        off_times.append(off)
        on_times.append(on)
        ratios.append(on / off)
    quartiles = statistics.quantiles(ratios, n=4)
    print(
        f"on/off median {statistics.median(ratios):.3f} "
        f"(quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f}, range {min(ratios):.3f}-{max(ratios):.3f}, "
        f"{rounds} rounds)"
    )
    print(
        f"median seconds: off {statistics.median(off_times):.4f}, on {statistics.median(on_times):.4f}"
    )
    record = parallel.insights()
    print(f"last call: {len(record.chunks)} chunks, efficiency {record.efficiency:.0%}")
    parallel.shutdown()


if __name__ == "__main__":
    main()
