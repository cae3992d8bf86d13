"""The threads backend: tasks run on threads of this process, and nothing is serialized.

For I/O-bound work (downloads, file reads, database calls) and for functions that release the
GIL (NumPy, most compression and hashing): no process start, no copying of arguments or results,
and captured locks, files and connections are shared as they are. What threads cannot do: stop a
running item (a timeout or an interrupt stops the call, but the item runs on to its end), use
more than one core for pure-Python code, or survive a crash of the process.
"""

from __future__ import annotations

import collections
import os
import queue
import threading
import time
import types
import weakref
from typing import Any

import psutil

from .. import errors, execution, messages, slots, tasks, timing
from . import WorkerStatus


class ThreadPool:
    """Worker threads fed from one queue; started on first use.

    Safe without the GIL (free-threaded CPython, where this is the default backend): chunks
    reach the threads through a SimpleQueue, and the bookkeeping that several threads touch
    (the threads, what each runs, tasks done, the setup and the functions offered it) is only
    read or changed under `_lock`. A running chunk's slot is a list one thread writes and others
    read item by item; list items are read and written atomically with or without the GIL.
    """

    copies_data = False

    def __init__(self, workers: int) -> None:
        self._size = workers
        # A chunk, and when it was queued (with insights on).
        self._jobs: queue.SimpleQueue[tuple[tasks.Call, tasks.Chunk, float] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._running: dict[int, tuple[tasks.Call, list[int]]] = {}  # thread id -> call, slot
        self._done: dict[int, int] = {}
        self._born: dict[int, float] = {}  # thread id -> when it started (time.time())
        # Jobs of a call already running on as many threads as it may use, by call.
        self._held: dict[tasks.Call, collections.deque[tuple[tasks.Call, tasks.Chunk, float]]] = {}
        # What `%%parallel --every-worker` cells defined: threads share one process, so such a
        # cell runs once, and its names are offered to every later task.
        self._setup = execution.SetupNamespace()
        self._with_setup: weakref.WeakKeyDictionary[
            types.FunctionType, tuple[int, types.FunctionType]
        ] = weakref.WeakKeyDictionary()

    @property
    def size(self) -> int:
        return self._size

    def submit(self, call: tasks.Call, chunk: tasks.Chunk) -> None:
        with self._lock:
            self._grow()
        self._jobs.put((call, chunk, time.time() if call.insights else 0.0))

    def cancel(self, call: tasks.Call, stop_running: bool) -> None:
        """Queued chunks of the call are dropped; running ones stop before their next item."""
        with self._lock:
            self._held.pop(call, None)
            for running_call, slot in self._running.values():
                if running_call is call:
                    slot[slots.CANCELLED] = call.call_id

    def running_items(self, call: tasks.Call) -> float:
        with self._lock:
            running = [
                slot for running_call, slot in self._running.values() if running_call is call
            ]
        return sum(slots.running_items(slot, slot[slots.TASK]) for slot in running)

    def run_on_every_worker(self, call: tasks.Call, items: list[Any]) -> list[tasks.Chunk]:
        """Threads share one process: the setup runs once, for all of them."""
        chunk = tasks.Chunk(tasks.next_id(), 0, 1, items)
        self.submit(call, chunk)
        return [chunk]

    def restart(self) -> None:
        """Threads hold no state of their own to refresh: nothing to do."""

    def resize(self, workers: int) -> None:
        with self._lock:
            extra = len(self._threads) - workers
            self._size = workers
            self._grow()
        for _ in range(extra):
            self._jobs.put(None)  # the thread that takes it stops

    def set_limits(self, max_tasks_per_worker: int | None, max_worker_memory: int | None) -> None:
        """Recycling applies to worker processes; threads have no memory of their own."""

    def status(self, memory: bool = True) -> list[WorkerStatus]:
        rss = psutil.Process().memory_info().rss if memory else 0
        with self._lock:
            return [
                WorkerStatus(
                    thread.native_id or 0,
                    "busy" if thread.ident in self._running else "idle",
                    self._done.get(thread.ident or 0, 0),
                    rss,
                    self._born.get(thread.ident or 0, 0.0),
                    self._born.get(thread.ident or 0, 0.0),
                )
                for thread in self._threads
            ]

    def shutdown(self) -> None:
        """Stop the threads once their current items end (a running item cannot be stopped);
        queued chunks fail with "the pool was shut down"."""
        with self._lock:
            threads = list(self._threads)
            self._size = 0
            lost = [(call, slot[slots.TASK]) for call, slot in self._running.values()]
            for call, slot in self._running.values():
                slot[slots.CANCELLED] = call.call_id
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                lost.append((job[0], job[1].task_id))
        for call, task_id in lost:
            if not call.closed:
                call.deliver(
                    messages.TaskLost(task_id, 0, None, None, error=errors.pool_shut_down())
                )
        for _ in threads:
            self._jobs.put(None)

    def _grow(self) -> None:
        while len(self._threads) < self._size:
            thread = threading.Thread(
                target=self._work, name=f"nbparallel-thread-{len(self._threads)}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
            self._born[thread.ident or 0] = time.time()

    def _work(self) -> None:
        me = threading.get_ident()
        try:
            self._work_until_told(me)
        finally:
            with self._lock:
                self._threads = [t for t in self._threads if t.ident != me]
                self._born.pop(me, None)

    def _work_until_told(self, me: int) -> None:
        job = self._jobs.get()
        while job is not None:
            call, chunk, sent = job
            if call.closed:
                with self._lock:
                    self._held.pop(call, None)
                job = self._jobs.get()
                continue
            slot = slots.local_slot(chunk.task_id)
            with self._lock:
                if 0 < call.max_workers <= sum(r is call for r, _ in self._running.values()):
                    # The call runs on `workers` threads at once, in a pool that may have more:
                    # the job waits for one of its running chunks to end. (0: every-worker
                    # setup, which has no bound.)
                    self._held.setdefault(call, collections.deque()).append(job)
                    job = None
                else:
                    self._running[me] = (call, slot)
            if job is None:
                job = self._jobs.get()
                continue
            try:
                message = self._run(call, chunk, slot, sent)
            finally:
                with self._lock:
                    del self._running[me]
                    self._done[me] = self._done.get(me, 0) + 1
                    job = self._next_held(call)
            if not call.closed:
                call.deliver(message)
            if job is None:
                job = self._jobs.get()

    def _next_held(self, call: tasks.Call) -> tuple[tasks.Call, tasks.Chunk, float] | None:
        """A job of `call` held back for want of room, now that one of its chunks ended."""
        held = self._held.get(call)
        if not held:
            return None
        job = held.popleft()
        if not held:
            del self._held[call]
        return job

    def _run(self, call: tasks.Call, chunk: tasks.Chunk, slot: list[int], sent: float) -> object:
        clock = _start_timing(call, chunk, sent)
        started = time.perf_counter()
        try:
            if call.kind == "setup":
                results = execution.run_chunk(
                    lambda values: self._run_setup(call.function, values),
                    chunk.items,
                    "map",
                    call.call_id,
                    slot,
                    False,
                )
            else:
                func = self._offer_setup(call.function)
                results = execution.run_chunk(
                    func, chunk.items, call.kind, call.call_id, slot, call.keep_going, clock
                )
        except execution.ItemFailed as failed:
            return messages.TaskFailed(
                chunk.task_id,
                failed.offset,
                failed.results,
                "raised",
                _failure(failed.error, chunk.items[failed.offset]),
                _timing(sent, started, clock),
            )
        if call.keep_going:
            results = [
                _failure(r.error, chunk.items[offset]) if isinstance(r, execution.Raised) else r
                for offset, r in enumerate(results)
            ]
        seconds = time.perf_counter() - started
        return messages.TaskDone(
            chunk.task_id, results, seconds, timing=_timing(sent, started, clock)
        )

    def _run_setup(self, cell: Any, notebook_values: dict[str, Any]) -> None:
        with self._lock:
            self._setup.run(cell, notebook_values)

    def _offer_setup(self, func: Any) -> Any:
        """`func` with setup names it lacks, on a copy of its globals (the notebook's stay clean)."""
        if not isinstance(func, types.FunctionType):
            return func
        with self._lock:  # every read of the setup too: without the GIL nothing else orders them
            if self._setup.generation == 0:
                return func
            generation, copy = self._with_setup.get(func, (0, func))
            if generation != self._setup.generation:
                merged = {**self._setup.names, **func.__globals__}
                copy = types.FunctionType(
                    func.__code__, merged, func.__name__, func.__defaults__, func.__closure__
                )
                self._with_setup[func] = (self._setup.generation, copy)
            return copy


def _start_timing(call: tasks.Call, chunk: tasks.Chunk, sent: float) -> timing.ItemClock | None:
    """With insights on: where its items' times go; for a live timeline, say it starts now."""
    if not call.insights:
        return None
    if call.announce_starts:
        call.deliver(
            messages.TaskStarted(chunk.task_id, threading.get_native_id(), sent, time.time())
        )
    return timing.ItemClock()


def _timing(sent: float, started: float, clock: timing.ItemClock | None) -> messages.Timing | None:
    """A chunk's Timing on a thread: nothing is serialized, and nothing travels."""
    if clock is None:
        return None
    now = time.time()
    start = now - (time.perf_counter() - started)
    done = timing.item_timing(threading.get_native_id(), sent, start, now, 0.0, 0.0, clock)
    done.received = now
    return done


def _failure(error: BaseException, item: Any) -> messages.Failure:
    return messages.Failure(
        error=error,
        detail=f"{type(error).__name__}: {error}",
        traceback=execution.format_traceback(error),
        item=errors.short_repr(item),
        pid=os.getpid(),
    )
