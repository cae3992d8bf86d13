"""Running a task wherever a worker is (a worker process, a dask worker, a thread): load its
function and items, call the function on each item, and turn the outcome into a message.

The loop over a chunk's items (`run_chunk`) tells the worker's slot which item runs, stops
between items when the call is cancelled, and, with errors="return"/"skip", keeps going past an
item that raised. With insights on, it times the items (`timing`), and `run_task` says where
the task's time went (`messages.Timing`); with insights off, no clock is read per item.
"""

from __future__ import annotations

import collections
import os
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from . import errors, messages, serialize, slots, timing, transport

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

FUNCTION_CACHE_SIZE = 16


class FunctionCache:
    """A worker's functions by digest, the least recently used dropped past FUNCTION_CACHE_SIZE.

    The worker alone owns it: a task whose function it no longer holds is answered with
    `FunctionMissing`, and the pool sends the function along again.
    """

    def __init__(self) -> None:
        self._entries: collections.OrderedDict[bytes, Any] = collections.OrderedDict()

    def __contains__(self, digest: bytes) -> bool:
        return digest in self._entries

    def add(self, digest: bytes, frames: list[Any]) -> None:
        """Keep a function as it arrived (frames); it is loaded when a task first needs it."""
        if serialize.holds_large_data(digest):
            # Keep only the newest, so that old versions of an array do not stay mapped in every
            # worker; one sent again, the pool sends again when this worker says it is missing.
            for old in [d for d in self._entries if serialize.holds_large_data(d)]:
                del self._entries[old]
        self._entries[digest] = frames
        self._entries.move_to_end(digest)
        while len(self._entries) > FUNCTION_CACHE_SIZE:
            self._entries.popitem(last=False)

    def get(self, digest: bytes) -> Callable[..., Any]:
        """The function, loaded on first use. Raises KeyError if it is not held."""
        entry = self._entries[digest]
        self._entries.move_to_end(digest)
        if isinstance(entry, list):  # its frames, as they arrived
            entry = self._entries[digest] = serialize.load_function(entry)
        return entry


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


def item_caller(func: Callable[..., Any], kind: str) -> Callable[[Any], Any]:
    """A one-argument callable that passes an item to `func` the way `kind` says."""
    if kind == "map":
        return func
    if kind == "star":
        return lambda args: func(*args)
    return lambda args_kwargs: func(*args_kwargs[0], **args_kwargs[1])


def run_chunk(
    func: Callable[..., Any],
    items: Sequence[Any],
    kind: str,
    call_id: int,
    slot: Any,
    keep_going: bool,
    clock: timing.ItemClock | None = None,
) -> list[Any]:
    """Call `func` on each item in order; stop early if the call is cancelled.

    `slot` (a memoryview of integers) is told which item runs. With `keep_going`, an exception
    takes the item's place in the results (as the exception object) and the chunk goes on.
    With a `clock`, the items are timed into it.

    Raises:
        ItemFailed: the function raised (without keep_going); carries the offset and results so far.
    """
    call = item_caller(func, kind)
    slots.running.slot = slot
    slot[slots.PART_ITEM] = slots.NOT_STARTED
    cancelled, running = slots.CANCELLED, slots.ITEM  # locals: this loop runs once per item
    results: list[Any] = []
    append = results.append
    start = 0
    while True:
        try:
            if clock is not None:
                timing.run_timed(call, items, call_id, slot, results, clock)
                return results
            for offset in range(start, len(items)):
                if slot[cancelled] == call_id:
                    return results
                slot[running] = offset
                append(call(items[offset]))
            return results
        except BaseException as error:  # SystemExit in a task is the task's failure too
            if not keep_going:
                raise ItemFailed(len(results), results, error) from error
            append(Raised(error))
            start = len(results)


