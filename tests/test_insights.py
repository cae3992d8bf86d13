"""insights=True: where each worker's time went, the slowest items, hints, the Chrome trace, the
terminal table, `%parallel insights`, and the live timeline under the bar in a real kernel."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import time

import pytest

from nbparallel import (
    ChunkSpan,
    Insights,
    OptionError,
    messages,
    outcomes,
    parallel,
    recording,
    slots,
    tasks,
    timing,
)
from nbparallel.execution import run_chunk

from .conftest import run_script

pytestmark = pytest.mark.usefixtures("quiet_progress")


def nap(seconds):
    time.sleep(seconds)
    return seconds


def slow_seventh(x):
    time.sleep(0.8 if x == 7 else 0.02)
    return x


@pytest.fixture(params=["processes", "threads"])
def backend(request):
    parallel.map(nap, [0.0, 0.0], backend=request.param, workers=2)  # started: no start-up
    return request.param


def test_working_times_are_the_items_own_times_and_efficiency_is_as_expected(backend):
    sleeps = [0.4, 0.4, 0.4, 0.4]  # 2 items each for 2 workers: ideally busy all along
    assert (
        parallel.map(nap, sleeps, insights=True, workers=2, chunksize=1, backend=backend) == sleeps
    )
    record = parallel.insights()
    assert (record.name, record.backend, record.items, len(record.chunks)) == ("nap", backend, 4, 4)
    assert isinstance(record, Insights) and all(isinstance(c, ChunkSpan) for c in record.chunks)
    for span, cost in zip(record.chunks, record.costs, strict=True):
        assert span.state == "done" and span.items == 1
        assert cost.item_seconds[0] == pytest.approx(sleeps[span.first_item], rel=0.2)
        assert span.sent <= span.started <= span.finished <= span.received
    assert len(record.workers) == 2
    for worker in record.workers:
        ran = [s for s in record.chunks if s.worker == worker.pid]
        assert worker.working == pytest.approx(sum(sleeps[s.first_item] for s in ran), rel=0.2)
        assert (worker.tasks, worker.items) == (len(ran), len(ran))
        parts = ("startup", "waiting", "working", "transfer")
        assert sum(worker.share(part) for part in parts) == pytest.approx(1.0, abs=0.01)
    assert record.efficiency > 0.8
    assert record.hints == ()

    skewed = [0.8, 0.2]  # one worker works 0.8 s, the other 0.2 s: 1.0 / (2 x 0.8)
    parallel.map(nap, skewed, insights=True, workers=2, chunksize=1, backend=backend)
    assert 0.5 <= parallel.insights().efficiency <= 0.7


def test_a_dominating_slow_item_is_named_in_the_slowest_list_and_in_the_hint(backend):
    parallel.map(slow_seventh, range(12), insights=True, workers=2, chunksize=1, backend=backend)
    record = parallel.insights()
    slowest = record.slowest[0]
    assert (slowest.position, slowest.args) == (7, "7")
    assert slowest.seconds == pytest.approx(0.8, rel=0.2)
    assert len(record.slowest) == 5 and all(i.seconds < 0.2 for i in record.slowest[1:])
    assert re.match(r"one item took \d+% of the time: item 7 \(7\)", record.hints[0])
    shown = repr(record)
    assert "slowest items:" in shown and "hint: one item took" in shown
    assert record.summary.startswith("efficiency ") and "item 7" in record.summary


def test_too_small_chunks_hint_a_bigger_chunksize():
    parallel.map(abs, range(4), workers=2)
    parallel.map(abs, range(2000), insights=True, workers=2, chunksize=1)
    record = parallel.insights()
    assert record.efficiency < 0.5
    assert any(
        re.match(
            r"workers waited \d+% of the time for work: chunks too small, try chunksize=\d+", h
        )
        for h in record.hints
    ), record.hints


def test_equal_items_name_no_single_item_as_the_cause(backend):
    parallel.map(nap, [0.3] * 3, insights=True, workers=2, chunksize=1, backend=backend)
    record = parallel.insights()
    assert not any(h.startswith("one item took") for h in record.hints), record.hints


def test_workers_replaced_during_a_call_are_the_hint_not_the_chunk_size(session):
    session.configure(workers=2, max_tasks_per_worker=1)
    session.map(nap, [0.01] * 6, insights=True, chunksize=1)
    record = session.insights()
    assert len(record.workers) > 2
    assert any("started during the call" in h for h in record.hints), record.hints
    assert not any("chunksize" in h for h in record.hints), record.hints


def test_a_timed_out_item_is_the_slowest_with_the_time_it_ran():
    parallel.map(
        nap, [0.0, 0.0], workers=2
    )  # workers have imported this module: 0.5 s is for items
    with pytest.raises(TimeoutError, match="item 5"):
        parallel.map(nap, [0.01] * 5 + [30], insights=True, timeout=0.5, chunksize=1, workers=2)
    record = parallel.insights()
    slowest = record.slowest[0]
    assert slowest.position == 5 and 0.5 <= slowest.seconds < 5
    assert max(w.working for w in record.workers) >= 0.45
    assert any(h.startswith("one item took") and "item 5" in h for h in record.hints)


def fails_on_two(x):
    time.sleep(0.05)
    if x == 2:
        raise ValueError("two")
    return x


def test_a_call_that_failed_with_chunks_out_says_so_and_blames_no_chunk_size(backend):
    with pytest.raises(ValueError, match="two"):
        parallel.map(fails_on_two, range(20), insights=True, workers=2, backend=backend)
    record = parallel.insights()
    assert record.ended_early and "stopped before its end" in record.summary
    assert not any("chunk" in h for h in record.hints), record.hints
    assert {span.state for span in record.chunks} <= {"failed", "stopped"}


def slow_at_5100(x):
    if x == 5100:
        time.sleep(0.3)
    return x


def test_a_slow_item_among_tiny_ones_shows_as_its_group_timed_together(backend):
    """Tiny items are timed in groups: the group that held the slow one is named, with the time
    it took (as 1,000 items of its average, it was lost among the others)."""
    parallel.map(slow_at_5100, range(10_000), insights=True, workers=2, backend=backend)
    group = parallel.insights().slowest[0]
    assert group.items > 1 and group.position <= 5100 < group.position + group.items
    assert (
        group.seconds >= 0.3
        and group.label == f"items {group.position}-{group.position + group.items - 1}"
    )
    assert "timed together" in parallel.insights().hints[0]
    assert group.label in repr(parallel.insights())


def test_tiny_items_are_timed_in_groups_and_slow_ones_one_by_one():
    """A clock read per tiny item would cost as much as the item: they are timed in groups."""
    tiny = timing.ItemClock()
    run_chunk(lambda x: x + 1, range(100_000), "map", 5, slots.local_slot(1), False, tiny)
    assert sum(tiny.group_items) == 100_000 and len(tiny.group_items) < 100
    slow = timing.ItemClock()
    run_chunk(nap, [0.002] * 10, "map", 5, slots.local_slot(1), False, slow)
    assert list(slow.group_items) == [1] * 10
    assert all(0.0019 <= each < 0.1 for each in slow.group_seconds)  # a sleep is never shorter
    # With errors="return", an item that raises is timed too, and the chunk goes on.
    failing = timing.ItemClock()
    out = run_chunk(fails_on_three, range(1000), "map", 5, slots.local_slot(1), True, failing)
    assert len(out) == sum(failing.group_items) == 1000


def test_chrome_trace_is_json_with_a_track_per_worker_and_a_complete_event_per_chunk(tmp_path):
    parallel.map(abs, range(40), insights=True, workers=2, chunksize=5)
    record = parallel.insights()
    path = tmp_path / "trace.json"
    record.to_chrome_trace(path)
    events = json.loads(path.read_text())["traceEvents"]
    chunks = [e for e in events if e["ph"] == "X"]
    assert len(chunks) == len(record.chunks) == 8
    assert sorted(e["name"] for e in chunks) == sorted(
        f"items {i}-{i + 4}" for i in range(0, 40, 5)
    )
    pids = {span.worker for span in record.chunks}
    assert {(e["pid"], e["tid"]) for e in chunks} == {(pid, pid) for pid in pids}
    assert all(e["ts"] >= 0 and e["dur"] >= 0 for e in chunks)
    names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert names == {pid: f"worker {pid}" for pid in pids}

    record.to_chrome_trace(path, items=True)
    items = [e for e in json.loads(path.read_text())["traceEvents"] if e.get("cat") == "item"]
    assert sorted(e["name"] for e in items) == sorted(f"item {i}" for i in range(40))
    # An int would be opened as a file descriptor (closing one of the process's own).
    with pytest.raises(TypeError, match="file path"):
        record.to_chrome_trace(3)  # type: ignore[arg-type]


def test_insights_off_records_nothing_and_sends_no_timing(session, monkeypatch):
    seen = []
    accept = outcomes.Tracker.accept

    def watched(tracker, event):
        seen.append(event)
        return accept(tracker, event)

    monkeypatch.setattr(outcomes.Tracker, "accept", watched)
    assert session.map(abs, range(-20, 0), chunksize=5) == list(range(20, 0, -1))
    assert len(seen) == 4
    assert all(isinstance(e, messages.TaskDone) and e.timing is None for e in seen)
    with pytest.raises(LookupError, match="run one with insights=True"):
        session.insights()
    session.configure(insights=True)
    assert session.submit(abs, -1).result() == 1
    with pytest.raises(LookupError, match="submit, joblib's calls and every-worker setup do not"):
        session.insights()


def test_insights_come_from_the_decorator_and_from_configure(session):
    @session.map(insights=True)
    def double(x):
        return 2 * x

    assert double(range(10)) == list(range(0, 20, 2))
    assert session.insights().name.endswith("double")
    session.configure(insights=True)
    assert session.map(abs, [-1, -2]) == [1, 2]
    assert session.insights().name == "abs" and session.insights().items == 2


@pytest.mark.parametrize(
    "make_call",
    [
        lambda: parallel.map(abs, [1], insights="yes"),
        lambda: parallel.configure(insights=1),
        lambda: parallel.map(insights="on")(abs),
    ],
)
def test_a_bad_insights_value_raises_option_error_naming_it(make_call):
    with pytest.raises(
        OptionError, match=r"insights=.* is not valid: insights must be True or False"
    ):
        make_call()


def fails_on_three(x):
    if x == 3:
        raise ValueError("three")
    return x


def test_failed_chunks_and_a_dead_worker_are_marked_failed():
    out = parallel.map(fails_on_three, range(6), insights=True, chunksize=2, errors="return")
    assert isinstance(out[3], ValueError)
    states = {s.first_item: s.state for s in parallel.insights().chunks}
    assert states == {0: "done", 2: "failed", 4: "done"}

    parallel.map(
        lambda x: os._exit(1) if x == 1 else x,
        [0, 1],
        insights=True,
        chunksize=1,
        errors="return",
    )
    states = sorted((s.first_item, s.state) for s in parallel.insights().chunks)
    assert states == [(0, "done"), (1, "failed")]


def test_the_record_is_built_when_first_read_once_and_not_by_the_call(monkeypatch):
    """Building it (rows, hints) is off the call's path to its results: a call whose record
    nobody reads builds none, and reading it twice gives the same record."""
    built = []
    monkeypatch.setattr(recording, "hints", lambda record: built.append(record) or [])
    parallel.map(nap, [0.01] * 4, insights=True, chunksize=1)
    assert built == []
    first = parallel.insights()
    assert parallel.insights() is first and built == [first]
    assert first.items == 4 and len(first.chunks) == 4


def test_a_record_is_the_same_whether_the_live_timeline_read_it_during_the_call_or_not():
    """Chunk spans are made when read: read after each answer (a live timeline) or only at the
    end, the record is the same; its slowest items keep the repr they had when the call ended."""

    def timing(worker, took):
        return messages.Timing(
            worker, 1.0, 2.0, 3.0, 0.1, 0.1, took, [1], [took], [(0, took, 1)], 4.0
        )

    records = []
    for read_live in (False, True):
        recorder = recording.Recorder("f", "processes", 2)
        items = [[n] for n in range(6)]
        for n, item in enumerate(items):
            chunk = tasks.Chunk(n, n, 1, [item])
            recorder.ended(
                chunk, messages.TaskDone(n, [], 0.1, timing=timing(n % 2, n / 10)), 0.0, False
            )
            if read_live:
                assert len(recorder.spans()) == n + 1
        lost = tasks.Chunk(9, 6, 1, [[6]])
        recorder.ended(lost, messages.TaskLost(9, 1, -9, 0))
        recorder.finish()
        items[5].append("changed after the call")
        records.append(recorder.record())
    read_at_end, live = records
    assert live.chunks[:6] == read_at_end.chunks[:6] and live.costs == read_at_end.costs
    assert [(s.first_item, s.state) for s in live.chunks] == [(n, "done") for n in range(6)] + [
        (6, "failed")
    ]
    assert read_at_end.chunks[6].state == "failed"
    assert [(i.position, i.args) for i in live.slowest[:2]] == [(5, "[5]"), (4, "[4]")]
    assert live.slowest == read_at_end.slowest
    assert live.hints == read_at_end.hints


def test_to_dataframe_needs_pandas_and_says_how_to_install_it(monkeypatch):
    parallel.map(abs, range(10), insights=True, chunksize=5)
    record = parallel.insights()
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ModuleNotFoundError, match="pip install pandas"):
        record.to_dataframe()


@pytest.mark.skipif(importlib.util.find_spec("pandas") is None, reason="pandas is not installed")
def test_to_dataframe_has_a_row_per_chunk_worker_or_item():
    parallel.map(abs, range(10), insights=True, chunksize=5, workers=2)
    record = parallel.insights()
    chunks = record.to_dataframe()
    assert list(chunks["first_item"].sort_values()) == [0, 5]
    assert {"worker", "sent", "started", "finished", "received", "state", "working"} <= set(chunks)
    assert len(record.to_dataframe(per="item")) == 10
    assert set(record.to_dataframe(per="worker")["pid"]) == {w.pid for w in record.workers}
    with pytest.raises(OptionError, match="per='rows' is not valid"):
        record.to_dataframe(per="rows")


def test_a_terminal_prints_the_table_after_the_text_bar(tmp_path):
    done = run_script(
        """
        import time
        from nbparallel import parallel
        parallel.map(time.sleep, [0.05] * 8, insights=True, chunksize=1)
        parallel.map(time.sleep, [0.05] * 8, chunksize=1)
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    bar_end = done.stderr.index("8/8")
    table = done.stderr.index("nbparallel insights: sleep, 8 items in 8 chunks")
    assert bar_end < table
    assert done.stderr.count("nbparallel insights:") == 1  # the call without insights: no table


