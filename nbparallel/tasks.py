"""The records a backend is given: a `Call` (one map, submit or setup) and its `Chunk`s.

A call is made once, by `calls`, which alone closes it; a chunk never changes once made (a chunk
run again after its worker died is a new chunk, with a new task id).
"""

from __future__ import annotations

import contextvars
import dataclasses
import itertools
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .serialize import FunctionPayload

_ids = itertools.count(1)
_ids_lock = threading.Lock()  # without the GIL (3.13t), itertools.count is not atomic


def next_id() -> int:
    """An id of a call or a task, unique in this process."""
    with _ids_lock:
        return next(_ids)


@dataclasses.dataclass(eq=False)
class Call:
    """One map, submit or every-worker setup, as a backend sees it."""

    call_id: int
    function: Callable[..., Any]  # the function itself, for backends that run in this process
    payload: FunctionPayload  # serialized once for the whole call (empty where nothing is copied)
    # How an item is passed: "map" f(x), "star" f(*x), "apply" f(*args, **kwargs); "setup" runs
    # the function's code in the worker's own namespace, where later tasks find what it defines.
    kind: str
    max_workers: int
    deliver: Callable[[object], None]  # receives TaskDone, TaskFailed and TaskLost
    timeout: float | None = None  # seconds one item may run before its worker is stopped
    keep_going: bool = False  # an item that raises becomes a Failure among the results
    insights: bool = False  # workers time its tasks (see insights)
    announce_starts: bool = False  # and say when each starts: a timeline is drawn live
    # The caller's context: output written in it shows in the caller's notebook cell.
    context: contextvars.Context = dataclasses.field(default_factory=contextvars.copy_context)
    closed: bool = False  # the caller stopped listening (set by calls.Tracker only): drop events

    @property
    def name(self) -> str:
        """The function's name, for messages."""
        return self.payload.name

    def write_output(self, stream: str, text: str) -> None:
        self.context.run(_write, stream, text)


def _write(stream: str, text: str) -> None:
    getattr(sys, stream).write(text)


@dataclasses.dataclass(frozen=True, slots=True)
class Chunk:
    """Items of a call sent to a worker together."""

    task_id: int
    position: int  # of its first item in the call's input
    size: int  # items of the chunk as first made
    items: Sequence[Any]  # those still to run
    attempts: int = 0  # runs of these items that a dead worker cut short
    # A chunk run again without some items (their worker died on them): where each remaining
    # item stands in the first chunk, and the outcomes of the ones taken out.
    offsets: tuple[int, ...] | None = None
    holes: Mapping[int, Any] = dataclasses.field(default_factory=dict)

    def original_offset(self, offset: int) -> int:
        """Where the item at `offset` of `items` stands in the chunk as first made."""
        return (
            self.offsets[offset]
            if self.offsets is not None and offset < len(self.offsets)
            else offset
        )
