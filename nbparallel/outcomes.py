"""What a worker's answer means for the caller: a chunk's results, or the user's own exception.

`Tracker` is the one consumer of a call's worker events. Also what to do when a worker is lost
mid-chunk (it died, or ran over the timeout): run the chunk
again (`retries`), fail the call, or (with errors="return"/"skip") take the item it was running
out of the chunk and run the rest again.
"""

from __future__ import annotations

import dataclasses
import queue
import time
from typing import TYPE_CHECKING, Any

from . import errors, messages, serialize, tasks

if TYPE_CHECKING:
    from .backends import Backend
    from .recording import Recorder

_SKIPPED = object()  # stands for an item left out with errors="skip"
# Exception notes (add_note) are Python 3.11+: 3.10 neither has nor prints them.
NOTES_SHOWN = hasattr(BaseException, "add_note")


def rebuild(
    call: tasks.Call, position: int, failure: messages.Failure, stage: str = "raised"
) -> BaseException:
    """The exception a worker reported, as the user's own type, with the remote traceback as
    cause, and a note naming the item and the worker (in the cause's text on Python 3.10)."""
    note = ""
    live = isinstance(failure.error, BaseException)  # from a thread: it has its own traceback
    error = serialize.loads(failure.error) if isinstance(failure.error, bytes) else failure.error
    if stage == "result":
        built: BaseException = errors.unsendable_result(
            call.name, position, failure.item, failure.detail
        )
    elif error is None:
        built = errors.unloadable_exception(call.name, position, failure.item, failure.detail)
    elif not isinstance(error, Exception):  # SystemExit, KeyboardInterrupt: never re-raised as such
        built = errors.task_exited(call.name, position, failure.item, failure.detail)
    elif stage == "load" and isinstance(error, ModuleNotFoundError) and error.name:
        built = errors.missing_module(call.name, error.name)
    else:
        built = error
        if call.kind != "setup":
            note = (
                errors.load_note(failure.pid)
                if stage == "load"
                else errors.item_note(position, failure.item, failure.pid)
            )
    if note and NOTES_SHOWN:
        built.add_note(note)  # type: ignore[attr-defined,unused-ignore]
        note = ""
    elif note:  # Python 3.10: kept in __notes__ for code that reads it, but shown by the cause
        built.__notes__ = [*getattr(built, "__notes__", ()), note]  # type: ignore[attr-defined,unused-ignore]
    if live and built is error:
        if note:  # the thread's own traceback stays; the note is put in front of its cause
            shown = errors.RemoteTraceback(f"\n{note}")
            shown.__cause__, built.__cause__ = built.__cause__, shown
        return built
    note = f"{note}\n" if note else ""
    built.__cause__ = errors.RemoteTraceback(f'\n"""\n{failure.traceback}{note}"""')
    return built


def lost(call: tasks.Call, chunk: tasks.Chunk, event: messages.TaskLost) -> BaseException:
    """The error for a chunk whose worker died or was stopped, naming the item it was running."""
    if event.error is not None:
        return event.error
    position = item = None
    if event.offset is not None and call.kind != "setup":
        position = chunk.position + chunk.original_offset(event.offset)
        item = errors.short_repr(chunk.items[event.offset])
    if event.timed_out:
        assert call.timeout is not None
        return errors.timed_out(call.name, event.pid, call.timeout, position, item)
    return errors.worker_died(event.pid, event.returncode, position, item)


def recover(
    call: tasks.Call, chunk: tasks.Chunk, event: messages.TaskLost, retries: int, on_error: str
) -> tasks.Chunk | None:
    """After a lost worker: the chunk to run again (a new task), None if nothing of it is left to
    run (every item has its outcome), or raise the call's error."""
    error = lost(call, chunk, event)
    if event.error is not None:
        raise error
    if chunk.attempts < retries:
        return dataclasses.replace(chunk, task_id=tasks.next_id(), attempts=chunk.attempts + 1)
    if on_error == "raise" or event.offset is None:
        raise error
    # errors="return"/"skip": the item it died on gets its outcome; the rest run again.
    offsets = list(chunk.offsets or range(chunk.size))
    items = list(chunk.items)
    holes = {**chunk.holes, offsets[event.offset]: error if on_error == "return" else _SKIPPED}
    del items[event.offset], offsets[event.offset]
    if not items:
        return dataclasses.replace(chunk, items=[], offsets=(), holes=holes)
    return dataclasses.replace(
        chunk, task_id=tasks.next_id(), items=items, offsets=tuple(offsets), holes=holes, attempts=0
    )


def results(
    call: tasks.Call, chunk: tasks.Chunk, event: object | None, on_error: str
) -> tuple[list[Any], int]:
    """The chunk's results in item order, and how many of its items failed (None for `event`:
    nothing was left to run).

    Raises:
        The user's exception (or ours, for a result that cannot be sent), with errors="raise".
    """
    if isinstance(event, messages.TaskFailed):
        raise rebuild(
            call, chunk.position + chunk.original_offset(event.offset), event.failure, event.stage
        )
    ran: list[Any] = []
    if isinstance(event, messages.TaskDone):
        ran = (
            event.results if event.results is not None else _loaded(call, chunk, event.frames or [])
        )
    if chunk.offsets is not None:
        merged: list[Any] = [None] * chunk.size
        for offset, result in zip(chunk.offsets, ran, strict=False):
            merged[offset] = result
        for offset, hole in chunk.holes.items():
            merged[offset] = hole
        ran = merged
    failed = len(chunk.holes)
    if not call.keep_going:
        return ran, failed
    kept = []
    for offset, result in enumerate(ran):
        if isinstance(result, messages.Failure):
            failed += 1
            result = (
                _SKIPPED if on_error == "skip" else rebuild(call, chunk.position + offset, result)
            )
        if result is not _SKIPPED:
            kept.append(result)
    return kept, failed