# --- in a real kernel -------------------------------------------------------------------

WAIT_FOR = '''
import os, time
from nbparallel import parallel

def wait_for(path, x):
    """Stand-in for real work: runs until the test creates `path`."""
    end = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < end:
        time.sleep(0.01)
    return x
'''


@pytest.fixture(scope="module")
def nb(tmp_path_factory):
    from .kernel import Kernel

    started = Kernel(tmp_path_factory.mktemp("insights-kernel"))
    started.ok(WAIT_FOR + "\n%load_ext nbparallel")
    yield started
    started.ok("parallel.shutdown()")
    started.shutdown()


@pytest.mark.kernel
def test_parallel_insights_magic_shows_the_last_calls_table_again(nb):
    reply = nb.run("%parallel insights")
    assert reply.ename == "UsageError" and "run one with insights=True" in reply.evalue
    nb.ok("%%parallel for n in range(6) -> out --insights --no-progress\nabs(n - 3)")
    shown = nb.ok("%parallel insights").results
    assert len(shown) == 1
    table = shown[0]
    assert table.startswith("nbparallel insights: %%parallel cell, 6 items in ")
    assert "start-up" in table and "working" in table and "slowest items:" in table
    pids = nb.value("[w.pid for w in parallel.insights().workers]")
    assert all(str(pid) in table for pid in pids)


