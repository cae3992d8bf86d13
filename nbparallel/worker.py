"""The worker process: runs chunks for the pool, and exits the moment the pool's process is gone.

Started by `backends.process` as a fresh interpreter (never a fork of the kernel, and never a
re-import of the user's script), with one socket to the pool. Two threads:
- the *reader* reads every message as it arrives, so a cancel is seen while a task runs, and
  exits the process (`os._exit`) when the socket reaches EOF: the pool's process has died,
  however it died (restart, crash, SIGKILL), since only that process holds the other end;
- the main thread runs tasks in order and sends results, printed output on the way.
A task that holds the GIL in C code keeps the reader from running; on Linux the worker has asked
to be killed when the pool's process dies (`die_with_parent`), so it does not outlive it even then.
"""

from __future__ import annotations

import collections
import ctypes
import mmap
import os
import pickle
import queue
import signal
import sys
import threading
import time
from typing import Any

from multiprocess.connection import Connection

from . import errors, serialize, tasks, transport

# Functions a worker keeps, by digest; the pool mirrors this cache to know what to send again.
FUNCTION_CACHE_SIZE = 16
_CANCELLED_REMEMBERED = 64
_PR_SET_PDEATHSIG = 1  # from linux/prctl.h


class FunctionCache:
    """A least-recently-used cache of a worker's functions, updated in the order tasks arrive.

    The pool keeps an identical one per worker (same size, same order of updates), so it knows
    without asking whether a worker still holds a function.
    """

    def __init__(self) -> None:
        self._entries: collections.OrderedDict[bytes, Any] = collections.OrderedDict()

    def __contains__(self, digest: bytes) -> bool:
        return digest in self._entries

    def touch(self, digest: bytes, value: Any = None) -> None:
        if serialize.holds_large_data(digest):
            # Such a function is never sent again (its digest is unique to its call): keep only
            # the newest, so that old calls' arrays do not stay mapped in every worker.
            for old in [d for d in self._entries if d != digest and serialize.holds_large_data(d)]:
                del self._entries[old]
        if value is not None or digest not in self._entries:
            self._entries[digest] = value
        self._entries.move_to_end(digest)
        while len(self._entries) > FUNCTION_CACHE_SIZE:
            self._entries.popitem(last=False)

    def get(self, digest: bytes) -> Any:
        return self._entries[digest]


class _Sender:
    """Sends messages to the pool; a lock, since task code may print from its own threads."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.task_id = 0

    def send(self, message: object) -> None:
        with self._lock:
            transport.send_message(self._conn, message)


class _ForwardedStream:
    """sys.stdout/sys.stderr of a worker: whole lines go to the notebook cell that made the call."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, sender: _Sender, name: str) -> None:
        self._sender = sender
        self._name = name
        self._buffer: list[str] = []

    def write(self, text: str) -> int:
        self._buffer.append(text)
        if "\n" in text:
            self.flush()
        return len(text)

    def flush(self) -> None:
        if self._buffer:
            text = "".join(self._buffer)
            self._buffer.clear()
            try:
                self._sender.send(tasks.Output(self._sender.task_id, self._name, text))
            except OSError:
                pass  # the pool is gone, and the reader thread is ending this process

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True


def _read_forever(conn: Connection, inbox: queue.SimpleQueue[Any], cancelled: collections.deque[int],
                  slot: memoryview) -> None:
    try:
        while True:
            message = transport.receive_message(conn)
            if isinstance(message, tasks.CancelCall):
                cancelled.append(message.call_id)
                slot[tasks.SLOT_CANCELLED] = message.call_id  # a running chunk stops at its next item
            else:
                inbox.put(message)
            del message  # a task's items are freed when it ends, not when the next message comes
    except (EOFError, OSError):
        pass
    # The pool is gone: nobody wants our results. Exit now, even in the middle of a task.
    os._exit(0)


def _pickled_exception(error: BaseException) -> bytes | None:
    """The exception as bytes, if the pool will be able to rebuild it; else None."""
    try:
        data = serialize.dumps(error)
        serialize.loads(data)
        return data
    except BaseException:  # even SystemExit from a hostile __reduce__: this is an error report
        return None


def _describe(error: BaseException, item: Any) -> tasks.Failure:
    return tasks.Failure(
        error=_pickled_exception(error),
        detail=f"{type(error).__name__}: {error}",
        traceback=tasks.format_traceback(error),
        item=errors.short_repr(item),
        pid=os.getpid(),
    )


def _failed(task: tasks.RunTask, stage: str, offset: int, items: list[Any], results: list[Any],
            error: BaseException) -> tasks.TaskFailed:
    try:
        done = serialize.dumps(results)
    except BaseException:
        done = serialize.dumps([])
    item = items[offset] if offset < len(items) else "(the items could not be loaded)"
    return tasks.TaskFailed(task.task_id, offset, done, stage, _describe(error, item))


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


