"""The default backend: a persistent pool of worker processes, driven by one dispatcher thread.

Data flow::

    caller thread                 dispatcher thread                      worker process
    submit(call, chunk) --> pending --> assign to a free worker --> RunTask  --> run_chunk
                                      <-- TaskDone / TaskFailed / Output <--
    call.deliver(event) <-------------+   (EOF on a worker's socket: TaskLost, worker replaced)

Why fresh interpreters, not fork: a kernel runs threads (ZMQ, heartbeat, history), and forking
a threaded process can deadlock the child; Python 3.12 warns about it and 3.14 moved Linux off
fork by default. Why not multiprocessing's spawn: it re-imports a script's `__main__` in every
worker, which is what makes `if __name__ == "__main__":` necessary. So a worker is
`python -c "...worker.main()"` with one socket to this process; functions reach it by value.
The socket doubles as the worker's lifeline: it exits on EOF, i.e. when this process dies. On
Linux it also asks to be killed when this process dies, for a task that holds the GIL in C code
(see `launcher`, which starts every worker). Workers stay in the kernel's process group, so
Jupyter's restart (killpg) reaches them too; the pool stops itself first when the kernel is asked
to exit (see `lifecycle.stop_with_kernel`). Starting a pool also stops the workers of dead owners.
"""

from __future__ import annotations

import collections
import dataclasses
import mmap
import os
import pickle
import socket
import subprocess
import time
import sys
import tempfile
import threading
import traceback
import weakref
from collections.abc import Callable
from typing import Any

import psutil
from multiprocess.connection import Connection, Pipe, wait

from .. import crossmemory, errors, lifecycle, messages, serialize, slots, tasks, transport
from ..execution import FunctionCache
from . import WorkerStatus, launcher

# A worker whose last task took less than this gets its next task queued behind the running one,
# so it never idles for a round trip. Slower workers get one task at a time: a task queued
# behind a long one would wait while another worker sits idle.
_PREFETCH_BELOW_SECONDS = 0.01
_EXIT_WAIT_SECONDS = 2.0
_TIMEOUT_CHECK_SECONDS = 0.05  # how often running items are checked against a call's timeout
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The kernel's interrupt is SIGINT to its whole process group, workers included, and a worker
# still booting would die of it. So a worker is started with SIGINT blocked (by the launcher: the
# mask survives exec), and its first line ignores SIGINT, then unblocks it: one that arrived
# meanwhile is dropped.
_BOOT = (
    "import _signal; _signal.signal(_signal.SIGINT, _signal.SIG_IGN); "
    "hasattr(_signal, 'pthread_sigmask') and _signal.pthread_sigmask(_signal.SIG_UNBLOCK, [_signal.SIGINT]); "
    f"import sys; sys.path.insert(0, {_PACKAGE_ROOT!r}); from nbparallel.worker import main; main()"
)


_Task = tuple[tasks.Call, tasks.Chunk, list[Any]]  # a chunk, and its items serialized


@dataclasses.dataclass(eq=False)
class _Worker:
    process: subprocess.Popen[bytes]
    conn: Connection
    create_time: float
    slot: memoryview  # see slots: which task and item the worker is running
    inflight: collections.deque[_Task] = dataclasses.field(
        default_factory=collections.deque
    )
    functions: FunctionCache = dataclasses.field(default_factory=FunctionCache)
    tasks_done: int = 0
    fast_call_id: int = 0  # the call whose last task on this worker was short, if any
    # For timeouts: the (task, item) last seen running, and since when.
    watched: tuple[int, int] = (0, slots.NOT_STARTED)
    watched_since: float = 0.0
    timed_out: bool = False
    retiring: bool = False  # takes no new tasks; stops once idle
    stopping: bool = False

    def serves(self, call: tasks.Call) -> bool:
        """True if a task of `call` runs or waits on this worker."""
        return any(task[0] is call for task in self.inflight)

    def has_room(self) -> bool:
        if self.retiring:
            return False
        return not self.inflight or (
            len(self.inflight) == 1 and self.inflight[0][0].call_id == self.fast_call_id
        )

    @property
    def pid(self) -> int:
        return self.process.pid


