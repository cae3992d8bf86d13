"""The messages between the pool and its workers: small data-only classes.

Parent to worker: `RunTask`, `CancelCall`, `StopWorker`, `Limits`. Worker to parent: `Ready`,
`TaskStarted` (with a live timeline), `TaskDone`, `TaskFailed`, `ItemsUnreadable`, `FunctionMissing`,
`Output`, `Retiring`; `TaskLost` is made by a backend when a worker is gone.
Payloads inside are already-serialized bytes, so the pool itself never runs user code (no user
object is unpickled on its dispatcher thread). How they cross the socket is `transport`'s job.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence
from typing import Any


@dataclasses.dataclass(slots=True)
class RunTask:
    task_id: int
    call_id: int
    digest: bytes
    kind: str  # how items are passed: see tasks.Call.kind
    keep_going: bool
    # The serialized items (see transport.send_message); first, when the worker does not hold
    # the function with this digest yet, the function's frames: `function_frames` of them.
    frames: list[Any]
    function_frames: int = 0
    insights: bool = False  # time the task (see Timing)
    sent: float = 0.0  # with insights: when the pool sent it (time.time()), echoed back in Timing
    announce: bool = False  # say when it starts (TaskStarted), for a timeline drawn live


@dataclasses.dataclass(slots=True)
class CancelCall:
    call_id: int


@dataclasses.dataclass(slots=True)
class StopWorker:
    """Exit once the tasks before this message are done (the pool is shrinking)."""


@dataclasses.dataclass(slots=True)
class Limits:
    """When a worker retires itself: after this many tasks, or past this resident memory."""

    max_tasks: int | None = None
    max_memory: int | None = None


@dataclasses.dataclass(slots=True)
class Ready:
    """A worker's first word: it has started and reads tasks (the pool waits for it with a deadline)."""

    pid: int


@dataclasses.dataclass(slots=True)
class FunctionMissing:
    """The worker no longer holds the task's function (it made room for others): it ran nothing,
    and the pool sends the task again with the function."""

    task_id: int


@dataclasses.dataclass(slots=True)
class Retiring:
    """The worker reached its Limits: it answered the task before this and exits now, running
    none of the tasks queued behind it (the pool gives them to other workers)."""


@dataclasses.dataclass(slots=True)
class TaskStarted:
    """For a timeline drawn live: a worker took the task from its queue (stamps are time.time()).
    Sent only then: without a live view, a task's Timing says when it started."""

    task_id: int
    worker: int  # its pid (threads backend: the thread's native id)
    sent: float
    started: float


@dataclasses.dataclass(slots=True)
class Timing:
    """With insights on, where a task's time went. Stamps are time.time(), the one clock that
    processes of one machine share; durations are measured with perf_counter."""

    worker: int
    sent: float  # the pool sent it (echoed from RunTask)
    started: float  # the worker took it from its queue
    finished: float  # its results were serialized, ready to go back
    load_seconds: float  # the worker loading the function and the items
    dump_seconds: float  # the worker serializing the results
    working: float  # the items' runs of the function, together
    # The items' times in chunk order, as groups timed together (see timing): how many items,
    # and the seconds each took.
    group_items: Sequence[int]
    group_seconds: Sequence[float]
    # up to 5 (offset in the chunk, seconds, items: more than 1 for a group), slowest first
    slowest: list[tuple[int, float, int]]
    received: float = 0.0  # the pool read the answer (set by the pool)
    # On dask, from the scheduler's task stream (set by the backend): the dask worker's address,
    # and what dask itself timed of the task, as (action, start, stop): "compute", "transfer"
    # (its inputs fetched from another worker), "deserialize", "disk-read", "disk-write".
    worker_name: str = ""
    cluster_steps: tuple[tuple[str, float, float], ...] = ()

    def __reduce__(self) -> tuple[Any, ...]:
        # It goes with every chunk's answer: as a tuple it pickles in half the time that the
        # state of a dataclass with slots takes.
        return (Timing, _timing_values(self))


_timing_values = operator.attrgetter(*Timing.__slots__)


@dataclasses.dataclass(slots=True)
class TaskDone:
    task_id: int
    results: list[Any] | None  # the results themselves, from a thread
    seconds: float
    frames: list[Any] | None = None  # or serialized, from a worker process (see send_message)
    nbytes: int = 0  # what the chunk's items and results took serialized (for chunk sizing)
    timing: Timing | None = None  # with insights on


@dataclasses.dataclass(slots=True)
class Failure:
    """An exception raised in a worker, as it travels back (also a result, with keep_going)."""

    # Pickled (None if it cannot be rebuilt), or the exception itself from a thread.
    error: bytes | BaseException | None
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
    timing: Timing | None = None  # with insights on


@dataclasses.dataclass(slots=True)
class TaskLost:
    """The worker running the task died (or was stopped for running over the timeout)."""

    task_id: int
    pid: int
    returncode: int | None
    offset: int | None  # of the item it was running, None if it had not started one
    timed_out: bool = False
    error: BaseException | None = None  # set when the pool itself gave up (it was shut down)
    item_seconds: float | None = None  # how long that item had run, where the pool watched it


@dataclasses.dataclass(slots=True)
class Output:
    task_id: int
    stream: str  # "stdout" or "stderr"
    text: str
