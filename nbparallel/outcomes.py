"""What a worker's answer means for the caller: a chunk's results, or the user's own exception.

Also what to do when a worker is lost mid-chunk (it died, or ran over the timeout): run the chunk
again (`retries`), fail the call, or (with errors="return"/"skip") take the item it was running
out of the chunk and run the rest again.
"""

from __future__ import annotations

from typing import Any

from . import errors, serialize, tasks

_SKIPPED = object()  # stands for an item left out with errors="skip"


def rebuild(call: tasks.Call, position: int, failure: tasks.Failure, stage: str = "raised") -> BaseException:
    """The exception a worker reported, as the user's own type, with the remote traceback as cause."""
    live = isinstance(failure.error, BaseException)  # from a thread: it has its own traceback
    remote = errors.RemoteTraceback(f'\n"""\n{failure.traceback}"""')
    error = serialize.loads(failure.error) if isinstance(failure.error, bytes) else failure.error
    if stage == "result":
        built: BaseException = errors.unsendable_result(call.name, position, failure.item, failure.detail)
    elif error is None:
        built = errors.unloadable_exception(call.name, position, failure.item, failure.detail)
    elif not isinstance(error, Exception):  # SystemExit, KeyboardInterrupt: never re-raised as such
        built = errors.task_exited(call.name, position, failure.item, failure.detail)
    elif stage == "load" and isinstance(error, ModuleNotFoundError) and error.name:
        built = errors.missing_module(call.name, error.name)
    else:
        built = error
        if hasattr(built, "add_note") and call.mode != "setup":
            note = errors.load_note(failure.pid) if stage == "load" else errors.item_note(
                position, failure.item, failure.pid
            )
            built.add_note(note)
    if not (live and built is error):
        built.__cause__ = remote
    return built


def lost(call: tasks.Call, chunk: tasks.Chunk, event: tasks.TaskLost) -> BaseException:
    """The error for a chunk whose worker died or was stopped, naming the item it was running."""
    if event.error is not None:
        return event.error
    position = item = None
    if event.offset is not None:
        offsets = chunk.offsets or range(chunk.size)
        position = chunk.position + offsets[event.offset]
        item = errors.short_repr(chunk.items[event.offset])
    if event.timed_out:
        assert call.timeout is not None
        return errors.timed_out(call.name, event.pid, call.timeout, position, item)
    return errors.worker_died(event.pid, event.returncode, position, item)


def recover(call: tasks.Call, chunk: tasks.Chunk, event: tasks.TaskLost, retries: int, mode: str) -> bool:
    """After a lost worker: prepare `chunk` to be submitted again, or raise.

    Returns True if the chunk must be submitted again, False if nothing of it is left to run.
    """
    error = lost(call, chunk, event)
    if event.error is not None:
        raise error
    if chunk.attempts < retries:
        chunk.attempts += 1
        return True
    if mode == "raise" or event.offset is None:
        raise error
    items = list(chunk.items)
    offsets = chunk.offsets or list(range(chunk.size))
    chunk.holes[offsets[event.offset]] = error if mode == "return" else _SKIPPED
    del items[event.offset], offsets[event.offset]
    chunk.items, chunk.offsets, chunk.attempts = items, offsets, 0
    return bool(items)


def results(call: tasks.Call, chunk: tasks.Chunk, event: object | None, mode: str) -> list[Any]:
    """The chunk's results in item order (None for `event`: nothing was left to run).

    Raises:
        The user's exception (or ours, for a result that cannot be sent), with errors="raise".
    """
    if isinstance(event, tasks.TaskFailed):
        raise rebuild(call, chunk.position + _original(chunk, event.offset), event.failure, event.stage)
    ran: list[Any] = []
    if isinstance(event, tasks.TaskDone):
        ran = event.results if event.results is not None else _loaded(call, chunk, event.frames or [])
    if chunk.offsets is not None:
        merged: list[Any] = [None] * chunk.size
        for offset, result in zip(chunk.offsets, ran):
            merged[offset] = result
        for offset, hole in chunk.holes.items():
            merged[offset] = hole
        ran = merged
    chunk.failed = len(chunk.holes)
    if not call.keep_going:
        return ran
    kept = []
    for offset, result in enumerate(ran):
        if isinstance(result, tasks.Failure):
            chunk.failed += 1
            result = _SKIPPED if mode == "skip" else rebuild(call, chunk.position + offset, result)
        if result is not _SKIPPED:
            kept.append(result)
    return kept


def finished_before_failure(call: tasks.Call, chunk: tasks.Chunk, event: tasks.TaskFailed,
                            mode: str) -> dict[int, Any]:
    """Results of the items a failing chunk finished before the failure, by input position
    (kept for `partial_results`); empty if they cannot be rebuilt here."""
    try:
        ran = event.results if isinstance(event.results, list) else serialize.loads(event.results)
    except BaseException:  # a result whose unpickling fails: the failure itself is reported
        return {}
    finished = {}
    for offset, result in enumerate(ran):
        position = chunk.position + _original(chunk, offset)
        if isinstance(result, tasks.Failure):
            if mode == "skip":
                continue
            result = rebuild(call, position, result)
        finished[position] = result
    return finished


def _loaded(call: tasks.Call, chunk: tasks.Chunk, frames: list[Any]) -> list[Any]:
    try:
        return serialize.loads_frames(frames)
    except BaseException as error:  # a result whose unpickling raises, or even exits
        raise errors.unloadable_results(call.name, chunk.position, chunk.size, error) from error


def _original(chunk: tasks.Chunk, offset: int) -> int:
    return chunk.offsets[offset] if chunk.offsets is not None and offset < len(chunk.offsets) else offset
