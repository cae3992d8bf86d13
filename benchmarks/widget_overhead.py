"""What the progress widget costs in a real notebook kernel: 200,000 and 2,000,000 tiny items
(`lambda x: x + 1`), progress widget on versus off, and how many widget updates reach the frontend.

    python benchmarks/widget_overhead.py     # writes benchmarks/results/widget_overhead.md

The kernel is a real ipykernel started through jupyter_client (as JupyterLab starts one); the
time is measured inside the kernel around the call, and updates are counted from the kernel's
widget messages, as a frontend receives them. A warm-up call first, then alternating repetitions.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.kernel import Kernel  # noqa: E402 - the repository's own real-kernel helper

SIZES, REPEATS = (200_000, 2_000_000), 7
TIMED = "import time as _t\n_s = _t.perf_counter()\n_r = parallel.map(lambda x: x + 1, range({items}), progress={on})\nprint(_t.perf_counter() - _s)"


def main() -> None:
    kernel = Kernel(Path(tempfile.mkdtemp(prefix="nbparallel-bench-")))
    rows = []
    try:
        kernel.ok("from nbparallel import parallel\nparallel.map(abs, range(100), progress=False)")
        for items in SIZES:
            seconds: dict[bool, list[float]] = {True: [], False: []}
            updates: list[int] = []
            for _ in range(REPEATS):
                for on in (False, True):
                    before = kernel.widget_updates
                    reply = kernel.ok(TIMED.format(items=items, on=on), timeout=120)
                    seconds[on].append(float(reply.stdout.split()[-1]))
                    if on:
                        updates.append(kernel.widget_updates - before)
            off, on_ = statistics.median(seconds[False]), statistics.median(seconds[True])
            rows.append(
                f"| {items:,} | {off * 1000:.0f} ms ({min(seconds[False]) * 1000:.0f} - {max(seconds[False]) * 1000:.0f}) "
                f"| {on_ * 1000:.0f} ms ({min(seconds[True]) * 1000:.0f} - {max(seconds[True]) * 1000:.0f}) "
                f"| {on_ / off:.3f} | {(on_ - off) * 1000:+.1f} ms | {statistics.median(updates):.0f} |"
            )
        kernel.ok("parallel.shutdown()")
    finally:
        kernel.shutdown()
    lines = [
        "# Progress widget overhead in a real kernel",
        "",
        "Command: `python benchmarks/widget_overhead.py` (2 workers on this 2-core machine; items of "
        f"`lambda x: x + 1`; medians (min - max) of {REPEATS} alternating repetitions after a warm-up).",
        "",
        "| items | progress off | widget on | ratio | difference | widget updates per call |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        "Updates per call stay bounded whatever the item count (at most 10 redraws a second). What the",
        "widget costs is a fixed few milliseconds per call: creating its widget models and displaying it",
        "(ipykernel flushes the cell's output streams first); it does not grow with the items.",
        "",
    ]
    output = ROOT / "benchmarks" / "results" / "widget_overhead.md"
    output.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
