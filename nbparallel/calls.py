"""One call from start to end, on one path for every kind of call.

map/imap/starmap (`stream`), `submit` and every-worker setup (`run_setup`) all: check their
input, serialize the function once (`serialize`), hand chunks to the backend through one
`outcomes.Tracker`, and let it turn every worker event into results or the user's exception.
`stream` adds a bounded window of chunks (`chunking`), input order, and the progress bar.
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

from . import captures, chunking, errors, execution, serialize, tasks
from .backends import Backend
from .options import Options
from .outcomes import Tracker
from .progressbar import Progress
from .recording import Recorder

STOP = object()
"""Put on a call's event queue (see `stream`), it stops the call as an interrupt would."""


# The caller never waits for events without a deadline: an interrupt can trip Python's SIGINT
# handler without waking a blocked wait (`_thread.interrupt_main()`, or a signal that lands while
# the caller hands the GIL over), and is then raised at the next wake-up, not with the next result.
_INTERRUPT_CHECK_SECONDS = 0.1


class CallStopped(Exception):
    """Raised by a call's results after STOP arrived on its event queue."""


def in_worker() -> bool:
    """True inside a worker: a nested call then runs serially instead of starting a pool."""
    return os.environ.get("NBPARALLEL_WORKER") == "1"


def check_function(func: object) -> None:
    if not callable(func):
        raise errors.not_callable(func)


