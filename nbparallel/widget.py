"""The progress widget of a call in a notebook (ipywidgets); imported only inside a kernel.

A bar with the call's name and a line of numbers, the bar green, red or orange (stopped) at the
end; optionally a row of workers below it, where a worker that exited stays visible, and with
insights on, the timeline of the call's chunks (`timeline.TimelineView`), kept when it ends with
the call's efficiency and its most telling hint.
"""

from __future__ import annotations

import contextlib
import html
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ipywidgets as widgets
from IPython import get_ipython
from IPython.display import display
from ipywidgets.widgets.widget_int import ProgressStyle
from ipywidgets.widgets.widget_string import HTMLStyle

from .progressbar import WORKERS_REDRAW_SECONDS, Snapshot, Timeline

BAR_STYLES = {"running": "", "done": "success", "failed": "danger", "stopped": "warning"}
_WORKER_COLOURS = {"idle": "#57606a", "busy": "#0969da", "stopping": "#9a6700", "exited": "#cf222e"}


_SHARED: dict[str, widgets.Widget] = {}
_SHARED_MAKERS: dict[str, Callable[[], widgets.Widget]] = {
    "box": lambda: widgets.Layout(flex_flow="row wrap", align_items="center"),
    "bar style": lambda: ProgressStyle(description_width="initial"),
    "bar": lambda: widgets.Layout(flex="1 1 auto", min_width="12em"),
    "text style": HTMLStyle,
    "numbers": lambda: widgets.Layout(margin="0 0 0 8px"),
    "worker row": lambda: widgets.Layout(width="100%"),
}


def _shared(name: str) -> Any:
    """One layout or style model for every bar of this kernel, made again if it was closed
    (`Widget.close_all()`). Each model costs the kernel about half a millisecond to build and
    send; five of them per bar were more than a 20 ms call can afford."""
    model = _SHARED.get(name)
    if model is None or model.comm is None:
        model = _SHARED[name] = _SHARED_MAKERS[name]()
    return model


def build_shared_models() -> None:
    """Build the shared models now, before the first bar (see `prestart`): it then costs what
    the next ones do."""
    for name in _SHARED_MAKERS:
        _shared(name)


def flush_written_output() -> None:
    """Send what the cell has printed so far, so that it shows before the bar of the call it
    makes; `WidgetView` then displays without flushing.

    ipykernel's display flushes stdout and stderr every time, written or not, and each flush is
    a round trip to its I/O thread: about half of what showing a bar cost (0.6 of 1.1 ms at
    load 5). A stream of ipykernel's says whether it holds output (`_flush_pending`); any other
    stream (redirected, a future ipykernel) is flushed as the display would have.
    """
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "_flush_pending", True):
            stream.flush()


_DISPLAYING = threading.Lock()  # one bar at a time changes how the publisher flushes


@contextlib.contextmanager
def _publisher_not_flushing() -> Iterator[None]:
    """ipykernel's display publisher, for one display, without its flush of the streams: the
    cell's own output was flushed when its call began (`flush_written_output`), and output
    written since (the workers') belongs after the bar. A display in another thread at that
    moment is not flushed either; a publisher without that flush (`%%capture`) is left as is."""
    publisher = getattr(get_ipython(), "display_pub", None)
    if not callable(getattr(publisher, "_flush_streams", None)):
        yield
        return
    with _DISPLAYING:
        publisher._flush_streams = _nothing_to_flush  # type: ignore[union-attr]
        try:
            yield
        finally:
            del publisher._flush_streams  # type: ignore[union-attr]


def _nothing_to_flush() -> None:
    """The flush of a display whose streams were flushed before it."""


class ProgressBox(widgets.Box):
    """The widget of one call, whose plain-text form is fixed when it is shown (stable for nbval)."""

    def __init__(self, children: list[Any], text: str) -> None:
        # One flex box that wraps: the bar and its numbers on a line, the worker row below.
        # Few widgets on purpose: each is a model the frontend must open before the call starts.
        # The class given with the model, not added after: `add_class` is one more message.
        super().__init__(children, layout=_shared("box"), _dom_classes=("nbparallel-progress",))
        self._text = text

    def __repr__(self) -> str:
        return self._text


