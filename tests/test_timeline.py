"""The live timeline of a call's workers, as the frontend gets it: the HTML widget's value (an
inline SVG), read back as a tree; and in a real kernel, rebuilt from its widget messages."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ElementTree

import pytest

from nbparallel.timeline import (
    COLOURS,
    LABEL_WIDTH,
    MAX_LANES,
    MAX_RECTS,
    PLOT_WIDTH,
    TimelineView,
)

from .conftest import ROOT
from .kernel import Kernel
from .spans import Span

SVG = "{http://www.w3.org/2000/svg}"


def done(worker: int, first_item: int, started: float, finished: float, items: int = 1) -> Span:
    return Span(worker, first_item, items, started - 0.01, started, finished, finished, "done")


def running(worker: int, first_item: int, started: float | None, sent: float = 0.0) -> Span:
    return Span(worker, first_item, 1, sent, started, None, None, "running")


@dataclasses.dataclass
class Drawing:
    """A timeline's state read back: its lanes by worker label, and the summary under it."""

    root: ElementTree.Element

    @classmethod
    def of(cls, value: str) -> Drawing:
        # Well-formed XML or this fails: every interpolated text was escaped.
        return cls(ElementTree.fromstring(f"<div>{value}</div>"))

    @property
    def svg(self) -> ElementTree.Element:
        return self.root.find(f"{SVG}svg")

    @property
    def lanes(self) -> dict[str, ElementTree.Element]:
        return {
            lane.get("data-worker"): lane
            for lane in self.svg.iter(f"{SVG}g")
            if lane.get("class") == "nbparallel-lane"
        }

    def labels(self) -> list[str]:
        """The lanes' labels, top to bottom as the user sees them."""
        lanes = sorted(self.lanes.values(), key=lambda lane: float(lane.get("transform")[12:-1]))
        return [lane.findtext(f"{SVG}text") for lane in lanes]

    def blocks(self, worker: str, state: str | None = None) -> list[tuple[float, float]]:
        """(x, width) of each rectangle in the worker's lane, in one state or in any."""
        found = []
        for group in self.lanes[worker].iter(f"{SVG}g"):
            if group.get("data-state") and state in (None, group.get("data-state")):
                found += [
                    (float(r.get("x")), float(r.get("width"))) for r in group.iter(f"{SVG}rect")
                ]
        return sorted(found)

    def fill(self, worker: str, state: str) -> str:
        (group,) = [g for g in self.lanes[worker].iter(f"{SVG}g") if g.get("data-state") == state]
        return group.get("style")

    @property
    def backgrounds(self) -> int:
        """How many lanes are drawn (each has a background band), with or without a worker."""
        first_group = self.svg.find(f"{SVG}g")
        return len(first_group.findall(f"{SVG}rect"))

    @property
    def summary(self) -> str | None:
        found = self.root.find("div")
        return None if found is None else found.text

    def ticks(self) -> list[str]:
        axis = next(g for g in self.svg.iter(f"{SVG}g") if g.get("class") == "nbparallel-axis")
        return [text.text for text in axis.iter(f"{SVG}text")]


def drawn(view: TimelineView) -> Drawing:
    return Drawing.of(view.widget.value)


def x_of(seconds: float, wall: float) -> float:
    return LABEL_WIDTH + seconds / wall * PLOT_WIDTH


def test_one_lane_per_worker_labelled_with_its_pid_in_the_order_they_appeared():
    view = TimelineView(lanes_hint=4)
    assert drawn(view).backgrounds == 4 and drawn(view).lanes == {}  # room for 4, none yet
    spans = [done(4242, 0, 100.0, 101.0), done(17, 1, 100.0, 101.5), done(4242, 2, 101.0, 102.0)]
    view.update(spans, start=100.0, now=102.0)
    assert drawn(view).labels() == ["4242", "17"]
    assert drawn(view).backgrounds == 4
    # A third worker (a replacement, say) gets a lane of its own; the first two keep theirs,
    # even when the spans come in another order.
    view.update([done(99, 3, 102.0, 103.0), *reversed(spans)], start=100.0, now=103.0)
    assert drawn(view).labels() == ["4242", "17", "99"]
    lanes = drawn(view).lanes
    assert [lanes[w].get("data-chunks") for w in ("4242", "17", "99")] == ["2", "1", "1"]
    # More workers than the hint: more lanes, never fewer than there are workers.
    view.update([done(w, w, 100.0, 101.0) for w in range(6)], start=100.0, now=103.0)
    assert drawn(view).backgrounds == 9 and len(drawn(view).lanes) == 6


