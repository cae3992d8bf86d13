"""A live timeline of one call's workers: one lane per worker, a block per chunk, in inline SVG.

Drawn by ipywidgets' own HTML widget, so it renders in JupyterLab and Notebook with no front-end
code of ours, and its whole state is one string. The time axis always spans the call's wall time
so far. Blocks narrower than a pixel join their neighbours of the same state, so a lane has at
most a few rectangles per pixel of width whatever the number of chunks, and the lanes are capped:
the SVG's size is bounded. Imported only inside a kernel (it imports ipywidgets).
"""

from __future__ import annotations

import html
import itertools
import math
import operator
from collections.abc import Iterable
from time import perf_counter
from typing import NamedTuple, Protocol

import ipywidgets as widgets

PLOT_WIDTH = 640  # SVG units (pixels at full size) for the call's wall time
LABEL_WIDTH = 64  # the lane labels (pids) on the left
RIGHT_MARGIN = 24  # room for the last tick's label
MAX_LANE_PITCH = 16  # lane height plus the gap between lanes
MIN_LANE_PITCH = 5
MAX_PLOT_HEIGHT = 320  # many workers make thinner lanes, down to MIN_LANE_PITCH; then a note
MAX_LANES = MAX_PLOT_HEIGHT // MIN_LANE_PITCH
AXIS_HEIGHT = 22
MIN_WALL = 0.001  # seconds: the axis of a call that has just begun
# A block narrower than this (SVG units) joins its touching neighbour (see _merged): back-to-back
# blocks that narrow would look like one bar anyway. Wider ones keep a seam between them.
MERGE_WIDTH = 3.0
SEAM = 0.6
MAX_RECTS = 1200  # beyond, blocks merge at twice the width, and again: about 100 kB at most
SLOW_REDRAW = 0.02  # seconds; a redraw slower than this (tens of thousands of chunks) spaces
MAX_KERNEL_SHARE = 0.1  # the next ones, so that drawing takes at most this share of the kernel
TITLES_UP_TO = 400  # rectangles: beyond, no tooltip per chunk (they are most of the bytes)

# The progress bar's colours in JupyterLab's theme (the light theme's as fallback): blue while it
# runs, green when done, red when failed, orange for a chunk the call stopped before it finished.
COLOURS = {
    "running": "var(--jp-brand-color1,#1976d2)",
    "done": "var(--jp-success-color1,#388e3c)",
    "failed": "var(--jp-error-color1,#d32f2f)",
    "stopped": "var(--jp-warn-color1,#f57c00)",
}
_SHOWN_FIRST = {"failed": 0, "stopped": 1, "running": 2, "done": 3}  # a merged run's colour
_LANE_COLOUR = "var(--jp-layout-color2,#eeeeee)"
_TEXT_COLOUR = "var(--jp-ui-font-color2,#616161)"
TEXT_FORM = "nbparallel timeline"  # the widget's plain-text form: the same on every run (nbval)


_Chunk = tuple[float, float, str, int, int]  # begin, end, state, first item, items


class Span(Protocol):
    """One chunk as the timeline reads it (nbparallel.insights.ChunkSpan is one)."""

    @property
    def worker_id(self) -> int | str: ...  # pid (thread: its native id), or a dask address
    @property
    def first_item(self) -> int: ...
    @property
    def items(self) -> int: ...
    @property
    def sent(self) -> float: ...  # time.time() clock, as every field below
    @property
    def started(self) -> float | None: ...
    @property
    def finished(self) -> float | None: ...
    @property
    def received(self) -> float | None: ...
    @property
    def state(self) -> str: ...  # "running", "done" or "failed"


class TimelineHTML(widgets.HTML):
    """The timeline's widget: an HTML widget whose plain-text form never changes."""

    def __repr__(self) -> str:
        return TEXT_FORM


class _Run(NamedTuple):
    """One rectangle of a lane: a chunk, or adjacent chunks merged into one."""

    begin: float
    end: float
    state: str  # a merged run's: failed, else stopped, else running, else done
    first_item: int
    items: int
    chunks: int
    failed: int


