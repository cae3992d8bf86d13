"""The default backend: a persistent pool of worker processes.

Data flow::

    caller thread               dispatcher thread (dispatcher.py)           worker process
    submit(call, chunk) --> pending --> scheduling.choose_worker --> RunTask  --> run_chunk
                                      <-- TaskDone / TaskFailed / Output <--
    call.deliver(event) <-------------+   (EOF on a worker's socket: TaskLost, worker replaced)

`ProcessPool` is what callers use and what owns the pool's state (under `lock`); `Dispatcher`
is its one waiting thread; `scheduling` says which worker gets a chunk; `worker_process` starts
and ends workers, always from the `launcher` thread and never under `lock`. Workers stay in the
kernel's process group, so Jupyter's restart (killpg) reaches them too; the pool stops itself
first when the kernel is asked to exit (see `lifecycle.stop_with_kernel`). Starting a pool also
stops the workers of dead owners.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection, Pipe
from typing import Any

from .. import crossmemory, errors, lifecycle, messages, serialize, slots, tasks, transport
from . import WorkerStatus, launcher, scheduling, worker_process
from .dispatcher import Dispatcher
from .worker_process import Task, WorkerProcess


class ProcessPool:
    """A pool of worker processes that lives as long as this process, or until `shutdown`."""

    copies_data = True

    def __init__(
        self,
        workers: int,
        max_tasks_per_worker: int | None = None,
        max_worker_memory: int | None = None,
    ) -> None:
        # Guards everything below; held briefly, never while starting a process.
        self.lock = threading.Lock()
        self.workers: dict[Connection, WorkerProcess] = {}
        self.closed = False
        self.wake_reader, self._wake_writer = Pipe(duplex=False)
        self._woken = False
        self._size = workers
        self._limits = messages.Limits(max_tasks_per_worker, max_worker_memory)
        self._pending: collections.deque[Task] = collections.deque()
        self._setups: list[tuple[tasks.Call, list[Any]]] = []  # replayed on every new worker
        # A call's function as sent to workers, its large frames shared once per call, or not
        # at all when they are those of the latest call, unchanged.
        self._shared_functions: weakref.WeakKeyDictionary[tasks.Call, list[Any]] = (
            weakref.WeakKeyDictionary()
        )
        self._shared_copies = transport.SharedCopies()
        # Large items stay in this process, and each worker copies those it runs (in parallel,
        # no copy here); off where workers cannot read this process's memory, or one said so.
        self._lending = crossmemory.allow_children_to_read()
        self._dispatcher: Dispatcher | None = None
        self._start_once = threading.Lock()  # the first call starts the dispatcher, once
        self._recording = threading.Lock()  # records are written in the order they were taken
        self._closing: list[Connection] = []  # of workers stopped on purpose; the dispatcher closes
        self._forget_kernel_hook: Callable[[], None] = lambda: None

    # --- the caller's side ------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    def submit(self, call: tasks.Call, chunk: tasks.Chunk) -> None:
        """Queue a chunk of `call`; its events arrive through `call.deliver`.

        Raises:
            UnsendableError: an item cannot be serialized (before anything is queued or started).
        """
        with self.lock:
            lending = self._lending
        frames = serialize.dump_chunk(chunk.items, chunk.position)
        frames = transport.lend_large(frames) if lending else transport.share_large(frames)
        self.start()
        self._share_function(call)
        with self.lock:
            if self.closed:
                raise errors.pool_shut_down()
            self._pending.append((call, chunk, frames))
            self.assign_pending()  # from this thread: a free worker gets it without a hop
            if self._pending or call.timeout is not None:
                self._wake()  # to assign it later, or to watch its items' time

    def cancel(self, call: tasks.Call, stop_running: bool) -> None:
        """Drop the call's queued chunks; workers skip or stop its tasks.

        With `stop_running`, workers in the middle of one of its tasks are killed (and replaced):
        the only way to stop a task at once, whatever it is doing.
        """
        with self.lock:
            self._setups = [(c, items) for c, items in self._setups if c is not call]
            self._pending = collections.deque(task for task in self._pending if task[0] is not call)
            for worker in self.workers.values():
                running = worker.running()
                if running is None or not worker.serves(call):
                    continue
                if stop_running and running[0] is call:
                    worker.process.kill()
                else:
                    worker.send(messages.CancelCall(call.call_id))

    def running_items(self, call: tasks.Call) -> float:
        """Read from the workers' slots: the items they finished, and parts they reported."""
        with self.lock:
            running = [
                (w.slot, w.inflight[0][1].task_id)
                for w in self.workers.values()
                if w.inflight and w.inflight[0][0] is call
            ]
        return sum(slots.running_items(slot, task_id) for slot, task_id in running)

    def run_on_every_worker(self, call: tasks.Call, items: list[Any]) -> list[tasks.Chunk]:
        """Run a setup task on every worker now, and first thing on every worker started later.

        Returns the chunks sent now: their events arrive through `call.deliver`.
        """
        self.start()
        self._share_function(call)
        with self.lock:
            self._setups.append((call, items))
            workers = [w for w in self.workers.values() if not w.retiring]
            return [self._send_setup(worker, call, items) for worker in workers]

    def restart(self) -> None:
        """Replace every worker with a fresh one (setup tasks are replayed); running tasks fail.

        The replacements exist when this returns.
        """
        with self.lock:
            old = [w for w in self.workers.values() if not w.retiring]
            for worker in old:
                worker.process.kill()
                self.take_out(worker)
        worker_process.reap(old)
        for worker in old:
            running = worker.running()
            if running is not None and not running[0].closed:
                running[0].deliver(
                    messages.TaskLost(
                        running[1].task_id, worker.pid, None, None, error=errors.pool_restarted()
                    )
                )
        self.refill()

    def set_limits(self, max_tasks_per_worker: int | None, max_worker_memory: int | None) -> None:
        """Each worker retires itself after this many tasks, or once it grew past this many bytes."""
        with self.lock:
            self._limits = messages.Limits(max_tasks_per_worker, max_worker_memory)
            for worker in self.workers.values():
                worker.send(self._limits)

    def resize(self, workers: int) -> None:
        """Start or stop workers; idle ones beyond the new size are gone when this returns
        (busy ones stop when their task ends)."""
        with self.lock:
            self._size = workers
            if self._dispatcher is None or self.closed:
                return
            for worker in scheduling.to_retire(self.workers.values(), workers):
                worker.retiring = True
            stopping = self.stop_idle_retiring()
        self.refill()
        worker_process.reap(stopping)
        with self.lock:
            for worker in stopping:
                if self.workers.pop(worker.conn, None) is not None:
                    self._closing.append(worker.conn)
            self._wake()
        self._record()

    def status(self, memory: bool = True) -> list[WorkerStatus]:
        with self.lock:
            workers = list(self.workers.values())
        return [
            WorkerStatus(
                w.pid,
                "stopping" if w.retiring else "busy" if w.inflight else "idle",
                w.tasks_done,
                worker_process.memory_rss(w.pid) if memory else 0,
                w.create_time,
                w.ready_at,
            )
            for w in workers
        ]

    def shutdown(self) -> None:
        """Stop every worker (waiting briefly for a clean exit, then killing) and the dispatcher."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self._forget_kernel_hook()
            self._shared_copies.clear()
            lost = list(self._pending)
            self._pending.clear()
            workers = list(self.workers.values())
            self.workers.clear()
            for worker in workers:
                lost.extend(worker.inflight)
                worker.conn.close()  # EOF: the worker exits by itself
            self._wake()
        # A refill under way (on the launcher thread) sees `closed` and stops what it started:
        # wait for it (the launcher runs jobs in order), so that no worker outlives this call.
        with contextlib.suppress(errors.NbParallelError):
            launcher.run(lambda: None)
        self._record()
        for call, chunk, _ in lost:
            if not call.closed:
                call.deliver(
                    messages.TaskLost(chunk.task_id, 0, None, None, error=errors.pool_shut_down())
                )
        worker_process.reap(workers)
        dispatcher = self._dispatcher
        if dispatcher is not None and dispatcher is not threading.current_thread():
            dispatcher.join(worker_process.EXIT_WAIT_SECONDS)
        if dispatcher is None or not dispatcher.is_alive():
            self.wake_reader.close()  # now, not when a reference cycle is collected
            self._wake_writer.close()

    # --- steps the dispatcher and the caller share (called with `lock` held) -----------------

    def assign_pending(self) -> None:
        """Send queued chunks, oldest first, to workers with room (least loaded first)."""
        while self._pending:
            call, chunk, frames = self._pending[0]
            worker = scheduling.choose_worker(self.workers.values(), call)
            if worker is None:
                return
            self._pending.popleft()
            self._send_task(worker, call, chunk, frames)

    def queue_first(self, task: Task) -> None:
        self._pending.appendleft(task)

    def stop_lending(self) -> None:
        """A worker could not copy items out of this process: share them from now on."""
        self._lending = False

    def stop_idle_retiring(self) -> list[WorkerProcess]:
        """Tell idle retiring workers to stop; they exit, and the dispatcher sees their EOF."""
        stopping = scheduling.to_stop_now(self.workers.values())
        for worker in stopping:
            worker.stopping = True
            worker.send(messages.StopWorker())
        return stopping

    def start_replacements(self) -> None:
        """Start workers up to the pool's size, soon, on the launcher thread."""
        if not self.closed:
            launcher.run_later(self._fill_here)

    def woken(self) -> None:
        while self.wake_reader.poll():
            self.wake_reader.recv_bytes()
        with self.lock:
            self._woken = False
            closing, self._closing = self._closing, []
            for conn in closing:  # under the lock, as the dispatcher closes a dead worker's
                conn.close()

    # --- workers coming and going -----------------------------------------------------------

    def take_out(self, worker: WorkerProcess, died: bool = False) -> None:
        """Remove a worker that is gone or going; its queued tasks go back to the front of the
        queue (all of them if it retired itself: then it was running none). With `lock` held."""
        del self.workers[worker.conn]  # its EOF, when the dispatcher sees it, is then ignored
        running = worker.running()
        if died and running is not None and running[0].kind == "setup" and not worker.said_retiring:
            # A setup task that kills its worker would kill every replacement too.
            self._setups = [(c, items) for c, items in self._setups if c is not running[0]]
        queued = list(worker.inflight) if worker.said_retiring else list(worker.inflight)[1:]
        again = [task for task in queued if task[0].kind != "setup" and not task[0].closed]
        self._pending.extendleft(reversed(again))  # setups are replayed anyway
        if worker.said_retiring:
            worker.inflight.clear()
        self._wake()

    def start(self) -> None:
        """Launch the workers and start the dispatcher, unless they run already (the first task
        does it, or `backends.create`)."""
        if self._dispatcher is not None:
            return
        with self._start_once:
            if self.closed:
                raise errors.pool_shut_down()
            if self._dispatcher is not None:
                return
            self.refill()
            self._dispatcher = Dispatcher(self)
            self._dispatcher.start()
            self._forget_kernel_hook = lifecycle.stop_with_kernel(self.shutdown)
            # Workers a dead owner left behind stop when any pool starts, not only on %load_ext.
            launcher.run_later(lifecycle.reap_orphans)

    def refill(self) -> None:
        """Start workers until the pool has its size, and return once they are in it."""
        launcher.run(self._fill_here)

    def _fill_here(self) -> None:
        """`refill`'s work, on the launcher thread: fills never overlap (it runs jobs one at a
        time), and no thread holds a lock of the pool's while it waits for one."""
        while True:
            with self.lock:
                missing = self._size - sum(not w.retiring for w in self.workers.values())
                limits, size = self._limits, self._size
                if self.closed or missing <= 0:
                    break
            started = worker_process.launch(limits, missing, size)
            with self.lock:
                closed = self.closed
                if not closed:
                    for worker in started:
                        self.workers[worker.conn] = worker
                        for call, items in self._setups:
                            self._send_setup(worker, call, items)
                    self.assign_pending()
                    self._wake()
            if closed:  # shut down meanwhile: these were never the pool's, stop them now
                for worker in started:
                    worker.conn.close()
                    worker.process.kill()
                worker_process.reap(started)
                break
        self._record()

    def _record(self) -> None:
        with self._recording:
            with self.lock:
                workers = [(w.pid, w.create_time) for w in self.workers.values()]
            lifecycle.record_workers(self, workers)

    # --- sending ----------------------------------------------------------------------------

    def _share_function(self, call: tasks.Call) -> None:
        """Put the call's large function frames (arrays it captures) in shared files, once."""
        with self.lock:
            if call in self._shared_functions:
                return
        shared = self._shared_copies.share(call.payload.frames, call.payload.frame_keys)
        with self.lock:
            self._shared_functions.setdefault(call, shared)

    def _send_setup(self, worker: WorkerProcess, call: tasks.Call, items: list[Any]) -> tasks.Chunk:
        """Send a setup task to this very worker, ahead of anything assigned later."""
        chunk = tasks.Chunk(tasks.next_id(), 0, 1, items)
        self._send_task(worker, call, chunk, serialize.dump_chunk(items, 0))
        return chunk

    def _send_task(
        self, worker: WorkerProcess, call: tasks.Call, chunk: tasks.Chunk, frames: list[Any]
    ) -> None:
        if not self._lending:
            frames = transport.share_instead(frames)
        worker.send_task(call, chunk, frames, self._shared_functions[call])

    def _wake(self) -> None:
        if not self._woken:
            self._woken = True
            self._wake_writer.send_bytes(b"")
