"""What insights=True costs: the 200,000 tiny-item map with insights on and off, interleaved.

    python benchmarks/insights.py ROUNDS

One process, one warm pool of 2 workers, no progress bar (so that only recording differs). Each
round times the map once with insights off and once on, in an order that alternates between
rounds, and keeps the ratio on/off; the machine's load drifts, but both calls of a round see the
same. Prints the median ratio with a distribution-free 95% confidence interval (the order
statistics of the sorted ratios that bracket the median with 95% probability), whether its upper
end is under the issue's 1.03, and the quartiles, extremes and median times.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time

from pairing import alternating_rounds

from nbparallel import parallel

ITEMS = 200_000
TARGET = 1.03


def map_seconds(insights: bool) -> float:
    started = time.perf_counter()
    out = parallel.map(lambda x: x + 1, range(ITEMS), insights=insights)
    seconds = time.perf_counter() - started
    assert out[-1] == ITEMS
    return seconds


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """The order statistics around the median that cover it with `confidence` (binomial, normal
    approximation: good from a few dozen values on)."""
    ordered = sorted(values)
    n = len(ordered)
    half = statistics.NormalDist().inv_cdf(0.5 + confidence / 2) * math.sqrt(n) / 2
    low = max(0, math.floor(n / 2 - half) - 1)
    high = min(n - 1, math.ceil(n / 2 + half))
    return ordered[low], ordered[high]


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    parallel.configure(workers=2, progress=False)
    for _ in range(3):  # warm: workers started, functions cached, code paths compiled
        map_seconds(False)
        map_seconds(True)
    on_times, off_times, ratios = alternating_rounds(
        lambda: map_seconds(True), lambda: map_seconds(False), rounds
    )
    low, high = median_interval(ratios)
    quartiles = statistics.quantiles(ratios, n=4)
    print(
        f"on/off median {statistics.median(ratios):.4f}, 95% CI {low:.4f}-{high:.4f} "
        f"({rounds} rounds): upper end {'<' if high < TARGET else '>='} {TARGET}"
    )
    print(
        f"quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f}, range {min(ratios):.3f}-{max(ratios):.3f}"
    )
    print(
        f"median seconds: off {statistics.median(off_times):.4f}, on {statistics.median(on_times):.4f}"
    )
    record = parallel.insights()
    print(f"last call: {len(record.chunks)} chunks, efficiency {record.efficiency:.0%}")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    parallel.shutdown()


if __name__ == "__main__":
    main()
