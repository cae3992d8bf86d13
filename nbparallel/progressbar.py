"""Progress display for one call: a live widget in a notebook, a text bar on stderr elsewhere.

Knows nothing about pools: it is told how many items finished (and how many of them failed), and
may ask two callables how far the running items are and what the workers are doing, and, with
insights on, a `Timeline` for the chunks so far. Redraws are throttled to `REDRAW_SECONDS`, so
200,000 tiny items cost a few dozen widget updates, not 200,000.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

REDRAW_SECONDS = 0.1  # at most 10 redraws a second: what a frontend shows smoothly
WORKERS_REDRAW_SECONDS = 0.5  # the worker row asks the system for memory use: less often


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What a view shows at one moment."""

    name: str
    total: int | None
    finished: int  # items whose results arrived
    value: float  # finished, plus how far the running items are
    failed: int
    elapsed: float

    @property
    def rate(self) -> float:
        return self.value / self.elapsed if self.elapsed > 0 else 0.0

    def text(self, state: str = "running") -> str:
        """One line: count, rate, elapsed, ETA, errors; how the call ended, once it has."""
        from tqdm import tqdm  # its time and size formats, as every tqdm user knows them

        shown = self.finished if state != "running" else int(self.value)
        parts = [f"{shown}/{self.total}" if self.total is not None else f"{shown}", "items"]
        if self.rate > 0:
            parts.append(f"· {tqdm.format_sizeof(self.rate)} items/s")
        parts.append(f"· {tqdm.format_interval(self.elapsed)} elapsed")
        if state == "running" and self.total is not None and self.rate > 0:
            parts.append(f"· ETA {tqdm.format_interval((self.total - self.value) / self.rate)}")
        if self.failed:
            parts.append(f"· {self.failed} error{'s' if self.failed != 1 else ''}")
        if state == "stopped":
            parts.append("· stopped")
        return " ".join(parts)


class Timeline(Protocol):
    """Where a call's chunks are, as `recording.Recorder` tells it."""

    start: float  # the call began (time.time())

    def spans(self) -> Sequence[Any]:
        """Every chunk so far (insights.ChunkSpan), running ones included."""