class WidgetView:
    """Shows itself on creation; `show` updates it, `end` gives it its final colour."""

    def __init__(
        self,
        start: Snapshot,
        workers: Callable[[], Sequence[Any]] | None,
        timeline: Timeline | None = None,
        lanes: int = 0,
    ) -> None:
        self._seen: dict[int, Any] = {}  # pid -> last status seen
        self._next_workers = 0.0
        self.bar = widgets.FloatProgress(
            value=0.0,
            min=0.0,
            max=float(start.total or 1),
            description=start.name,
            style=_shared("bar style"),
            layout=_shared("bar"),
        )
        self.numbers = widgets.HTML(
            html.escape(start.text()),
            style=_shared("text style"),
            layout=_shared("numbers"),
        )
        children: list[Any] = [self.bar, self.numbers]
        # The row of workers, and where it learns about them; None without a row.
        self._worker_row: tuple[widgets.HTML, Callable[[], Sequence[Any]]] | None = None
        if workers is not None:
            row = widgets.HTML(
                "",
                style=_shared("text style"),
                layout=_shared("worker row"),
            )
            self._worker_row = (row, workers)
            children.append(self._worker_row[0])
        self._timeline: tuple[Any, Timeline] | None = None
        if timeline is not None:
            from .timeline import TimelineView  # only calls with insights on draw one

            view = TimelineView(lanes)
            self._timeline = (view, timeline)
            children.append(view.widget)
        self.box = ProgressBox(children, text=f"{start.name}: {start.text()}")
        # What display(box) sends, without asking every formatter.
        with _publisher_not_flushing():
            display(self.box._repr_mimebundle_(), raw=True)

    def show(self, snapshot: Snapshot, state: str = "running") -> None:
        if snapshot.total is not None:
            if self.bar.max != snapshot.total:  # a total learnt during the call (joblib's)
                self.bar.max = float(snapshot.total or 1)
            self.bar.value = snapshot.value
        elif state != "running":
            self.bar.value = self.bar.max  # unknown length: the bar fills when the count is final
        self.numbers.value = html.escape(snapshot.text(state))
        if self._worker_row is not None and (
            state != "running" or time.monotonic() >= self._next_workers
        ):
            self._next_workers = time.monotonic() + WORKERS_REDRAW_SECONDS
            row, workers = self._worker_row
            row.value = self._worker_chips(workers())
        if self._timeline is not None and state == "running":
            view, timeline = self._timeline
            view.update(timeline.spans(), timeline.start, time.time())

    def end(
        self, snapshot: Snapshot, state: str, insights: Callable[[], Any] | None = None
    ) -> None:
        """`insights`: makes the call's record (insights.Insights), for the final timeline."""
        with self.bar.hold_sync():  # the final value and colour in one message
            self.show(snapshot, state)
            self.bar.bar_style = BAR_STYLES[state]
        if self._timeline is not None and insights is not None:
            record = insights()
            self._timeline[0].finish(record.chunks, record.start, record.end, record.summary)

    def _worker_chips(self, workers: Sequence[Any]) -> str:
        current = {w.pid: w for w in workers}
        self._seen.update(current)
        chips = []
        for pid, worker in self._seen.items():
            state = worker.state if pid in current else "exited"
            memory = f" · {worker.memory_rss / 2**20:.0f} MiB" if pid in current else ""
            colour = _WORKER_COLOURS.get(state, "#57606a")
            chips.append(
                f'<span class="nbparallel-worker" data-state="{state}" style="border:1px solid {colour};'
                f'color:{colour};border-radius:4px;padding:0 4px;margin-right:4px">'
                f"{pid} {state} · {worker.tasks_done} tasks{memory}</span>"
            )
        return "".join(chips)