class TimelineView:
    """The timeline of one call. `update` redraws it while the call runs, `finish` at its end.

    Args:
        lanes_hint: how many workers the call expects; that many lanes are drawn from the start,
            so the widget does not grow as workers take their first chunk.
    """

    def __init__(self, lanes_hint: int) -> None:
        if isinstance(lanes_hint, bool) or not isinstance(lanes_hint, int) or lanes_hint < 0:
            raise ValueError(
                f"lanes_hint must be a whole number of workers (0 or more), not {lanes_hint!r}"
            )
        self._lanes_hint = lanes_hint
        self._lanes: dict[int | str, int] = {}  # worker -> its lane, in the order they appeared
        self._due = -math.inf  # (the caller's clock) no redraw before this: the last was slow
        self.widget = TimelineHTML(
            self._render([], 0.0, 0.0, False, None), layout={"width": "100%"}
        )
        self.widget.add_class("nbparallel-timeline")

    def update(self, spans: Iterable[Span], start: float, now: float) -> None:
        """Redraw: the call began at `start`; chunks still running extend to `now`.

        A redraw reads every chunk (1 to 3 ms per 1,000 on our test machine). One that took over SLOW_REDRAW
        seconds makes the next ones wait, so that drawing takes at most a tenth of the kernel's
        time however many chunks the call has; calls sooner than that return at once."""
        if now < self._due:
            return
        began = perf_counter()
        self.widget.value = self._render(spans, start, now, False, None)
        cost = perf_counter() - began
        if cost > SLOW_REDRAW:
            self._due = now + cost * (1 - MAX_KERNEL_SHARE) / MAX_KERNEL_SHARE

    def finish(self, spans: Iterable[Span], start: float, end: float, summary: str) -> None:
        """The final drawing, with `summary` (plain text, one line) under it. A chunk still
        running when the call ended (it was stopped) is drawn up to `end`, in orange."""
        self.widget.value = self._render(spans, start, end, True, summary)

    def _render(
        self, spans: Iterable[Span], start: float, now: float, ended: bool, summary: str | None
    ) -> str:
        wall = max(now - start, MIN_WALL)
        scale = PLOT_WIDTH / wall  # SVG units per second
        lanes = _lanes_of(spans, now, ended)
        for worker in lanes:
            self._lanes.setdefault(worker, len(self._lanes))
        count = max(self._lanes_hint, len(self._lanes), 1)
        drawn = min(count, MAX_LANES)
        pitch = max(MIN_LANE_PITCH, min(MAX_LANE_PITCH, MAX_PLOT_HEIGHT // drawn))
        plot_height = drawn * pitch
        width = LABEL_WIDTH + PLOT_WIDTH + RIGHT_MARGIN
        height = plot_height + AXIS_HEIGHT
        parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" style="max-width:100%;height:auto;display:block" '
            f'font-size="10" font-family="var(--jp-ui-font-family,sans-serif)">',
            f'<g style="fill:{_LANE_COLOUR}">',
            *(
                f'<rect x="{LABEL_WIDTH}" y="{lane * pitch}" width="{PLOT_WIDTH}" height="{pitch - 2}"/>'
                for lane in range(drawn)
            ),
            "</g>",
        ]
        drawn_lanes = {  # top to bottom, so that the SVG is the same for the same picture
            w: lanes[w]
            for w in sorted(lanes, key=self._lanes.__getitem__)
            if self._lanes[w] < drawn
        }
        merge_width = MERGE_WIDTH
        while True:
            merged = {w: _merged(chunks, merge_width / scale) for w, chunks in drawn_lanes.items()}
            if sum(map(len, merged.values())) <= MAX_RECTS or merge_width >= PLOT_WIDTH:
                break
            merge_width *= 2
        titles = sum(len(runs) for runs in merged.values()) <= TITLES_UP_TO
        for worker, runs in merged.items():
            y = self._lanes[worker] * pitch
            parts.append(_lane_svg(worker, y, pitch, runs, start, scale, titles))
        parts.append(_axis_svg(plot_height, wall, count - drawn))
        parts.append("</svg>")
        if summary is not None:
            parts.append(
                '<div class="nbparallel-timeline-summary" style="margin:2px 0 0 4px">'
                f"{html.escape(summary)}</div>"
            )
        return "".join(parts)


_FIELDS = operator.attrgetter(
    "worker_id", "started", "sent", "state", "finished", "received", "first_item", "items"
)


def _lanes_of(spans: Iterable[Span], now: float, ended: bool) -> dict[int | str, list[_Chunk]]:
    """Each worker's chunks as (begin, end, state, first item, items), in the order given."""
    lanes: dict[int | str, list[_Chunk]] = {}
    for worker, begin, sent, state, finished, received, first_item, items in map(_FIELDS, spans):
        if begin is None:
            begin = sent
        if state == "running":
            end = now
            if ended:
                state = "stopped"
        elif finished is not None:
            end = finished
        else:
            end = received if received is not None else now
        if begin > now:
            begin = now
        if end > now:
            end = now
        elif end < begin:
            end = begin
        lane = lanes.get(worker)
        if lane is None:
            lane = lanes[worker] = []
        lane.append((begin, end, state, first_item, items))
    return lanes


def _merged(chunks: list[_Chunk], merge_seconds: float) -> list[_Run]:
    """One lane's chunks as runs, each at least `merge_seconds` wide or standing alone.

    Chunks of one state merge where they overlap, or touch and either is narrow; a narrow run
    takes in touching narrow chunks of any state and shows the most telling of them (a failure
    first). What remains is at most two runs per `merge_seconds` of the lane, plus overlaps.
    The run being built lives in local variables: this loop sees every chunk of the call."""
    chunks.sort()  # nearly sorted already (a worker runs its chunks in turn): cheap
    runs: list[_Run] = []
    begin0, end0, state0, first0, items0 = chunks[0]  # a lane has a chunk, or it is not there
    count0, failed0 = 1, int(state0 == "failed")
    for begin, end, state, first_item, items in itertools.islice(chunks, 1, None):
        narrow = end - begin < merge_seconds
        touching = begin - end0 < merge_seconds
        if state == state0:
            merge = begin < end0 or (touching and (narrow or end0 - begin0 < merge_seconds))
        else:
            merge = touching and narrow and end0 - begin0 < merge_seconds
        if merge:
            if end > end0:
                end0 = end
            count0 += 1
            items0 += items
            if state == "failed":
                failed0 += 1
            if _SHOWN_FIRST[state] < _SHOWN_FIRST[state0]:
                state0 = state
        else:
            runs.append(_Run(begin0, end0, state0, first0, items0, count0, failed0))
            begin0, end0, state0, first0, items0 = begin, end, state, first_item, items
            count0, failed0 = 1, int(state == "failed")
    runs.append(_Run(begin0, end0, state0, first0, items0, count0, failed0))
    return runs


def _lane_svg(
    worker: int | str,
    y: int,
    pitch: int,
    runs: list[_Run],
    start: float,
    scale: float,
    titles: bool,
) -> str:
    """One worker's lane: its label, its totals, and its runs grouped by state (one fill each).
    A dask worker's address is labelled by its port (the lane's title has it whole)."""
    label = html.escape(str(worker))
    short = html.escape(f":{worker.rsplit(':', 1)[-1]}") if isinstance(worker, str) else label
    chunks = sum(run.chunks for run in runs)
    items = sum(run.items for run in runs)
    parts = [
        f'<g class="nbparallel-lane" transform="translate(0,{y})" data-worker="{label}" '
        f'data-chunks="{chunks}" data-items="{items}">'
        f"<title>{label}: {chunks} chunks, {items} items</title>"
    ]
    if pitch >= 10:
        parts.append(
            f'<text x="{LABEL_WIDTH - 4}" y="{pitch - 5}" text-anchor="end" '
            f'style="fill:{_TEXT_COLOUR}">{short}</text>'
        )
    for state, colour in COLOURS.items():
        rects = [_rect(run, pitch, start, scale, titles) for run in runs if run.state == state]
        if rects:
            parts.append(f'<g data-state="{state}" style="fill:{colour}">{"".join(rects)}</g>')
    parts.append("</g>")
    return "".join(parts)


def _rect(run: _Run, pitch: int, start: float, scale: float, title: bool) -> str:
    """A run's rectangle; merged runs say how many chunks and items they hold."""
    begin = max(run.begin, start)
    width = (max(run.end, begin) - begin) * scale
    if width > MERGE_WIDTH:
        width -= SEAM  # back-to-back chunks stay apart
    merged = f' data-chunks="{run.chunks}" data-items="{run.items}"' if run.chunks > 1 else ""
    text = ""
    if title:
        if run.chunks > 1:
            failed = f" ({run.failed} failed)" if run.failed else ""
            what = f"{run.chunks} chunks{failed}, {run.items} items"
        elif run.items == 1:
            what = f"item {run.first_item}"
        else:
            what = f"items {run.first_item}-{run.first_item + run.items - 1}"
        text = f"<title>{what}: {_seconds(run.end - run.begin)} {run.state}</title>"
    return (
        f'<rect x="{LABEL_WIDTH + (begin - start) * scale:.1f}" width="{max(width, 1.0):.1f}" '
        f'height="{pitch - 2}"{merged}>{text}</rect>'
    )


def _axis_svg(plot_height: int, wall: float, not_drawn: int) -> str:
    """The time axis under the lanes, with ticks at 1, 2 or 5 times a power of ten seconds."""
    step = _tick_step(wall / 5)
    y = plot_height + 2
    parts = [
        f'<g class="nbparallel-axis" style="fill:{_TEXT_COLOUR};stroke:{_TEXT_COLOUR}">',
        f'<line x1="{LABEL_WIDTH}" y1="{y}" x2="{LABEL_WIDTH + PLOT_WIDTH}" y2="{y}"/>',
    ]
    for index in range(int(wall / step + 1e-9) + 1):
        x = LABEL_WIDTH + index * step / wall * PLOT_WIDTH
        parts.append(
            f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 4}"/>'
            f'<text x="{x:.1f}" y="{y + 15}" text-anchor="middle" stroke="none">'
            f"{_seconds(index * step)}</text>"
        )
    if not_drawn:
        parts.append(
            f'<text x="{LABEL_WIDTH - 4}" y="{y + 15}" text-anchor="end" stroke="none">'
            f"+{not_drawn} more</text>"
        )
    parts.append("</g>")
    return "".join(parts)


def _tick_step(least: float) -> float:
    """The smallest round step of at least `least` seconds: 1, 2 or 5 times a power of ten
    below half a minute, then whole minutes people count in (1, 2, 5, 10, 15, 30, 60, ...)."""
    if least < 30:
        magnitude = 10 ** math.floor(math.log10(least))
        return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= least)
    minutes = least / 60
    for step in (1, 2, 5, 10, 15, 30):
        if step >= minutes:
            return step * 60.0
    return 3600 * _tick_step(least / 3600)


def _seconds(value: float) -> str:
    """A duration as people read it: "0.25 s", "12 s", "3 min 20 s"."""
    if value < 60:
        return f"{float(f'{value:.3g}'):g} s"
    minutes, seconds = divmod(round(value), 60)
    return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"
