"""One call from start to end: check, serialize the function once, chunk the items, submit a
bounded window of chunks, turn worker events into results (in input order, or as they finish)
or into the user's own exception, and cancel what is left when the caller stops listening.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import linecache
import os
import queue
import types
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any

from . import chunking, errors, outcomes, serialize, tasks
from .backends import Backend
from .options import Options
from .progressbar import Progress

def in_worker() -> bool:
    """True inside a worker: a nested call then runs serially instead of starting a pool."""
    return os.environ.get("NBPARALLEL_WORKER") == "1"


def check_function(func: object) -> None:
    if not callable(func):
        raise errors.not_callable(func)


def stream(
    get_backend: Callable[[], Backend], func: Callable[..., Any], items: Iterable[Any], options: Options,
    mode: str = "map", ordered: bool = True,
    keep_partial: Callable[[dict[int, Any]], None] = lambda unyielded: None,
    background: queue.SimpleQueue[Any] | None = None,
) -> Iterator[list[Any]]:
    """Results of `func` over `items`, a list per chunk (see `collect` and `one_by_one`).
    Checks everything before returning; runs lazily after.

    If the call fails or is interrupted, results that finished but were not yet yielded are
    handed to `keep_partial`, by input position, so that nothing computed is lost.

    `background`: the results will be read on another thread. The progress bar is shown now,
    in the caller's cell, and workers' events arrive on this queue, where `STOP` stops the call.

    Raises (at once): TypeError for a non-callable or non-iterable; UnsendableError for a
    function that cannot be sent. Raises (while iterating): the function's own exception.
    """
    check_function(func)
    try:
        iterator = iter(items)
    except TypeError:
        raise errors.not_iterable(items) from None
    if mode == "star":
        iterator = _checked_tuples(iterator)
    if in_worker():
        call_item = tasks.item_caller(func, mode)
        return ([call_item(item)] for item in iterator)
    chosen = get_backend()
    events: queue.SimpleQueue[Any] = queue.SimpleQueue() if background is None else background
    call = _call_factory(chosen, func, mode, options)(events.put, options.worker_count)
    total = chunking.length_hint(items)
    progress = _progress(chosen, call, total, options) if background is not None else None
    # Star items go through their check; others as given, for `chunking.chunks` to slice if it can.
    pieces = iterator if mode == "star" else items
    return _run(chosen, call, pieces, total, options, ordered, keep_partial, events, progress)


def collect(batches: Iterator[list[Any]], into: list[Any]) -> list[Any]:
    """`stream`'s results gathered into `into`, a chunk at a time (not an item: a million tiny
    items would spend longer here than in the workers); what arrived stays if the call fails."""
    __tracebackhide__ = True  # see Parallel.map
    for batch in batches:
        into.extend(batch)
    return into


def one_by_one(batches: Iterator[list[Any]]) -> Iterator[Any]:
    """`stream`'s results one at a time (imap); closing this stops the call."""
    __tracebackhide__ = True
    with contextlib.closing(batches):  # type: ignore[type-var]
        for batch in batches:
            yield from batch


def _progress(backend: Backend, call: tasks.Call, total: int | None, options: Options) -> Progress:
    return Progress(
        total, options.progress, call.name, running=lambda: backend.running_items(call),
        workers=backend.status if options.show_workers else None,
    )


def _call_factory(backend: Backend, func: Callable[..., Any], mode: str, options: Options,
                  ) -> Callable[[Callable[[object], None], int], tasks.Call]:
    """Serialize `func` once (if the backend copies it elsewhere); then make Calls of it.

    Raises:
        UnsendableError: the function or something it captures cannot be sent.
    """
    if backend.copies_data:
        payload = serialize.dump_function(func)
    else:
        payload = serialize.FunctionPayload(serialize.function_name(func), [], b"")

    def new_call(deliver: Callable[[object], None], max_workers: int) -> tasks.Call:
        return tasks.Call(
            call_id=tasks.next_id(), name=payload.name, func=func, function=payload.frames,
            digest=payload.digest, mode=mode, max_workers=max_workers, deliver=deliver,
            timeout=options.timeout, keep_going=options.errors != "raise",
        )

    return new_call


def _checked_tuples(items: Iterator[Any]) -> Iterator[Any]:
    for position, item in enumerate(items):
        if not isinstance(item, (tuple, list)):
            raise errors.not_a_tuple(position, item)
        yield item


STOP = object()
"""Put on a call's event queue (see `stream`), it stops the call as an interrupt would."""

# The caller never waits for events without a deadline: an interrupt can trip Python's SIGINT
# handler without waking a blocked wait (`_thread.interrupt_main()`, or a signal that lands while
# the caller hands the GIL over), and is then raised at the next wake-up, not with the next result.
_INTERRUPT_CHECK_SECONDS = 0.1


def _next_event(events: queue.SimpleQueue[Any]) -> Any:
    while True:
        try:
            return events.get(timeout=_INTERRUPT_CHECK_SECONDS)
        except queue.Empty:
            continue


class CallStopped(Exception):
    """Raised by a call's results after STOP arrived on its event queue."""