def test_dask_workers_of_one_process_get_a_lane_each_labelled_with_their_port():
    """Dask workers are told apart by their address (workers in one process share a pid)."""
    view = TimelineView(lanes_hint=2)
    first, second = "tls://127.0.0.1:40001", "tls://127.0.0.1:40002"
    spans = [
        dataclasses.replace(done(500, 0, 100.0, 101.0), worker_name=first),
        dataclasses.replace(done(500, 1, 100.0, 101.5), worker_name=second),
        dataclasses.replace(done(500, 2, 101.0, 102.0), worker_name=first),
    ]
    view.update(spans, start=100.0, now=102.0)
    picture = drawn(view)
    assert picture.labels() == [":40001", ":40002"]
    assert picture.lanes[first].get("data-chunks") == "2"
    assert picture.lanes[second].findtext(f"{SVG}title").startswith(f"{second}: 1 chunks")


def test_blocks_are_placed_in_proportion_to_the_calls_wall_time():
    view = TimelineView(2)
    # A 10-second call so far: chunks at 2-7 s, and 0-1 s and 8-10 s on the other worker.
    view.update(
        [done(1, 0, 102.0, 107.0), done(2, 1, 100.0, 101.0), done(2, 2, 108.0, 110.0)],
        start=100.0,
        now=110.0,
    )
    assert drawn(view).blocks("1") == [
        (pytest.approx(x_of(2, 10), abs=0.1), pytest.approx(x_of(5, 10) - LABEL_WIDTH, abs=1))
    ]
    (first, second) = drawn(view).blocks("2")
    assert first[0] == pytest.approx(x_of(0, 10), abs=0.1) and first[1] == pytest.approx(64, abs=1)
    assert second[0] == pytest.approx(x_of(8, 10), abs=0.1) and second[1] == pytest.approx(
        128, abs=1
    )
    # Twice the wall time: the same chunks take half the width.
    view.update([done(1, 0, 102.0, 107.0)], start=100.0, now=120.0)
    ((x, width),) = drawn(view).blocks("1")
    assert x == pytest.approx(x_of(2, 20), abs=0.1) and width == pytest.approx(160, abs=1)
    assert drawn(view).ticks() == ["0 s", "5 s", "10 s", "15 s", "20 s"]


def test_blocks_are_coloured_like_the_bar_by_their_state():
    view = TimelineView(1)
    failed = Span(7, 1, 1, 100.0, 101.0, 102.0, 102.1, "failed")
    view.update([done(7, 0, 100.0, 101.0), failed, running(7, 2, 102.0)], start=100.0, now=104.0)
    picture = drawn(view)
    assert [len(picture.blocks("7", state)) for state in ("done", "failed", "running")] == [1, 1, 1]
    # The bar's own theme colours: brand blue while running, then green or red.
    assert "--jp-success-color1" in picture.fill("7", "done")
    assert "--jp-error-color1" in picture.fill("7", "failed")
    assert "--jp-brand-color1" in picture.fill("7", "running")
    assert picture.fill("7", "done") == f"fill:{COLOURS['done']}"


def test_a_running_chunk_extends_to_now_and_one_not_yet_started_from_when_it_was_sent():
    view = TimelineView(2)
    spans = [running(1, 0, started=102.0), running(2, 1, started=None, sent=104.0)]
    for now in (105.0, 110.0, 140.0):
        view.update(spans, start=100.0, now=now)
        wall = now - 100.0
        ((x, width),) = drawn(view).blocks("1", "running")
        assert x == pytest.approx(x_of(2, wall), abs=0.1)
        assert x + width == pytest.approx(LABEL_WIDTH + PLOT_WIDTH, abs=1)  # to the right edge
        ((x, width),) = drawn(view).blocks("2", "running")
        assert x == pytest.approx(x_of(4, wall), abs=0.1)
        assert x + width == pytest.approx(LABEL_WIDTH + PLOT_WIDTH, abs=1)


