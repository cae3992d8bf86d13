"""What one redraw of the live timeline costs the kernel: `TimelineView.update` on 1,000 to
100,000 chunks on 8 workers, in three shapes, and the size of the SVG it sends.

    python benchmarks/timeline_redraw.py     # writes benchmarks/results/timeline_redraw.md

The progress bar redraws at most 10 times a second, so a redraw of 10 ms would take a tenth of
the kernel's time while a call runs (slower redraws space the next ones themselves, see
`TimelineView.update`). Each case: 7 rounds of 10 updates, reported per update.
"""

from __future__ import annotations

import platform
import statistics
import sys
import time
from pathlib import Path

from nbparallel.timeline import TimelineView

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.spans import Span  # noqa: E402 - the repository's tests, beside this folder

WORKERS, ROUNDS, PER_ROUND = 8, 7, 10


def spans(chunks: int, seconds: float, failing_every: int = 0) -> list[Span]:
    """`chunks` back-to-back chunks over `seconds` on WORKERS workers, the last one of each
    worker still running; every `failing_every`-th chunk failed (0: none)."""
    per_worker = chunks // WORKERS
    step = seconds / per_worker
    made = []
    for n in range(chunks):
        worker, turn = n % WORKERS, n // WORKERS
        begin = 1000.0 + turn * step
        state = "running" if turn == per_worker - 1 else "done"
        if state == "done" and failing_every and n % failing_every == 0:
            state = "failed"
        end = None if state == "running" else begin + step * 0.95
        made.append(Span(40000 + worker, n * 4, 4, begin - 0.001, begin, end, end, state))
    return made


CASES = [
    # name, chunks, wall time; chunk widths follow: 640 px / (chunks / 8) each
    ("1,000 chunks, 5 px each", 1_000, 10.0, 0),
    ("1,000 chunks, every 7th failed", 1_000, 10.0, 7),
    ("10,000 chunks, 0.5 px each", 10_000, 10.0, 0),
    ("10,000 chunks, every 7th failed", 10_000, 10.0, 7),
    ("100,000 chunks, 0.05 px each", 100_000, 10.0, 0),
]


def measure(chunks: int, seconds: float, failing_every: int) -> tuple[list[float], int]:
    made = spans(chunks, seconds, failing_every)
    now = made[-1].sent + seconds / (chunks // WORKERS) / 2
    per_update = []
    for _ in range(ROUNDS):
        # A view each: one that has just drawn slowly would rightly skip the next updates.
        views = [TimelineView(WORKERS) for _ in range(PER_ROUND)]
        began = time.perf_counter()
        for view in views:
            view.update(made, 1000.0 - 0.001, now)
        per_update.append((time.perf_counter() - began) / PER_ROUND * 1000)
    return per_update, len(views[0].widget.value.encode())


def main() -> None:
    rows = []
    for name, chunks, seconds, failing_every in CASES:
        times, size = measure(chunks, seconds, failing_every)
        rows.append(
            f"| {name} | {statistics.median(times):.2f} | {min(times):.2f}-{max(times):.2f} | "
            f"{size / 1000:.1f} |"
        )
        print(rows[-1], flush=True)
    out = Path(__file__).parent / "results" / "timeline_redraw.md"
    out.write_text(
        "# Live timeline: the cost of one redraw\n\n"
        f"`TimelineView.update` with every chunk of the call so far, on {WORKERS} workers; "
        f"{ROUNDS} rounds of {PER_ROUND} updates each (per update: median, min-max). "
        "Size: the widget's value, what one redraw sends to the frontend. A redraw slower than "
        "20 ms spaces the next ones (at most a tenth of the kernel's time).\n\n"
        "| chunks | ms per update | min-max ms | kB sent |\n| --- | --- | --- | --- |\n"
        + "\n".join(rows)
        + f"\n\nCommand: `python benchmarks/timeline_redraw.py` (Python {platform.python_version()}"
        f", {sys.platform}, this machine: shared by other jobs).\n"
    )


if __name__ == "__main__":
    main()
