"""What worker events mean for a call, with no process at all: the Tracker over a fake backend."""

from __future__ import annotations

import os
import queue
import traceback

import pytest

from nbparallel import WorkerDiedError, calls, messages, outcomes, serialize, tasks
from nbparallel.outcomes import Tracker
from nbparallel.progressbar import Progress


class RecordingBackend:
    """Stands for a backend: remembers what it was sent and cancelled, runs nothing."""

    copies_data = True

    def __init__(self) -> None:
        self.sent: list[tasks.Chunk] = []
        self.cancelled: list[bool] = []

    def submit(self, call: tasks.Call, chunk: tasks.Chunk) -> None:
        self.sent.append(chunk)

    def cancel(self, call: tasks.Call, stop_running: bool) -> None:
        self.cancelled.append(stop_running)


def tracker(on_error: str = "raise", retries: int = 0) -> tuple[Tracker, RecordingBackend]:
    backend = RecordingBackend()
    call = tasks.Call(
        call_id=tasks.next_id(),
        function=abs,
        payload=serialize.FunctionPayload("f", [], b""),
        kind="map",
        max_workers=2,
        deliver=lambda event: None,
        keep_going=on_error != "raise",
    )
    return Tracker(backend, call, on_error, retries), backend  # type: ignore[arg-type]


def chunk_of(items: list[int], position: int = 0) -> tasks.Chunk:
    return tasks.Chunk(tasks.next_id(), position, len(items), items)


def done(task_id: int, results: list[object]) -> messages.TaskDone:
    return messages.TaskDone(task_id, results, 0.01, nbytes=100)


def died(task_id: int, offset: int | None) -> messages.TaskLost:
    return messages.TaskLost(task_id, pid=1234, returncode=-9, offset=offset)


def test_a_finished_chunk_gives_its_results_seconds_and_bytes():
    track, _ = tracker()
    chunk = chunk_of([1, 2, 3], position=10)
    track.send(chunk)
    finished = track.accept(done(chunk.task_id, [1, 2, 3]))
    assert (finished.results, finished.failed, finished.seconds, finished.nbytes) == (
        [1, 2, 3],
        0,
        0.01,
        100,
    )
    assert track.pending == 0


def test_a_dead_worker_with_retries_left_sends_the_chunk_again_as_a_new_task():
    track, backend = tracker(retries=1)
    chunk = chunk_of([1, 2, 3])
    track.send(chunk)
    assert track.accept(died(chunk.task_id, offset=1)) is None
    again = backend.sent[-1]
    assert again.task_id != chunk.task_id and list(again.items) == [1, 2, 3] and again.attempts == 1
    assert track.accept(done(again.task_id, [1, 2, 3])).results == [1, 2, 3]


def test_a_dead_worker_without_retries_fails_the_call_naming_the_item_it_ran():
    track, _ = tracker()
    chunk = chunk_of([5, 6, 7], position=20)
    track.send(chunk)
    with pytest.raises(
        WorkerDiedError, match=r"pid 1234 was killed by signal 9 while running item 21 \(6\)"
    ):
        track.accept(died(chunk.task_id, offset=1))


@pytest.mark.parametrize("on_error, expected", [("skip", [5, 7]), ("return", [5, "error", 7])])
def test_with_errors_return_or_skip_the_item_a_worker_died_on_is_taken_out_and_the_rest_rerun(
    on_error, expected
):
    track, backend = tracker(on_error)
    chunk = chunk_of([5, 6, 7])
    track.send(chunk)
    assert track.accept(died(chunk.task_id, offset=1)) is None
    rest = backend.sent[-1]
    assert list(rest.items) == [5, 7] and rest.offsets == (0, 2)
    finished = track.accept(done(rest.task_id, [5, 7]))
    results = ["error" if isinstance(r, WorkerDiedError) else r for r in finished.results]
    assert results == expected and finished.failed == 1


def test_an_event_of_a_task_not_tracked_is_ignored():
    """A setup replayed on a worker started since the call began answers too: not ours."""
    track, _ = tracker()
    assert track.accept(done(999_999, [None])) is None