def timeline_of(nb, model_id: str) -> dict:
    """The timeline widget under a progress bar, as a frontend holds its state."""
    return next(
        state
        for state in nb.widget_tree(model_id)
        if "nbparallel-timeline" in state.get("_dom_classes", ())
    )


def lanes(state: dict) -> dict[int, int]:
    """Worker pid -> the chunks its lane shows."""
    found = re.findall(
        r'class="nbparallel-lane"[^>]*data-worker="(\d+)" data-chunks="(\d+)"', state["value"]
    )
    return {int(pid): int(chunks) for pid, chunks in found}


@pytest.mark.kernel
def test_the_timeline_under_the_bar_has_a_lane_per_worker_and_moves_while_the_call_runs(
    nb, tmp_path
):
    if importlib.util.find_spec("nbparallel.timeline") is None:
        pytest.skip("the timeline widget (nbparallel/timeline.py, branch `timeline`) is not merged")
    marker = tmp_path / "go"
    nb.ok("parallel.map(abs, range(4))")  # workers started
    workers = nb.value("parallel.options.worker_count")
    reply = nb.ok(
        f"handle = parallel.map_async(lambda x: wait_for({str(marker)!r}, x), range({2 * workers}), "
        "chunksize=1, insights=True)"
    )
    (box,) = reply.widget_views
    pids = set(nb.value("[w.pid for w in parallel.status().workers]"))
    # Every worker is inside its first chunk: a lane each, with a running block.
    nb.read_until(lambda: set(lanes(timeline_of(nb, box))) == pids)
    running = timeline_of(nb, box)["value"]
    assert running.count('data-state="running"') == workers
    marker.touch()
    nb.read_until(lambda: "nbparallel-timeline-summary" in timeline_of(nb, box)["value"])
    assert nb.value("handle.result()") == list(range(2 * workers))
    final = timeline_of(nb, box)
    assert final["value"] != running
    assert set(lanes(final)) == pids and sum(lanes(final).values()) == 2 * workers
    assert 'data-state="running"' not in final["value"]
    assert re.search(r"efficiency \d+%", final["value"])


@pytest.mark.kernel
def test_a_1000_chunk_call_redraws_its_timeline_at_most_10_times_a_second(nb):
    if importlib.util.find_spec("nbparallel.timeline") is None:
        pytest.skip("the timeline widget (nbparallel/timeline.py, branch `timeline`) is not merged")
    nb.ok("parallel.map(abs, range(4))")  # workers started
    before = nb.widget_updates
    started = time.monotonic()
    reply = nb.ok("out = parallel.map(abs, range(1000), chunksize=1, insights=True)")
    elapsed = time.monotonic() - started
    # Each redraw changes at most the bar, its numbers and the timeline; then the final state.
    assert nb.widget_updates - before <= 3 * (elapsed / 0.1 + 2) + 4, elapsed
    (box,) = reply.widget_views
    assert sum(lanes(timeline_of(nb, box)).values()) == 1000