def _run(
    backend: Backend, call: tasks.Call, items: Iterable[Any], total: int | None, options: Options,
    ordered: bool, keep_partial: Callable[[dict[int, Any]], None], events: queue.SimpleQueue[Any],
    progress: Progress | None,
) -> Iterator[list[Any]]:
    __tracebackhide__ = True  # see Parallel.map
    sizer = chunking.ChunkSizer(total, options.worker_count, options.chunksize)
    pieces = chunking.chunks(items, sizer)
    submitted: collections.OrderedDict[int, tasks.Chunk] = collections.OrderedDict()
    finished: dict[int, list[Any]] = {}
    failing_chunk: dict[int, Any] = {}  # by position: what the chunk that failed finished first
    started = False
    more = True
    progress = progress or _progress(backend, call, total, options)
    ending = "failed"
    try:
        while True:
            while more and len(submitted) < sizer.window:
                piece = next(pieces, None)
                if piece is None:
                    more = False
                    break
                position, chunk_items = piece
                chunk = tasks.Chunk(tasks.next_id(), position, len(chunk_items), chunk_items)
                backend.submit(call, chunk)
                started = True
                submitted[chunk.task_id] = chunk
            if not submitted:
                break
            try:
                event = events.get(timeout=progress.redraw_seconds or _INTERRUPT_CHECK_SECONDS)
            except queue.Empty:
                progress.redraw()
                continue
            if event is STOP:
                raise CallStopped
            chunk = submitted[event.task_id]
            if isinstance(event, tasks.TaskLost):
                if outcomes.recover(call, chunk, event, options.retries, options.errors):
                    backend.submit(call, chunk)
                    continue
                event = None  # every item of the chunk has its outcome already
            elif isinstance(event, tasks.TaskFailed):
                failing_chunk = outcomes.finished_before_failure(call, chunk, event, options.errors)
            else:
                sizer.observe(chunk.size, getattr(event, "seconds", 0.0), getattr(event, "nbytes", 0))
            results = outcomes.results(call, chunk, event, options.errors)
            progress.advance(chunk.size, chunk.failed)
            if not ordered:
                del submitted[chunk.task_id]
                yield results
                continue
            finished[chunk.task_id] = results
            while submitted and next(iter(submitted)) in finished:
                task_id, _ = submitted.popitem(last=False)
                yield finished.pop(task_id)
        ending = "done"
    except (KeyboardInterrupt, CallStopped):
        ending = "stopped"
        if started:
            backend.cancel(call, stop_running=True)
        raise
    except GeneratorExit:  # the caller stopped reading (left an imap loop): running tasks may end
        ending = "stopped"
        raise
    finally:
        if ending != "done":
            if started and not call.closed:
                backend.cancel(call, stop_running=False)
            keep_partial({
                **{
                    position: result
                    for task_id, results in finished.items()
                    for position, result in enumerate(results, submitted[task_id].position)
                },
                **failing_chunk,
            })
        call.closed = True
        progress.close(ending)


def submit(
    get_backend: Callable[[], Backend], func: Callable[..., Any], args: tuple[Any, ...],
    kwargs: dict[str, Any], options: Options,
) -> Future[Any]:
    """Run `func(*args, **kwargs)` on a worker; a Future of its result."""
    check_function(func)
    future: Future[Any] = Future()
    if in_worker():
        try:
            future.set_result(func(*args, **kwargs))
        except BaseException as error:
            future.set_exception(error)
        return future
    backend = get_backend()
    # A future's result() raises the task's exception, whatever the session's `errors` says.
    new_call = _call_factory(backend, func, "apply", dataclasses.replace(options, errors="raise"))
    chunk = tasks.Chunk(tasks.next_id(), 0, 1, [(args, kwargs)])

    def deliver(event: object) -> None:
        if future.cancelled():
            return
        try:
            if isinstance(event, tasks.TaskLost):
                if outcomes.recover(call, chunk, event, options.retries, "raise"):
                    backend.submit(call, chunk)
                    return
            result = outcomes.results(call, chunk, event, "raise")[0]
        except BaseException as error:
            if future.set_running_or_notify_cancel():
                future.set_exception(error)
            return
        if future.set_running_or_notify_cancel():
            future.set_result(result)

    call = new_call(deliver, 1)

    def stop_if_cancelled(done: Future[Any]) -> None:
        if done.cancelled():
            backend.cancel(call, stop_running=True)

    future.add_done_callback(stop_if_cancelled)
    backend.submit(call, chunk)
    return future


def run_setup(get_backend: Callable[[], Backend], source: str, namespace: dict[str, Any], filename: str) -> int:
    """Run `source` in every worker (and in each worker started later); how many ran it.

    The code reads notebook variables from `namespace` (they are sent along, checked like a
    function's captures); what it defines stays in the workers. Raises the first failure.
    """
    if in_worker():
        raise errors.nested_setup()
    code = compile(source, filename, "exec")
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    used = {name: namespace[name] for name in serialize.global_names(code) if name in namespace}
    carrier = types.FunctionType(code, {"__name__": "__main__", **used}, "every-worker cell")
    carrier.__qualname__ = carrier.__name__
    backend = get_backend()
    events: queue.SimpleQueue[Any] = queue.SimpleQueue()
    call = _call_factory(backend, carrier, "setup", Options())(events.put, 0)
    count = backend.run_on_every_worker(call, [used])
    try:
        for _ in range(count):
            event = _next_event(events)
            if isinstance(event, tasks.TaskLost):  # its own cause (a restart...) if it has one
                raise event.error or errors.worker_died(event.pid, event.returncode, None, None)
            outcomes.results(call, tasks.Chunk(event.task_id, 0, 1, [used]), event, "raise")
    except KeyboardInterrupt:
        backend.cancel(call, stop_running=True)
        raise
    except BaseException:
        backend.cancel(call, stop_running=False)
        raise
    finally:
        call.closed = True
    return count
