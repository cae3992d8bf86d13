"""Chunks, the messages between the pool and its workers, and `run_chunk`, shared by every backend.

(How messages cross the socket is `transport`'s job.)

Parent to worker: `RunTask`, `CancelCall`, `StopWorker`. Worker to parent: `TaskDone`, `TaskFailed`, `Output`.
Every message is a small data-only class; payloads inside are already-serialized bytes, so the
pool itself never runs user code (no user object is unpickled in its dispatcher thread).
"""

from __future__ import annotations

import contextvars
import dataclasses
import itertools
import os
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, cast

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
next_id = itertools.count(1).__next__  # ids of calls and tasks, unique in this process

@dataclasses.dataclass(eq=False)
class Call:
    """One map or submit call, as a backend sees it."""

    call_id: int
    name: str  # the function's name, for messages
    func: Callable[..., Any]  # the function itself, for backends that run in this process
    function: list[Any]  # serialized once for the whole call: frames (none for backends that need not)
    digest: bytes
    # How an item is passed: "map" f(x), "star" f(*x), "apply" f(*args, **kwargs); "setup" runs
    # the function's code in the worker's own namespace, where later tasks find what it defines.
    mode: str
    max_workers: int
    deliver: Callable[[object], None]  # receives TaskDone, TaskFailed and TaskLost
    timeout: float | None = None  # seconds one item may run before its worker is stopped
    keep_going: bool = False  # an item that raises becomes a Failure among the results
    # The caller's context: output written in it shows in the caller's notebook cell.
    context: contextvars.Context = dataclasses.field(default_factory=contextvars.copy_context)
    closed: bool = False  # set when the caller stops listening; later events are dropped
    shared_function: list[Any] | None = None  # `function` as a process pool sends it, made once

    def write_output(self, stream: str, text: str) -> None:
        self.context.run(_write, stream, text)


def _write(stream: str, text: str) -> None:
    getattr(sys, stream).write(text)


@dataclasses.dataclass(slots=True)
class Chunk:
    """Items of a call sent to a worker together."""

    task_id: int
    position: int  # of its first item in the call's input
    size: int
    items: Sequence[Any]
    data: list[Any] = dataclasses.field(default_factory=list)  # serialized items (frames), if sent
    attempts: int = 0  # runs of this chunk that a dead worker cut short
    # When a chunk is run again without some items (their worker died on them), where each
    # remaining item stands in the original chunk, and what replaces the ones taken out.
    offsets: list[int] | None = None
    holes: dict[int, Any] = dataclasses.field(default_factory=dict)
    failed: int = 0  # items whose outcome is an error (with errors="return"/"skip")


@dataclasses.dataclass(slots=True)
class RunTask:
    task_id: int
    call_id: int
    digest: bytes
    mode: str
    keep_going: bool
    # The serialized items (see transport.send_message); first, when the worker does not hold
    # the function with this digest yet, the function's frames: `function_frames` of them.
    frames: list[Any]
    function_frames: int = 0


@dataclasses.dataclass(slots=True)
class CancelCall:
    call_id: int


@dataclasses.dataclass(slots=True)
class StopWorker:
    """Exit once the tasks before this message are done (the pool is shrinking)."""


@dataclasses.dataclass(slots=True)
class TaskDone:
    task_id: int
    results: list[Any] | None  # the results themselves, from a thread
    seconds: float
    frames: list[Any] | None = None  # or serialized, from a worker process (see send_message)
    nbytes: int = 0  # what the chunk's items and results took serialized (for chunk sizing)


@dataclasses.dataclass(slots=True)
class Failure:
    """An exception raised in a worker, as it travels back (also a result, with keep_going)."""

    error: bytes | BaseException | None  # pickled (None if it cannot be rebuilt), or itself from a thread
    detail: str  # "Type: message", for when it cannot
    traceback: str
    item: str  # a short repr of the item it was raised on
    pid: int


@dataclasses.dataclass(slots=True)
class ItemsUnreadable:
    """The worker could not copy the task's lent items out of the pool's memory (see transport);
    it ran nothing, and the pool sends the task again with its items shared instead."""

    task_id: int
    reason: str


@dataclasses.dataclass(slots=True)
class TaskFailed:
    """A task stopped at `offset` within its chunk; `results` holds the items before it."""

    task_id: int
    offset: int
    results: bytes | list[Any]
    stage: str  # "raised" (the function raised), "result" (unsendable result), "load"
    failure: Failure


@dataclasses.dataclass(slots=True)
class TaskLost:
    """The worker running the task died (or was stopped for running over the timeout)."""

    task_id: int
    pid: int
    returncode: int | None
    offset: int | None  # of the item it was running, None if it had not started one
    timed_out: bool = False
    error: BaseException | None = None  # set when the pool itself gave up (it was shut down)