def stream(
    get_backend: Callable[[], Backend],
    func: Callable[..., Any],
    items: Iterable[Any],
    options: Options,
    kind: str = "map",
    ordered: bool = True,
    keep_partial: Callable[[dict[int, Any]], None] = lambda unyielded: None,
    background: queue.SimpleQueue[Any] | None = None,
    keep_insights: Callable[[Recorder], None] = lambda recorder: None,
) -> Iterator[list[Any]]:
    """Results of `func` over `items`, a list per chunk (see `collect` and `one_by_one`).
    Checks everything before returning; runs lazily after.

    If the call fails or is interrupted, results that finished but were not yet yielded are
    handed to `keep_partial`, by input position, so that nothing computed is lost. With
    insights on, the call's recorder goes to `keep_insights` when it ends, however it ends.

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
    if kind == "star":
        iterator = _checked_tuples(iterator)
    if in_worker():
        call_item = execution.item_caller(func, kind)
        return ([call_item(item)] for item in iterator)
    backend = get_backend()
    events: queue.SimpleQueue[Any] = queue.SimpleQueue() if background is None else background
    call = _new_call(backend, func, kind, options)(events.put, options.worker_count)
    recorder = Recorder(call.name, options.backend, options.worker_count) if call.insights else None
    tracker = Tracker(backend, call, options.errors, options.retries, recorder)
    total = chunking.length_hint(items)
    progress = _progress(backend, tracker, total, options) if background is not None else None
    if progress is not None:  # read on another thread: the bar goes in the caller's cell now
        progress.show()
    sizer = chunking.ChunkSizer(total, options.worker_count, options.chunksize)
    # Star items go through their check; others as given, for `chunking.chunks` to slice if it can.
    pieces = chunking.chunks(iterator if kind == "star" else items, sizer)
    return _run(
        tracker,
        events,
        lambda: progress or _progress(backend, tracker, total, options),
        ordered,
        keep_partial,
        pieces,
        sizer,
        keep_insights,
    )


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


def submit(
    get_backend: Callable[[], Backend],
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: Options,
) -> Future[Any]:
    """Run `func(*args, **kwargs)` on a worker; a Future of its result (which raises the task's
    exception, whatever the session's `errors` rule says: that rule is for maps)."""
    check_function(func)
    future: Future[Any] = Future()
    if in_worker():
        try:
            future.set_result(func(*args, **kwargs))
        except BaseException as error:
            future.set_exception(error)
        return future
    backend = get_backend()
    new_call = _new_call(backend, func, "apply", dataclasses.replace(options, errors="raise"))

    def deliver(event: object) -> None:
        try:
            finished = tracker.accept(event)
        except BaseException as error:
            tracker.finish()
            if future.set_running_or_notify_cancel():
                future.set_exception(error)
            return
        if finished is not None:
            tracker.finish()
            if future.set_running_or_notify_cancel():
                future.set_result(finished.results[0])

    tracker = Tracker(backend, new_call(deliver, 1), "raise", options.retries)

    def stop_if_cancelled(done: Future[Any]) -> None:
        if done.cancelled():
            tracker.cancel(stop_running=True)

    future.add_done_callback(stop_if_cancelled)
    tracker.send(tasks.Chunk(tasks.next_id(), 0, 1, [(args, kwargs)]))
    return future


class Submitter:
    """One call whose tasks arrive one at a time, each answered by its own Future: every task
    shares the call's function (serialized once), its workers' queues and one `cancel`. What the
    joblib backend runs a joblib `Parallel` call as. `kind` "apply": a task is (args, kwargs).
    A task's exception comes back as the user's own type; a lost worker fails its task (no retry).
    """

    def __init__(
        self, backend: Backend, func: Callable[..., Any], options: Options, max_workers: int
    ) -> None:
        check_function(func)
        new_call = _new_call(backend, func, "apply", dataclasses.replace(options, errors="raise"))
        self._futures: dict[int, Future[Any]] = {}
        self._backend = backend
        self._tracker = Tracker(backend, new_call(self._deliver, max_workers), "raise", 0)

    def submit(self, *args: Any, **kwargs: Any) -> Future[Any]:
        """Queue `func(*args, **kwargs)`. Raises UnsendableError for arguments that cannot be sent."""
        future: Future[Any] = Future()
        chunk = tasks.Chunk(tasks.next_id(), 0, 1, [(args, kwargs)])
        self._futures[chunk.task_id] = future
        try:
            self._tracker.send(chunk)
        except BaseException:
            del self._futures[chunk.task_id]
            raise
        return future

    def _deliver(self, event: Any) -> None:  # the backend's thread
        future = self._futures.pop(event.task_id, None)
        if future is None:
            return
        try:
            finished = self._tracker.accept(event)
        except BaseException as error:
            if future.set_running_or_notify_cancel():
                future.set_exception(error)
            return
        if finished is not None and future.set_running_or_notify_cancel():
            future.set_result(finished.results[0])

    def running_items(self) -> float:
        """How many items' worth of the running tasks is done (what their workers reported)."""
        return self._backend.running_items(self._tracker.call)

    def cancel(self) -> None:
        """Stop the call: queued tasks never start, running ones are stopped at once."""
        self._tracker.cancel(stop_running=True)
        for future in list(self._futures.values()):
            future.cancel()
        self._futures.clear()

    def close(self) -> None:
        """No more tasks: events that still come are dropped."""
        self._tracker.finish()


def run_setup(
    get_backend: Callable[[], Backend], source: str, namespace: dict[str, Any], filename: str
) -> int:
    """Run `source` in every worker (and in each worker started later); how many ran it.

    The code reads notebook variables from `namespace` (they are sent along, checked like a
    function's captures); what it defines stays in the workers. Raises the first failure. Each
    worker either answers or is seen to die at once (its socket closes), so this waits as long
    as the slowest worker's setup code runs, and the Stop button stops it.
    """
    if in_worker():
        raise errors.nested_setup()
    code = compile(source, filename, "exec")
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    used = {name: namespace[name] for name in captures.global_names(code) if name in namespace}
    carrier = types.FunctionType(code, {"__name__": "__main__", **used}, "every-worker cell")
    carrier.__qualname__ = carrier.__name__
    backend = get_backend()
    events: queue.SimpleQueue[Any] = queue.SimpleQueue()
    tracker = Tracker(
        backend, _new_call(backend, carrier, "setup", Options())(events.put, 0), "raise", 0
    )
    chunks = backend.run_on_every_worker(tracker.call, [used])
    tracker.expect(chunks)
    collections.deque(
        _run(tracker, events, lambda: Progress(None, False, carrier.__name__)), maxlen=0
    )
    return len(chunks)


def _run(
    tracker: Tracker,
    events: queue.SimpleQueue[Any],
    make_progress: Callable[[], Progress],
    ordered: bool = False,
    keep_partial: Callable[[dict[int, Any]], None] = lambda unyielded: None,
    pieces: Iterator[tuple[int, Any]] | None = None,
    sizer: chunking.ChunkSizer | None = None,
    keep_insights: Callable[[Recorder], None] = lambda recorder: None,
) -> Iterator[list[Any]]:
    """Send `pieces` as chunks, a window at a time, and yield each chunk's results as the tracker
    reads them from `events` (in input order if `ordered`), until no chunk is left."""
    __tracebackhide__ = True  # see Parallel.map
    progress = make_progress()
    tracker.call.announce_starts = tracker.call.insights and progress.draws_timeline
    order: collections.deque[int] = collections.deque()  # positions of chunks sent, not yielded
    waiting: dict[int, list[Any]] = {}  # by position: finished, behind an earlier chunk
    more = pieces is not None
    ending = "failed"
    try:
        while True:
            while more and sizer is not None and tracker.pending + len(waiting) < sizer.window:
                piece = next(pieces, None)  # type: ignore[arg-type]
                if piece is None:
                    more = False
                    break
                position, items = piece
                tracker.send(tasks.Chunk(tasks.next_id(), position, len(items), items))
                order.append(position)
            progress.show()  # once the first chunks are on their way (see `Progress`)
            if not tracker.pending:
                break
            try:
                event = events.get(timeout=progress.redraw_seconds or _INTERRUPT_CHECK_SECONDS)
            except queue.Empty:
                progress.redraw()
                continue
            if event is STOP:
                raise CallStopped
            finished = tracker.accept(event)
            if finished is None:
                continue
            if sizer is not None:
                sizer.observe(finished.chunk.size, finished.seconds, finished.nbytes)
            progress.advance(finished.chunk.size, finished.failed)
            if not ordered:
                yield finished.results
                continue
            waiting[finished.chunk.position] = finished.results
            while order and order[0] in waiting:
                yield waiting.pop(order.popleft())
        ending = "done"
    except (KeyboardInterrupt, CallStopped):
        ending = "stopped"
        tracker.cancel(stop_running=True)
        raise
    except GeneratorExit:  # the caller stopped reading (left an imap loop): running tasks may end
        ending = "stopped"
        raise
    finally:
        if ending != "done":
            tracker.cancel(stop_running=False)
            unyielded = {
                first + offset: result
                for first, results in {**waiting, **tracker.finished_in(events)}.items()
                for offset, result in enumerate(results)
            }
            keep_partial({**unyielded, **tracker.failing_chunk})
        recorder = tracker.finish()
        if recorder is not None:
            keep_insights(recorder)
        progress.close(ending, recorder.record if recorder is not None else None)


def _progress(backend: Backend, tracker: Tracker, total: int | None, options: Options) -> Progress:
    call = tracker.call
    return Progress(
        total,
        options.progress,
        call.name,
        running=lambda: backend.running_items(call),
        workers=backend.status if options.show_workers else None,
        timeline=tracker.recorder,
        lanes=options.worker_count,
    )


def _new_call(
    backend: Backend, func: Callable[..., Any], kind: str, options: Options
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
            call_id=tasks.next_id(),
            function=func,
            payload=payload,
            kind=kind,
            max_workers=max_workers,
            deliver=deliver,
            timeout=options.timeout,
            keep_going=options.errors != "raise",
            insights=options.insights and kind != "apply",  # maps only: not submit, not joblib
        )

    return new_call


def _checked_tuples(items: Iterator[Any]) -> Iterator[Any]:
    for position, item in enumerate(items):
        if not isinstance(item, (tuple, list)):
            raise errors.not_a_tuple(position, item)
        yield item