def test_the_items_a_failing_chunk_finished_first_are_kept_by_position():
    track, _ = tracker()
    chunk = chunk_of([0, 1, 2, 3], position=8)
    track.send(chunk)
    failure = messages.Failure(serialize.dumps(KeyError(2)), "KeyError: 2", "tb", "2", 1234)
    event = messages.TaskFailed(chunk.task_id, 2, serialize.dumps([0, 1]), "raised", failure)
    with pytest.raises(KeyError):
        track.accept(event)
    assert track.failing_chunk == {8: 0, 9: 1}


def test_cancel_closes_the_call_once_and_tells_the_backend():
    track, backend = tracker()
    track.cancel(stop_running=True)
    track.cancel(stop_running=False)
    assert track.call.closed and backend.cancelled == [True]


def formatted(error: BaseException) -> str:
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


@pytest.mark.parametrize(
    "notes_shown",
    [
        pytest.param(
            True,
            id="3.11+",
            marks=pytest.mark.skipif(
                not hasattr(BaseException, "add_note"), reason="exception notes are Python 3.11+"
            ),
        ),
        pytest.param(False, id="3.10"),
    ],
)
def test_a_rebuilt_exception_shows_its_item_and_worker_where_the_user_looks(
    monkeypatch, notes_shown
):
    """With exception notes (3.11+) or without (3.10, forced here), the printed traceback names
    the failing item and the worker's pid, and `__notes__` holds the note for code that reads it."""
    monkeypatch.setattr(outcomes, "NOTES_SHOWN", notes_shown)
    tracked, _ = tracker()
    failure = messages.Failure(
        serialize.dumps(ZeroDivisionError("division by zero")),
        "ZeroDivisionError: division by zero",
        'Traceback (most recent call last):\n  File "<cell>", line 2, in f\nZeroDivisionError: division by zero\n',
        "0",
        4321,
    )
    error = outcomes.rebuild(tracked.call, 5, failure)
    assert isinstance(error, ZeroDivisionError)
    shown = formatted(error)
    assert "worker pid 4321 on item 5: 0" in shown and 'File "<cell>", line 2' in shown
    assert any("item 5: 0" in note for note in error.__notes__)
    assert ("item 5" in str(error.__cause__)) is not notes_shown  # 3.10: in the cause's text


def test_without_notes_an_exception_from_a_thread_keeps_its_own_cause_after_the_note(monkeypatch):
    """On 3.10, a thread's exception (not rebuilt: it has its own traceback) gets the note as a
    cause in front of the cause it had, which still prints."""
    monkeypatch.setattr(outcomes, "NOTES_SHOWN", False)
    tracked, _ = tracker()
    try:
        try:
            {}["missing"]
        except KeyError as original:
            raise ValueError("bad row") from original
    except ValueError as raised:
        live = raised
    failure = messages.Failure(live, "ValueError: bad row", "", "'row'", os.getpid())
    error = outcomes.rebuild(tracked.call, 2, failure)
    assert error is live
    shown = formatted(error)
    assert f"worker pid {os.getpid()} on item 2: 'row'" in shown
    assert "KeyError: 'missing'" in shown and "ValueError: bad row" in shown


def test_results_still_queued_when_a_call_stops_are_kept_for_partial_results():
    """A Stop (the Stop button, a background call's cancel) can come while finished chunks'
    results wait behind it in the call's queue: they are kept by position, not lost."""
    track, _ = tracker()
    first, second = chunk_of([10, 11], position=0), chunk_of([12], position=2)
    track.send(first)
    track.send(second)
    events: queue.SimpleQueue[object] = queue.SimpleQueue()
    events.put(calls.STOP)
    events.put(done(first.task_id, [10, 11]))
    kept: dict[int, object] = {}
    with pytest.raises(calls.CallStopped):
        list(calls._run(track, events, lambda: Progress(None, False, "f"), True, kept.update))
    assert kept == {0: 10, 1: 11}