@dataclasses.dataclass(slots=True)
class Output:
    task_id: int
    stream: str  # "stdout" or "stderr"
    text: str


# A worker's slot: integers it shares with the pool through a small memory map, written without
# any message: the task it runs and the item within it (so a death or a timeout names the item,
# and the progress bar moves within a chunk), the last call cancelled (so a running chunk stops
# between items), and how far the running item says it is (`report_progress`): millionths, and
# the item they were reported for.
SLOT_TASK, SLOT_ITEM, SLOT_CANCELLED, SLOT_PART, SLOT_PART_ITEM = range(5)
SLOT_BYTES = 5 * 8
NOT_STARTED = -1
_PART_SCALE = 1_000_000

# The slot of the chunk this thread runs (threads backend), or of this worker process (for
# threads a task starts itself).
_running = threading.local()
process_slot: Any = None


def report_progress(done: float, total: float) -> None:
    """Inside a task: the item being run is `done` out of `total` of the way (any unit).

    The call's progress bar moves by that fraction of an item instead of waiting for the item to
    end. Cheap enough to call in a tight loop (it writes two integers to shared memory; on the
    dask backend, the worker sends the latest at most 10 times a second); does nothing outside
    a task (in the notebook itself).

    Raises:
        TypeError, ValueError: `done` or `total` is not a number, or `total` is not above 0.
    """
    for name, value in (("done", done), ("total", total)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"nbparallel.progress(done, total): {name} must be a number, not {type(value).__name__}")
    if not total > 0:
        raise ValueError(f"nbparallel.progress(done, total): total must be above 0, not {total!r}")
    slot = getattr(_running, "slot", None) or process_slot
    if slot is None:
        return
    slot[SLOT_PART] = int(min(max(done / total, 0.0), 1.0) * _PART_SCALE)
    slot[SLOT_PART_ITEM] = slot[SLOT_ITEM]


def local_slot(task_id: int) -> list[int]:
    """A slot for a task run without a shared memory map: a plain list (threads: the pool reads it
    in the same process; dask: the worker reports what it holds)."""
    return [task_id, NOT_STARTED, 0, 0, NOT_STARTED]


def running_items(slot: Any, task_id: int) -> float:
    """How many items' worth of task `task_id` is done, read from its worker's slot."""
    if slot[SLOT_TASK] != task_id or slot[SLOT_ITEM] == NOT_STARTED:
        return 0.0
    item = slot[SLOT_ITEM]
    part = slot[SLOT_PART] / _PART_SCALE if slot[SLOT_PART_ITEM] == item else 0.0
    return item + part


class Raised:
    """In a chunk's results (with keep_going): the item raised this instead of returning."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class ItemFailed(Exception):
    """Raised by `run_chunk` when the function raises on one item."""

    def __init__(self, offset: int, results: list[Any], error: BaseException) -> None:
        super().__init__(offset)
        self.offset = offset
        self.results = results
        self.error = error


def format_traceback(error: BaseException) -> str:
    """The traceback of a task's exception, without nbparallel's own frames."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(error), error, tb))


def item_caller(func: Callable[..., Any], mode: str) -> Callable[[Any], Any]:
    """A one-argument callable that passes an item to `func` the way `mode` says."""
    if mode == "map":
        return func
    if mode == "star":
        return lambda args: func(*args)
    return lambda args_kwargs: func(*args_kwargs[0], **args_kwargs[1])


def run_chunk(
    func: Callable[..., Any], items: Sequence[Any], mode: str, call_id: int, slot: Any, keep_going: bool,
) -> list[Any]:
    """Call `func` on each item in order; stop early if the call is cancelled.

    `slot` (a memoryview of integers) is told which item runs. With `keep_going`, an exception
    takes the item's place in the results (as the exception object) and the chunk goes on.

    Raises:
        ItemFailed: the function raised (without keep_going); carries the offset and results so far.
    """
    call = item_caller(func, mode)
    _running.slot = slot
    slot[SLOT_PART_ITEM] = NOT_STARTED
    results: list[Any] = []
    append = results.append
    start = 0
    while True:
        try:
            for offset in range(start, len(items)):
                if slot[SLOT_CANCELLED] == call_id:
                    return results
                slot[SLOT_ITEM] = offset
                append(call(items[offset]))
            return results
        except BaseException as error:  # SystemExit in a task is the task's failure too
            if not keep_going:
                raise ItemFailed(len(results), results, error) from error
            append(Raised(error))
            start = len(results)
