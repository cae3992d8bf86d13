"""Where insights=True costs: the CPU of the notebook's process and of the workers, on and off.

    python benchmarks/insights_cpu.py ROUNDS

The same rounds as `insights.py` (one warm pool of 2 workers, no bar, the 200,000 tiny-item map
off and on in alternating order), timed three ways: wall time; the kernel's CPU
(`time.process_time`, every thread of this process: the pool's reader threads too); and the
workers' CPU (user + system from /proc/PID/stat, in clock ticks, so summed over the rounds: a
call lasts a few ticks). CPU is far less noisy than wall time on a shared machine, so it shows
each side's part of the cost. Linux only (/proc).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from insights import ITEMS, median_interval

from nbparallel import parallel

TICK = os.sysconf("SC_CLK_TCK")


def worker_ticks() -> int:
    total = 0
    for worker in parallel.status().workers:
        with open(f"/proc/{worker.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


def one_call(insights: bool) -> tuple[float, float, float]:
    ticks = worker_ticks()
    cpu, wall = time.process_time(), time.perf_counter()
    out = parallel.map(lambda x: x + 1, range(ITEMS), insights=insights)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert out[-1] == ITEMS
    return wall, cpu, (worker_ticks() - ticks) / TICK


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    parallel.configure(workers=2, progress=False)
    for _ in range(3):
        one_call(False)
        one_call(True)
    on, off = [], []
    for number in range(rounds):  # the order alternates, as in pairing.alternating_rounds
        if number % 2:
            off.append(one_call(False))
            on.append(one_call(True))
        else:
            on.append(one_call(True))
            off.append(one_call(False))
    for index, name in enumerate(("wall", "kernel CPU")):
        ratios = [a[index] / b[index] for a, b in zip(on, off, strict=True)]
        extra = [(a[index] - b[index]) * 1e3 for a, b in zip(on, off, strict=True)]
        low, high = median_interval(ratios)
        extra_low, extra_high = median_interval(extra)
        print(
            f"{name}: on/off median {statistics.median(ratios):.4f} (95% CI {low:.4f}-{high:.4f}); "
            f"on - off {statistics.median(extra):+.3f} ms ({extra_low:+.3f} to {extra_high:+.3f}); "
            f"median off {statistics.median(b[index] for b in off) * 1e3:.2f} ms, "
            f"on {statistics.median(a[index] for a in on) * 1e3:.2f} ms"
        )
    on_cpu, off_cpu = sum(a[2] for a in on), sum(b[2] for b in off)
    print(
        f"workers' CPU, summed: on {on_cpu:.2f} s, off {off_cpu:.2f} s, on/off {on_cpu / off_cpu:.4f}"
    )
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    parallel.shutdown()


if __name__ == "__main__":
    main()