def finished_before_failure(
    call: tasks.Call, chunk: tasks.Chunk, event: messages.TaskFailed, on_error: str
) -> dict[int, Any]:
    """Results of the items a failing chunk finished before the failure, by input position
    (kept for `partial_results`); empty if they cannot be rebuilt here."""
    try:
        ran = event.results if isinstance(event.results, list) else serialize.loads(event.results)
    except BaseException:  # a result whose unpickling fails: the failure itself is reported
        return {}
    finished = {}
    for offset, result in enumerate(ran):
        position = chunk.position + chunk.original_offset(offset)
        if isinstance(result, messages.Failure):
            if on_error == "skip":
                continue
            result = rebuild(call, position, result)
        finished[position] = result
    return finished


def _loaded(call: tasks.Call, chunk: tasks.Chunk, frames: list[Any]) -> list[Any]:
    try:
        return serialize.loads_frames(frames)
    except BaseException as error:  # a result whose unpickling raises, or even exits
        raise errors.unloadable_results(call.name, chunk.position, chunk.size, error) from error


@dataclasses.dataclass(frozen=True)
class Finished:
    """A chunk whose every item has its outcome."""

    chunk: tasks.Chunk
    results: list[Any]  # in item order (without skipped items)
    failed: int  # items whose outcome is an error
    seconds: float  # how long the worker ran it
    nbytes: int  # what its items and results took serialized


class Tracker:
    """A call's chunks in flight, and the one place where a worker's event about one of them
    becomes results, the user's exception, or the chunk sent again: map, imap, submit and
    every-worker setup alike. It alone closes the call.

    Events come from one thread at a time (the caller's loop, or the backend's for submit).
    With insights on, it feeds every chunk's events to its `recorder` too.
    """

    def __init__(
        self,
        backend: Backend,
        call: tasks.Call,
        on_error: str,
        retries: int,
        recorder: Recorder | None = None,
    ) -> None:
        self.call = call
        self._backend = backend
        self._on_error, self._retries = on_error, retries
        self._chunks: dict[int, tasks.Chunk] = {}  # by task id: sent, outcome not in yet
        self.failing_chunk: dict[int, Any] = {}  # by position: what a failed chunk finished first
        self.recorder = recorder

    @property
    def pending(self) -> int:
        return len(self._chunks)

    def send(self, chunk: tasks.Chunk) -> None:
        self._chunks[chunk.task_id] = chunk
        if self.recorder is None:
            self._backend.submit(self.call, chunk)
            return
        start = time.perf_counter()
        self._backend.submit(self.call, chunk)
        self.recorder.sent(chunk, time.perf_counter() - start)

    def expect(self, chunks: list[tasks.Chunk]) -> None:
        """Chunks the backend sent itself (every-worker setup)."""
        self._chunks.update((chunk.task_id, chunk) for chunk in chunks)

    def accept(self, event: Any) -> Finished | None:
        """What `event` means: a finished chunk, or None (its chunk was sent again, or it is
        about a task not tracked here: a setup replayed on a worker started since).

        Raises:
            The call's error, as the errors rule says: the user's own exception, or ours.
        """
        recorder = self.recorder
        if isinstance(event, messages.TaskStarted):
            started = self._chunks.get(event.task_id)
            if started is not None and recorder is not None:
                recorder.started(started, event)
            return None
        chunk = self._chunks.pop(event.task_id, None)
        if chunk is None:
            return None
        if isinstance(event, messages.TaskLost):
            if recorder is not None:
                recorder.ended(chunk, event)
            again = recover(self.call, chunk, event, self._retries, self._on_error)
            if again is not None and again.items:
                self.send(again)
                return None
            chunk, event = again or chunk, None  # every item has its outcome already
        elif isinstance(event, messages.TaskFailed):
            if recorder is not None:
                recorder.ended(chunk, event)
            self.failing_chunk = finished_before_failure(self.call, chunk, event, self._on_error)
        if recorder is not None and isinstance(event, messages.TaskDone):
            start = time.perf_counter()
            values, failed = results(self.call, chunk, event, self._on_error)
            recorder.ended(chunk, event, time.perf_counter() - start, failed > 0)
        else:
            values, failed = results(self.call, chunk, event, self._on_error)
        return Finished(
            chunk, values, failed, getattr(event, "seconds", 0.0), getattr(event, "nbytes", 0)
        )

    def finished_in(self, events: queue.SimpleQueue[Any]) -> dict[int, list[Any]]:
        """The results of chunks that finished but still wait in `events` once the call has
        stopped (a Stop or a failure came between two events), by position: kept, not lost.
        The call has already raised, so results that fail to load are left out, not raised."""
        found: dict[int, list[Any]] = {}
        while True:
            try:
                event = events.get_nowait()
            except queue.Empty:
                return found
            if not isinstance(event, messages.TaskDone):
                continue
            try:
                finished = self.accept(event)
            except Exception:  # noqa: BLE001 - results that cannot be rebuilt: the call is over
                continue
            if finished is not None:
                found[finished.chunk.position] = finished.results

    def cancel(self, stop_running: bool) -> None:
        """Stop listening; the backend drops the call's queued chunks (and with `stop_running`,
        stops those running at once)."""
        if not self.call.closed:
            self.call.closed = True
            self._backend.cancel(self.call, stop_running)

    def finish(self) -> Recorder | None:
        """Every chunk has its outcome (or the call stopped): events that still come are
        dropped. The call's recorder, finished, if it records insights."""
        self.call.closed = True
        if self.recorder is not None:
            self.recorder.finish(self._backend.status(memory=False))
        return self.recorder