def test_ten_thousand_tiny_chunks_merge_into_few_blocks_that_keep_their_counts():
    view = TimelineView(4)
    # 10,000 chunks of 2 items, 1 ms each, back to back on 4 workers, one of them failed.
    spans = [
        done(1000 + n % 4, 2 * n, 100 + (n // 4) * 0.001, 100 + (n // 4 + 1) * 0.001, items=2)
        for n in range(10_000)
    ]
    spans[5001] = dataclasses.replace(spans[5001], state="failed")
    view.update(spans, start=100.0, now=102.5)
    picture = drawn(view)
    assert list(picture.lanes) == ["1000", "1001", "1002", "1003"]
    lanes = picture.lanes.values()
    assert sum(int(lane.get("data-chunks")) for lane in lanes) == 10_000
    assert sum(int(lane.get("data-items")) for lane in lanes) == 20_000
    # Worker 1001's lane: done, the failed chunk on its own (at least a pixel wide), done again.
    assert len(picture.blocks("1001", "done")) == 2
    ((x, width),) = picture.blocks("1001", "failed")
    assert x == pytest.approx(x_of(1.25, 2.5), abs=0.5) and width >= 1
    # The others are one solid block each, whose rectangle says what it holds.
    for worker in ("1000", "1002", "1003"):
        ((x, width),) = picture.blocks(worker)
        assert (x, width) == (pytest.approx(LABEL_WIDTH, abs=0.1), pytest.approx(PLOT_WIDTH, abs=1))
        (rect,) = picture.lanes[worker].iter(f"{SVG}rect")
        assert (rect.get("data-chunks"), rect.get("data-items")) == ("2500", "5000")
    assert len(view.widget.value) < 5_000


def every_10_ms(workers: int, chunks: int) -> list[Span]:
    """Chunks of 4 ms every 10 ms on each worker: wide enough to be drawn one by one."""
    return [
        done(w, n, 100 + n * 0.01, 100 + n * 0.01 + 0.004)
        for w in range(workers)
        for n in range(chunks)
    ]


def test_blocks_wide_enough_are_drawn_one_by_one_and_without_tooltips_when_many():
    view = TimelineView(8)
    view.update(every_10_ms(8, 100), start=100.0, now=101.0)
    picture = drawn(view)
    assert [len(picture.blocks(str(w))) for w in range(8)] == [100] * 8
    assert "<title>item" not in view.widget.value  # 800 tooltips would be most of the bytes
    view.update(every_10_ms(2, 100), start=100.0, now=101.0)
    assert view.widget.value.count("<title>item") == 200


def test_the_drawing_stays_small_however_many_workers_and_chunks():
    view = TimelineView(200)
    view.update(every_10_ms(200, 100), start=100.0, now=101.0)
    picture = drawn(view)
    assert picture.backgrounds == MAX_LANES and len(picture.lanes) == MAX_LANES
    assert f"+{200 - MAX_LANES} more" in picture.ticks()
    # 6,400 blocks to draw are too many: they merge into fewer, each lane keeping its counts.
    drawn_blocks = sum(len(picture.blocks(str(w))) for w in range(MAX_LANES))
    assert MAX_LANES <= drawn_blocks <= MAX_RECTS
    assert {lane.get("data-chunks") for lane in picture.lanes.values()} == {"100"}
    assert len(view.widget.value) < 100_000


def test_a_slow_redraw_spaces_the_next_so_drawing_takes_a_tenth_of_the_kernel(monkeypatch):
    from nbparallel import timeline

    view = TimelineView(1)
    spans = [running(1, 0, started=100.0)]
    clock = iter([0.0, 0.5])  # the kernel's clock around the first redraw: it took 0.5 s
    monkeypatch.setattr(timeline, "perf_counter", lambda: next(clock))
    view.update(spans, start=100.0, now=101.0)
    first = view.widget.value
    monkeypatch.setattr(timeline, "perf_counter", lambda: 0.0)  # the next ones are quick
    view.update(spans, start=100.0, now=105.0)  # 4 s later: sooner than 9 x 0.5 s
    assert view.widget.value == first
    view.update(spans, start=100.0, now=105.6)
    assert view.widget.value != first
    ticks_then = drawn(view).ticks()
    view.update(spans, start=100.0, now=130.0)  # quick redraws space nothing
    assert drawn(view).ticks() != ticks_then
    # The end is drawn whatever came before it.
    monkeypatch.setattr(timeline, "perf_counter", iter([0.0, 9.0, 0.0, 0.0]).__next__)
    view.update(spans, start=100.0, now=131.0)
    view.finish(spans, start=100.0, end=131.5, summary="done")
    assert drawn(view).summary == "done"


def test_finish_draws_the_end_with_the_summary_under_it_escaped():
    view = TimelineView(2)
    spans = [done(1, 0, 100.0, 101.0), running(2, 1, started=100.5)]
    view.update(spans, start=100.0, now=101.0)
    assert drawn(view).summary is None
    summary = 'efficiency 48% · workers waited: try chunksize=<8> & see "item 17"'
    view.finish(spans, start=100.0, end=102.0, summary=summary)
    picture = drawn(view)
    assert picture.summary == summary  # the text as given, after the browser unescapes it
    assert "<8>" not in view.widget.value and "&lt;8&gt;" in view.widget.value
    # A chunk still running when the call ended was stopped: drawn to the end, in orange.
    ((x, width),) = picture.blocks("2", "stopped")
    assert "--jp-warn-color1" in picture.fill("2", "stopped")
    assert x + width == pytest.approx(LABEL_WIDTH + PLOT_WIDTH, abs=1)
    assert picture.blocks("2", "running") == []


def test_the_text_form_is_the_same_whatever_the_drawing():
    view = TimelineView(3)
    before = repr(view.widget)
    view.update([done(123456, 0, 100.0, 101.0)], start=100.0, now=101.0)
    view.finish([], start=100.0, end=102.0, summary="efficiency 99%")
    assert before == repr(view.widget) == "nbparallel timeline"
    assert view.widget._repr_mimebundle_()["text/plain"] == "nbparallel timeline"


def test_axis_ticks_read_as_round_seconds_then_minutes():
    view = TimelineView(1)
    for wall, ticks in [
        (2.6, ["0 s", "1 s", "2 s"]),
        (0.05, ["0 s", "0.01 s", "0.02 s", "0.03 s", "0.04 s", "0.05 s"]),
        (150.0, ["0 s", "1 min", "2 min"]),
        (100.0, ["0 s", "20 s", "40 s", "1 min", "1 min 20 s", "1 min 40 s"]),
    ]:
        view.update([], start=100.0, now=100.0 + wall)
        assert drawn(view).ticks() == ticks, wall


def test_a_lanes_hint_that_is_not_a_count_is_refused():
    with pytest.raises(ValueError, match="lanes_hint must be a whole number of workers .* not -1"):
        TimelineView(-1)
    with pytest.raises(ValueError, match="not '4'"):
        TimelineView("4")  # type: ignore[arg-type]


# --- in a real kernel ------------------------------------------------------------------

LIVE = '''
import os, sys, threading, time
from IPython.display import display
from nbparallel.timeline import TimelineView
sys.path.insert(0, ROOT)
from tests.spans import Span

def draw_until(view, path, deadline=30):
    """Chunks of 0.1 s alternating on two workers, redrawn 20 times a second until `path` exists."""
    start = time.time()
    while not os.path.exists(path) and time.time() < start + deadline:
        now = time.time()
        spans = []
        for n in range(int((now - start) / 0.1) + 1):
            begin = start + 0.1 * n
            end = begin + 0.1
            finished = end if end <= now else None
            spans.append(Span(101 + n % 2, n, 1, begin, begin, finished, finished,
                              "done" if finished else "running"))
        view.update(spans, start, now)
        time.sleep(0.05)
    view.finish(spans, start, time.time(), "efficiency 100% <of 2 workers>")

view = TimelineView(2)
display(view.widget)
drawer = threading.Thread(target=draw_until, args=(view, PATH), daemon=True)
drawer.start()
'''


@pytest.mark.kernel
def test_the_timeline_moves_in_a_kernel_and_keeps_its_final_state(tmp_path):
    marker = tmp_path / "stop"
    kernel = Kernel(tmp_path)
    try:
        reply = kernel.ok(LIVE.replace("PATH", repr(str(marker))).replace("ROOT", repr(str(ROOT))))
        assert reply.results == ["nbparallel timeline"]  # what nbval compares
        (model_id,) = reply.widget_views
        state = kernel.widgets[model_id]
        assert state["_model_name"] == "HTMLModel"
        assert "nbparallel-timeline" in state["_dom_classes"]

        seen: list[int] = []  # chunks drawn, in each state of the widget the frontend got

        def moved_three_times() -> bool:
            lanes = Drawing.of(state["value"]).lanes
            chunks = sum(int(lane.get("data-chunks")) for lane in lanes.values())
            if not seen or seen[-1] != chunks:
                seen.append(chunks)
            return len(seen) >= 4

        kernel.read_until(moved_three_times)
        assert seen == sorted(seen)
        picture = Drawing.of(state["value"])
        assert picture.labels() == ["101", "102"] and picture.blocks("101", "done")
        marker.touch()
        kernel.read_until(lambda: "<div" in state["value"])
        picture = Drawing.of(state["value"])
        assert picture.summary == "efficiency 100% <of 2 workers>"
        assert list(picture.lanes) == ["101", "102"] and picture.blocks("102", "done")
    finally:
        marker.touch()
        kernel.shutdown()