def _pickled_exception(error: BaseException) -> bytes | None:
    """The exception as bytes, if the pool will be able to rebuild it; else None."""
    try:
        data = serialize.dumps(error)
        serialize.loads(data)
        return data
    except BaseException:  # even SystemExit from a hostile __reduce__: this is an error report
        return None


def _describe(error: BaseException, item: Any) -> messages.Failure:
    return messages.Failure(
        error=_pickled_exception(error),
        detail=f"{type(error).__name__}: {error}",
        traceback=format_traceback(error),
        item=errors.short_repr(item),
        pid=os.getpid(),
    )


def _failed(
    task: messages.RunTask,
    stage: str,
    offset: int,
    items: list[Any],
    results: list[Any],
    error: BaseException,
    clock: timing.TaskClock | None = None,
) -> messages.TaskFailed:
    try:
        done = serialize.dumps(results)
    except BaseException:
        done = serialize.dumps([])
    item = items[offset] if offset < len(items) else "(the items could not be loaded)"
    took = clock.timing() if clock is not None else None
    return messages.TaskFailed(task.task_id, offset, done, stage, _describe(error, item), took)


class SetupNamespace:
    """What `%%parallel --every-worker` cells defined in this worker, offered to later tasks.

    A task's function arrives with its own globals (what it captured in the notebook); names it
    uses that the notebook does not have are taken from here.
    """

    _MARK = "__nbparallel_setup_generation__"  # kept in a function's globals: merged up to here

    def __init__(self) -> None:
        self.names: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
        self.generation = 0

    def run(self, cell: Any, notebook_values: dict[str, Any]) -> None:
        """Run a cell's code here, with the notebook variables it reads."""
        self.names.update(notebook_values)
        exec(cell.__code__, self.names)
        self.generation += 1

    def offer(self, func: Any) -> None:
        namespace = getattr(func, "__globals__", None)
        if namespace is None or namespace.get(self._MARK, 0) == self.generation:
            return
        for name, value in self.names.items():
            namespace.setdefault(name, value)
        namespace[self._MARK] = self.generation


def run_task(
    task: messages.RunTask, functions: FunctionCache, setup: SetupNamespace, slot: Any
) -> object:
    """Run one task (loading its function and items); the message to send back."""
    clock = timing.TaskClock(task) if task.insights else None
    items: list[Any] = []
    try:
        func = functions.get(task.digest)
        serialize.set_receiver_namespace(getattr(func, "__globals__", None))
        items = serialize.loads_frames(task.frames)
    except BaseException as error:
        return _failed(task, "load", 0, items, [], error, clock)
    nbytes = transport.frame_bytes(task.frames)
    start = time.perf_counter()
    items_clock = None
    if clock is not None:
        clock.loaded, items_clock = start, clock.items
    try:
        if task.kind == "setup":
            results = run_chunk(
                lambda values: setup.run(func, values), items, "map", task.call_id, slot, False
            )
        else:
            setup.offer(func)
            results = run_chunk(
                func, items, task.kind, task.call_id, slot, task.keep_going, items_clock
            )
    except ItemFailed as failed:
        return _failed(task, "raised", failed.offset, items, failed.results, failed.error, clock)
    seconds = time.perf_counter() - start
    if task.keep_going:
        results = [
            _describe(r.error, items[offset]) if isinstance(r, Raised) else r
            for offset, r in enumerate(results)
        ]
    try:
        frames = serialize.dumps_frames(results)
        return messages.TaskDone(
            task.task_id,
            None,
            seconds,
            frames,
            nbytes + transport.frame_bytes(frames),
            clock.timing(start + seconds) if clock is not None else None,
        )
    except BaseException as error:  # a result whose pickling raises, or even exits
        offset = _first_unsendable(results)
        return _failed(task, "result", offset, items, results[:offset], error, clock)


def _first_unsendable(results: list[Any]) -> int:
    for offset, result in enumerate(results):
        try:
            serialize.dumps(result)
        except BaseException:
            return offset
    return 0