def launch_worker() -> _Worker:
    """Start one worker interpreter (on the launcher thread), with a socket pair to this process."""
    ours, theirs = socket.socketpair()
    with ours, theirs, tempfile.TemporaryFile() as slot_file:
        slot_file.truncate(slots.BYTES)
        slot = memoryview(mmap.mmap(slot_file.fileno(), slots.BYTES)).cast("q")
        parent = os.getpid() if launcher.PARENT_DEATH_SIGNAL else 0  # 0: the worker does not ask
        process = launcher.run(lambda: subprocess.Popen(
            [sys.executable, "-c", _BOOT, str(theirs.fileno()), str(slot_file.fileno()), str(parent)],
            pass_fds=[theirs.fileno(), slot_file.fileno()],
            stdin=subprocess.DEVNULL,
            env={**os.environ, "NBPARALLEL_WORKER": "1"},
        ))
        conn = Connection(ours.detach())
    try:
        create_time = psutil.Process(process.pid).create_time()
    except psutil.Error:  # it died already; the dispatcher will see EOF and say why
        create_time = 0.0
    conn.send_bytes(pickle.dumps({"sys_path": list(sys.path)}))
    return _Worker(process, conn, create_time, slot)


class ProcessPool:
    """A pool of worker processes that lives as long as this process, or until `shutdown`."""

    copies_data = True

    def __init__(self, workers: int, max_tasks_per_worker: int | None = None,
                 max_worker_memory: int | None = None) -> None:
        self._size = workers
        self._max_tasks = max_tasks_per_worker
        self._max_memory = max_worker_memory
        self._lock = threading.Lock()
        self._workers: dict[Connection, _Worker] = {}
        self._pending: collections.deque[_Task] = collections.deque()
        self._wake_reader, self._wake_writer = Pipe(duplex=False)
        self._woken = False
        self._dispatcher: threading.Thread | None = None
        self._closed = False
        self._forget_kernel_hook: Callable[[], None] = lambda: None
        self._setups: list[tuple[tasks.Call, list[Any]]] = []  # replayed on every new worker
        # The call's function as sent to workers, its large frames shared once per call.
        self._shared_functions: weakref.WeakKeyDictionary[tasks.Call, list[Any]] = weakref.WeakKeyDictionary()
        # Large items stay in this process, and each worker copies those it runs (in parallel,
        # no copy here); off where workers cannot read this process's memory, or said so.
        self._lending = crossmemory.allow_children_to_read()

    # --- called from the caller's thread ------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    def submit(self, call: tasks.Call, chunk: tasks.Chunk) -> None:
        """Queue a chunk of `call`; its events arrive through `call.deliver`.

        Raises:
            UnsendableError: an item cannot be serialized (before anything is queued or started).
        """
        frames = serialize.dump_chunk(chunk.items, chunk.position)
        frames = transport.lend_large(frames) if self._lending else transport.share_large(frames)
        self._share_function(call)
        with self._lock:
            self._start()
            self._pending.append((call, chunk, frames))
            self._assign()  # from this thread: a free worker gets it without a hop to the dispatcher
            if self._pending or call.timeout is not None:
                self._wake()  # to assign it later, or to watch its items' time

    def cancel(self, call: tasks.Call, stop_running: bool) -> None:
        """Drop the call's queued chunks; workers skip or stop its tasks.

        With `stop_running`, workers in the middle of one of its tasks are killed (and replaced):
        the only way to stop a task at once, whatever it is doing.
        """
        with self._lock:
            self._setups = [(c, items) for c, items in self._setups if c is not call]
            self._pending = collections.deque(entry for entry in self._pending if entry[0] is not call)
            for worker in self._workers.values():
                if not worker.serves(call):
                    continue
                if stop_running and worker.inflight[0][0] is call:
                    worker.process.kill()
                else:
                    self._send(worker, messages.CancelCall(call.call_id))

    def running_items(self, call: tasks.Call) -> float:
        """Read from the workers' slots: the items they finished, and parts they reported."""
        with self._lock:
            running = [(w.slot, w.inflight[0][1].task_id) for w in self._workers.values()
                       if w.inflight and w.inflight[0][0] is call]
        return sum(slots.running_items(slot, task_id) for slot, task_id in running)

    def run_on_every_worker(self, call: tasks.Call, items: list[Any]) -> list[tasks.Chunk]:
        """Run a setup task on every worker now, and first thing on every worker started later.

        Returns the chunks sent now: their events arrive through `call.deliver`.
        """
        self._share_function(call)
        with self._lock:
            self._start()
            self._setups.append((call, items))
            workers = [w for w in self._workers.values() if not w.retiring]
            return [self._send_now(worker, call, items) for worker in workers]

    def restart(self) -> None:
        """Replace every worker with a fresh one (setup tasks are replayed); running tasks fail.

        The replacements exist when this returns.
        """
        with self._lock:
            old = [w for w in self._workers.values() if not w.retiring]
            for worker in old:
                worker.process.kill()
            running = [self._forget(worker) for worker in old]
        for worker, entry in zip(old, running):
            _reap(worker)
            if entry is not None and not entry[0].closed:
                entry[0].deliver(messages.TaskLost(entry[1].task_id, worker.pid, None, None, error=errors.pool_restarted()))

    def set_limits(self, max_tasks_per_worker: int | None, max_worker_memory: int | None) -> None:
        """Recycle a worker after this many tasks, or when it grows past this many bytes."""
        with self._lock:
            self._max_tasks, self._max_memory = max_tasks_per_worker, max_worker_memory

    def resize(self, workers: int) -> None:
        """Start or stop workers; idle ones beyond the new size are gone when this returns
        (busy ones stop when their task ends)."""
        with self._lock:
            self._size = workers
            if self._dispatcher is None or self._closed:
                return
            self._fill()
            stopping = self._retire_extra()
            self._wake()
        for worker in stopping:
            _reap(worker)
        with self._lock:
            for worker in stopping:
                self._workers.pop(worker.conn, None)  # its EOF is then ignored
            self._record()

    def status(self) -> list[WorkerStatus]:
        with self._lock:
            workers = list(self._workers.values())
        return [
            WorkerStatus(
                w.pid, "stopping" if w.retiring else "busy" if w.inflight else "idle",
                w.tasks_done, _memory_rss(w.process.pid),
            )
            for w in workers
        ]

    def shutdown(self) -> None:
        """Stop every worker (waiting briefly for a clean exit, then killing) and the dispatcher."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._forget_kernel_hook()
            lost = [entry for entry in self._pending]
            self._pending.clear()
            workers = list(self._workers.values())
            self._workers.clear()
            for worker in workers:
                lost.extend(worker.inflight)
                worker.conn.close()  # EOF: the worker exits by itself
            self._record()
            self._wake()
        for call, chunk, _ in lost:
            call.deliver(messages.TaskLost(chunk.task_id, 0, None, None, error=errors.pool_shut_down()))
        for worker in workers:
            _reap(worker)
        if self._dispatcher is not None and self._dispatcher is not threading.current_thread():
            self._dispatcher.join(_EXIT_WAIT_SECONDS)
        if self._dispatcher is None or not self._dispatcher.is_alive():
            self._wake_reader.close()  # now, not when a reference cycle is collected
            self._wake_writer.close()

    # --- the dispatcher -----------------------------------------------------------------

    def _start(self) -> None:
        """Start the workers and the dispatcher, unless they run already. Called with the lock held."""
        if self._closed:
            raise errors.pool_shut_down()
        if self._dispatcher is not None:
            return
        self._fill()
        self._dispatcher = threading.Thread(target=self._dispatch_forever, name="nbparallel-dispatcher", daemon=True)
        self._dispatcher.start()
        self._forget_kernel_hook = lifecycle.stop_with_kernel(self.shutdown)
        # Workers a dead owner left behind (stuck in C code where no parent-death signal exists)
        # stop when any pool starts, not only on %load_ext. After this pool's workers are
        # started and off this pool's lock: the sweep's psutil calls delay nothing.
        launcher.run_later(lifecycle.reap_orphans)

    def _fill(self) -> None:
        while sum(not w.retiring for w in self._workers.values()) < self._size:
            worker = launch_worker()
            self._workers[worker.conn] = worker
            for call, items in self._setups:
                self._send_now(worker, call, items)
        self._record()

    def _record(self) -> None:
        lifecycle.record_workers(self, [(w.pid, w.create_time) for w in self._workers.values()])

    def _retire_extra(self) -> list[_Worker]:
        """Retire workers beyond the pool's size, idle ones first; each stops when it is idle.

        Returns the idle ones, told to stop now."""
        extra = sum(not w.retiring for w in self._workers.values()) - self._size
        for worker in sorted(self._workers.values(), key=lambda w: len(w.inflight)):
            if extra <= 0:
                break
            if not worker.retiring:
                worker.retiring = True
                extra -= 1
        stopping = []
        for worker in self._workers.values():
            if worker.retiring and not worker.inflight and not worker.stopping:
                worker.stopping = True  # it exits; the dispatcher sees EOF and reaps it
                self._send(worker, messages.StopWorker())
                stopping.append(worker)
        return stopping

    def _wake(self) -> None:
        if not self._woken:
            self._woken = True
            self._wake_writer.send_bytes(b"")

    def _dispatch_forever(self) -> None:
        while not self._closed:
            try:
                self._dispatch_once()
            except Exception:  # never die silently: every call of this pool would wait forever
                if not self._closed:
                    traceback.print_exc(file=sys.__stderr__)

    def _dispatch_once(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._assign()
            self._stop_overdue()
            connections = [self._wake_reader, *self._workers]
            watching = any(w.inflight and w.inflight[0][0].timeout for w in self._workers.values())
        for ready in wait(connections, _TIMEOUT_CHECK_SECONDS if watching else None):
            if ready is self._wake_reader:
                with self._lock:
                    while self._wake_reader.poll():
                        self._wake_reader.recv_bytes()
                    self._woken = False
            else:
                self._receive(ready)

    def _stop_overdue(self) -> None:
        """Kill workers whose current item has run longer than its call's timeout."""
        now = time.monotonic()
        for worker in self._workers.values():
            timeout = worker.inflight[0][0].timeout if worker.inflight else None
            if timeout is None or worker.timed_out:
                continue
            running = (worker.slot[slots.TASK], worker.slot[slots.ITEM])
            if running != worker.watched:
                worker.watched, worker.watched_since = running, now
            elif now - worker.watched_since > timeout and running[0] == worker.inflight[0][1].task_id:
                worker.timed_out = True
                worker.process.kill()  # the only way to stop an item, whatever it is doing

    def _assign(self) -> None:
        """Send pending chunks, oldest first, to workers with room (least loaded first)."""
        while self._pending:
            call, chunk, frames = self._pending[0]
            worker = self._free_worker(call)
            if worker is None:
                return
            self._pending.popleft()
            self._send_task(worker, call, chunk, frames)

    def _send_now(self, worker: _Worker, call: tasks.Call, items: list[Any]) -> tasks.Chunk:
        """Send a task of `call` to this very worker, ahead of anything assigned later."""
        chunk = tasks.Chunk(tasks.next_id(), 0, 1, items)
        self._send_task(worker, call, chunk, serialize.dump_chunk(items, 0))
        return chunk

    def _send_task(self, worker: _Worker, call: tasks.Call, chunk: tasks.Chunk, frames: list[Any]) -> None:
        if not self._lending:
            frames = transport.share_instead(frames)
        worker.inflight.append((call, chunk, frames))
        digest = call.payload.digest
        function = self._shared_functions.get(call, []) if digest not in worker.functions else []
        worker.functions.touch(digest)
        self._send(worker, messages.RunTask(
            chunk.task_id, call.call_id, digest, call.kind, call.keep_going,
            [*function, *frames], len(function),
        ))

    def _share_function(self, call: tasks.Call) -> None:
        """Put the call's large function frames (arrays it captures) in shared files, once per call."""
        with self._lock:
            if call not in self._shared_functions:
                self._shared_functions[call] = transport.share_large(call.payload.frames)

    def _free_worker(self, call: tasks.Call) -> _Worker | None:
        serving = sum(w.serves(call) for w in self._workers.values())
        candidates = [
            w for w in self._workers.values()
            if w.has_room() and (serving < call.max_workers or w.serves(call))
            and (self._max_tasks is None or w.tasks_done + len(w.inflight) < self._max_tasks)
        ]
        return min(candidates, key=lambda w: len(w.inflight), default=None)

    def _worn_out(self, worker: _Worker) -> bool:
        if self._max_tasks is not None and worker.tasks_done >= self._max_tasks:
            return True
        return self._max_memory is not None and _memory_rss(worker.pid) > self._max_memory

    def _send(self, worker: _Worker, message: object) -> None:
        try:
            transport.send_message(worker.conn, message)
        except OSError:
            pass  # it died; the dispatcher sees EOF on its socket and reports it

    def _receive(self, conn: Connection) -> None:
        try:
            message = transport.receive_message(conn, map_shared=False)  # results may be kept long
        except (EOFError, OSError):
            self._on_exit(conn)
            return
        with self._lock:
            worker = self._workers.get(conn)
            if worker is None or not worker.inflight:
                return
            call, chunk, frames = worker.inflight[0]
            if isinstance(message, messages.ItemsUnreadable):
                self._lending = False
                worker.inflight.popleft()
                if not call.closed:
                    self._pending.appendleft((call, chunk, frames))
                    self._assign()
                return
            if isinstance(message, messages.Output):
                deliver = None
            else:
                worker.inflight.popleft()
                worker.tasks_done += 1
                # Never behind a task with lent items: the worker would copy the next items
                # while it runs, and hold two tasks' data.
                short = (getattr(message, "seconds", _PREFETCH_BELOW_SECONDS) < _PREFETCH_BELOW_SECONDS
                         and not transport.lends(frames))
                worker.fast_call_id = call.call_id if short else 0
                if not worker.retiring and self._worn_out(worker):
                    worker.retiring = True
                    self._fill()  # its replacement starts now; it stops once idle
                if worker.retiring and not worker.inflight:
                    self._retire_extra()
                deliver = call.deliver
        if call.closed:
            return
        if isinstance(message, messages.Output):
            call.write_output(message.stream, message.text)
        elif deliver is not None:
            deliver(message)

    def _forget(self, worker: _Worker) -> _Task | None:
        """Take a dead (or killed) worker out of the pool, replace it, requeue what it had not
        started; returns the task it was running, if any. Called with the lock held."""
        del self._workers[worker.conn]  # its EOF, when the dispatcher sees it, is then ignored
        running = worker.inflight[0] if worker.inflight else None
        if running is not None and running[0].kind == "setup":
            # A setup task that kills its worker would kill every replacement too.
            self._setups = [(c, items) for c, items in self._setups if c is not running[0]]
        if not self._closed:
            self._fill()
            queued = [
                task for task in list(worker.inflight)[1:]
                if task[0].kind != "setup" and not task[0].closed  # setups are replayed anyway
            ]
            self._pending.extendleft(reversed(queued))
            self._wake()
        return running

    def _on_exit(self, conn: Connection) -> None:
        conn.close()
        with self._lock:
            worker = self._workers.get(conn)
            if worker is None:
                return  # shut down, restarted or retired on purpose
            running = self._forget(worker)
        returncode = _reap(worker)
        if running is not None and not running[0].closed:
            call, chunk, _ = running
            offset = worker.slot[slots.ITEM] if worker.slot[slots.TASK] == chunk.task_id else None
            call.deliver(messages.TaskLost(
                chunk.task_id, worker.pid, returncode,
                offset if offset != slots.NOT_STARTED else None, worker.timed_out,
            ))


def _reap(worker: _Worker) -> int | None:
    """Wait briefly for the worker to exit, kill it if it does not, and return its exit code."""
    try:
        return worker.process.wait(_EXIT_WAIT_SECONDS)
    except subprocess.TimeoutExpired:
        worker.process.kill()
        return worker.process.wait()


def _memory_rss(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0