class Progress:
    """One bar for one call; does nothing (and imports nothing) when disabled.

    Args:
        running: how many items' worth of work is done in chunks not yet returned (items a worker
            finished, plus the fractions reported by `nbparallel.progress` inside running items).
        workers: the pool's workers (objects with pid, state, tasks_done, memory_rss), for a row
            under the bar; None for no row.
        timeline: with insights on, the call's chunks, drawn as a timeline under the bar in a
            notebook (`lanes` of them expected); in a terminal the call's insights table is
            printed after the bar instead.
    The bar is shown by `show()` (or `close()`), not on creation: a map sends its first chunks
    first, so that in a notebook the widget's messages go out while the workers run them, not
    before they start (showing a bar costs about 2 ms of a loaded 2-core machine).
    """

    def __init__(
        self,
        total: int | None,
        enabled: bool,
        name: str,
        running: Callable[[], float] = lambda: 0.0,
        workers: Callable[[], Sequence[Any]] | None = None,
        timeline: Timeline | None = None,
        lanes: int = 0,
    ) -> None:
        self.total = total
        self.name = name
        self.finished = 0
        self.failed = 0
        self._running = running
        self._started = time.monotonic()
        self._next_redraw = self._started + REDRAW_SECONDS  # the view draws its start itself
        self._view: Any = None
        self._make_view: Callable[[], Any] | None = None  # until the bar is shown
        in_notebook = enabled and _in_notebook()
        self.draws_timeline = in_notebook and timeline is not None
        """True if a timeline of the chunks is drawn live (it wants to hear when each starts)."""
        if in_notebook:
            from . import widget  # imports ipywidgets: only where a frontend draws it

            widget.flush_written_output()  # what the cell printed goes before the bar
            self._make_view = lambda: widget.WidgetView(self._opening(), workers, timeline, lanes)
        elif enabled:
            self._make_view = lambda: _TextView(self._opening())

    def show(self) -> None:
        """Show the bar, if it is not shown yet."""
        make, self._make_view = self._make_view, None
        if make is not None:
            self._view = make()

    @property
    def redraw_seconds(self) -> float | None:
        """How long the caller may wait for events before calling `redraw`; None: never needed."""
        return REDRAW_SECONDS if self._view is not None or self._make_view is not None else None

    def learn_total(self, total: int) -> None:
        """The number of items, once known during the call (joblib knows it when its input runs
        out; a generator has no length before that)."""
        self.total = total

    def advance(self, finished: int, failed: int = 0) -> None:
        """`finished` more items have their outcome, `failed` of them an error."""
        self.finished += finished
        self.failed += failed
        if self._view is not None and time.monotonic() >= self._next_redraw:
            self.redraw()

    def redraw(self) -> None:
        if self._view is None:
            return
        self._next_redraw = time.monotonic() + REDRAW_SECONDS
        self._view.show(self.snapshot())

    def _opening(self) -> Snapshot:
        """The bar as the call began, drawn first: the text a saved notebook keeps (and nbval
        compares) is then the same on every run, however long the first chunks took to send (a
        pool still booting on a loaded machine: seconds). The next redraw shows the real time."""
        return Snapshot(
            self.name, self.total, self.finished, float(self.finished), self.failed, 0.0
        )

    def snapshot(self, include_running: bool = True) -> Snapshot:
        value = float(self.finished)
        if include_running:
            value = min(
                value + self._running(),
                float(self.total) if self.total is not None else float("inf"),
            )
        return Snapshot(
            self.name,
            self.total,
            self.finished,
            value,
            self.failed,
            time.monotonic() - self._started,
        )

    def close(self, state: str, insights: Callable[[], Any] | None = None) -> None:
        """End the bar. `state`: "done" (green, or red if items failed), "failed" or "stopped";
        `insights`: makes the call's record (insights.Insights), shown with the bar (a bar not
        shown does not make it)."""
        self.show()  # a call that failed before it showed its bar still ends one
        if self._view is None:
            return
        if state == "failed":
            self.failed = max(self.failed, 1)
        view, self._view = self._view, None
        view.end(
            self.snapshot(include_running=False),
            "stopped" if state == "stopped" else "failed" if self.failed else "done",
            insights,
        )


def prepare_display() -> None:
    """Import what this process's bars need, and build the widget models they share, ahead of
    the first call (see `prestart`): in a kernel they cost the first bar about 0.15 s."""
    if _in_notebook():
        from . import widget

        widget.build_shared_models()
    import tqdm  # noqa: F401


def _in_notebook() -> bool:
    """True in an IPython kernel (a frontend draws widgets); False in a terminal or a script."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if getattr(shell, "kernel", None) is None:
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


class _TextView:
    """tqdm's text bar on stderr, for a terminal or a script."""

    def __init__(self, start: Snapshot) -> None:
        from tqdm import tqdm

        self._bar = tqdm(
            total=start.total,
            desc=start.name,
            unit="item",
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=REDRAW_SECONDS,
        )

    def show(self, snapshot: Snapshot) -> None:
        if snapshot.total != self._bar.total:  # a total learnt during the call (joblib's)
            self._bar.total = snapshot.total
        moved = int(snapshot.value) - self._bar.n  # whole items: a text bar shows no fractions
        if moved > 0:
            self._bar.update(moved)
        if snapshot.failed:
            self._bar.set_postfix_str(f"{snapshot.failed} errors", refresh=False)

    def end(
        self, snapshot: Snapshot, state: str, insights: Callable[[], Any] | None = None
    ) -> None:
        self.show(snapshot)
        if state != "done":
            self._bar.set_description(f"{snapshot.name} ({state})", refresh=False)
        self._bar.close()
        if insights is not None:
            print(repr(insights()), file=sys.stderr)