def run_task(task: tasks.RunTask, functions: FunctionCache, setup: SetupNamespace, slot: Any) -> object:
    """Run one task (loading its function and items); the message to send back."""
    items: list[Any] = []
    try:
        func = functions.get(task.digest)
        if func is None:
            raise RuntimeError("nbparallel internal error: the pool did not send the function")
        if isinstance(func, list):  # its frames, as they arrived
            func = serialize.load_function(func)
            functions.touch(task.digest, func)
        serialize.set_receiver_namespace(getattr(func, "__globals__", None))
        items = serialize.loads_frames(task.frames)
    except BaseException as error:
        return _failed(task, "load", 0, items, [], error)
    start = time.perf_counter()
    try:
        if task.mode == "setup":
            results = tasks.run_chunk(
                lambda values: setup.run(func, values), items, "map", task.call_id, slot, False
            )
        else:
            setup.offer(func)
            results = tasks.run_chunk(func, items, task.mode, task.call_id, slot, task.keep_going)
    except tasks.ItemFailed as failed:
        return _failed(task, "raised", failed.offset, items, failed.results, failed.error)
    seconds = time.perf_counter() - start
    if task.keep_going:
        results = [
            _describe(r.error, items[offset]) if isinstance(r, tasks.Raised) else r
            for offset, r in enumerate(results)
        ]
    try:
        return tasks.TaskDone(task.task_id, None, seconds, serialize.dumps_frames(results))
    except BaseException as error:  # a result whose pickling raises, or even exits
        offset = _first_unsendable(results)
        return _failed(task, "result", offset, items, results[:offset], error)


def _first_unsendable(results: list[Any]) -> int:
    for offset, result in enumerate(results):
        try:
            serialize.dumps(result)
        except BaseException:
            return offset
    return 0


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent, `parent_pid`, dies (0: do not ask).

    Linux sends the signal when the parent *thread* that started this process ends: the pool
    starts every worker from a thread that lives as long as its process (`backends.launcher`).
    """
    if not parent_pid:
        return
    # ctypes is imported anyway (crossmemory): this costs microseconds. If prctl fails (a
    # seccomp filter), the socket lifeline remains.
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:  # it died before we asked, so no signal will come
        os._exit(0)


def main() -> None:
    """Entry point of a worker process: `python -c ... <socket fd> <slot fd> <parent pid or 0>`."""
    die_with_parent(int(sys.argv[3]))
    # The kernel's interrupt (SIGINT to its whole process group) is for the kernel: the pool
    # decides which tasks to stop, and stops their workers itself. (The boot line ignores it
    # already; this keeps `main` right however it is started.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(int(sys.argv[1]))
    slot = memoryview(mmap.mmap(int(sys.argv[2]), tasks.SLOT_BYTES)).cast("q")
    tasks.process_slot = slot  # for threads a task starts itself, reporting its progress
    config = pickle.loads(conn.recv_bytes())
    sys.path[:] = config["sys_path"]

    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    cancelled: collections.deque[int] = collections.deque(maxlen=_CANCELLED_REMEMBERED)
    threading.Thread(
        target=_read_forever, args=(conn, inbox, cancelled, slot), name="nbparallel-reader", daemon=True
    ).start()

    sender = _Sender(conn)
    stdout, stderr = _ForwardedStream(sender, "stdout"), _ForwardedStream(sender, "stderr")
    sys.stdout, sys.stderr = stdout, stderr
    functions = FunctionCache()
    setup = SetupNamespace()
    function_pages: list[Any] = []  # the shared arrays of the newest function that has any
    while True:
        task: tasks.RunTask | tasks.StopWorker = inbox.get()
        if isinstance(task, tasks.StopWorker):
            # Exit without interpreter finalization: nothing here needs it, and output written
            # during it would go to a socket the pool may already have closed.
            os._exit(0)
        if task.function_frames:
            functions.touch(task.digest, task.frames[:task.function_frames])
            if serialize.holds_large_data(task.digest):
                function_pages = task.frames[1:task.function_frames]
            task.frames = task.frames[task.function_frames:]
        else:
            functions.touch(task.digest)
        sender.task_id = task.task_id
        slot[tasks.SLOT_ITEM] = tasks.NOT_STARTED
        slot[tasks.SLOT_TASK] = task.task_id
        unreadable = next((f for f in task.frames if isinstance(f, transport.Unreadable)), None)
        if task.call_id in cancelled:
            reply: object = tasks.TaskDone(task.task_id, [], 0.0)
        elif unreadable is not None:
            reply = tasks.ItemsUnreadable(task.task_id, unreadable.reason)
        else:
            reply = run_task(task, functions, setup, slot)
            if isinstance(reply, tasks.TaskDone) and reply.frames:
                reply.frames = transport.share_large(reply.frames)
        stdout.flush()
        stderr.flush()
        # What this task read of large data leaves this process's memory now (its items are
        # freed, the captured arrays' pages given back), before the pool hears that the task
        # is done and sends the next one; the next task maps again what it reads. So a worker's
        # memory is what one task touches, not all a call ever touched.
        del task, unreadable
        transport.release_pages(function_pages)
        sender.send(reply)
        del reply
