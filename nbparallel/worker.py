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
import mmap
import os
import pickle
import queue
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from . import execution, keptpages, messages, serialize, slots, transport
from .backends.launcher import die_with_parent

_CANCELLED_REMEMBERED = 64


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
                self._sender.send(messages.Output(self._sender.task_id, self._name, text))
            except OSError:
                pass  # the pool is gone, and the reader thread is ending this process

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True


def _read_forever(
    conn: Connection,
    inbox: queue.SimpleQueue[Any],
    cancelled: collections.deque[int],
    slot: memoryview,
) -> None:
    try:
        while True:
            message = transport.receive_message(conn)
            if isinstance(message, messages.CancelCall):
                cancelled.append(message.call_id)
                slot[slots.CANCELLED] = message.call_id  # a running chunk stops at its next item
            else:
                inbox.put(message)
            del message  # a task's items are freed when it ends, not when the next message comes
    except (EOFError, OSError):
        pass
    # The pool is gone: nobody wants our results. Exit now, even in the middle of a task.
    os._exit(0)


def main() -> None:
    """Entry point of a worker process: `python -c ... <socket fd> <slot fd> <parent pid or 0>`."""
    die_with_parent(int(sys.argv[3]))
    # The kernel's interrupt (SIGINT to its whole process group) is for the kernel: the pool
    # decides which tasks to stop, and stops their workers itself. (The boot line ignores it
    # already; this keeps `main` right however it is started.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(int(sys.argv[1]))
    slot = memoryview(mmap.mmap(int(sys.argv[2]), slots.BYTES)).cast("q")
    slots.process_slot = slot  # for threads a task starts itself, reporting its progress
    config = pickle.loads(conn.recv_bytes())
    sys.path[:] = config["sys_path"]

    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    cancelled: collections.deque[int] = collections.deque(maxlen=_CANCELLED_REMEMBERED)
    threading.Thread(
        target=_read_forever,
        args=(conn, inbox, cancelled, slot),
        name="nbparallel-reader",
        daemon=True,
    ).start()

    sender = _Sender(conn)
    stdout, stderr = _ForwardedStream(sender, "stdout"), _ForwardedStream(sender, "stderr")
    sys.stdout, sys.stderr = stdout, stderr
    sender.send(messages.Ready(os.getpid()))
    serialize.import_dill()
    _serve(inbox, cancelled, slot, sender, (stdout, stderr), config["limits"])


def _serve(
    inbox: queue.SimpleQueue[Any],
    cancelled: collections.deque[int],
    slot: memoryview,
    sender: _Sender,
    streams: tuple[_ForwardedStream, ...],
    limits: messages.Limits,
) -> None:
    """Run tasks in the order they arrive until told to stop, or until this worker's limits say
    it should make way for a fresh one."""
    functions = execution.FunctionCache()
    setup = execution.SetupNamespace()
    kept = keptpages.KeptPages()  # the shared arrays' pages of the newest function with any
    tasks_done = 0
    while True:
        task: messages.RunTask | messages.StopWorker | messages.Limits = _next_message(inbox, kept)
        if isinstance(task, messages.Limits):
            limits = task
            continue
        if isinstance(task, messages.StopWorker):
            # Exit without interpreter finalization: nothing here needs it, and output written
            # during it would go to a socket the pool may already have closed.
            os._exit(0)
        if task.function_frames:
            functions.add(task.digest, task.frames[: task.function_frames])
            if serialize.holds_large_data(task.digest):
                kept.hold(task.digest, task.frames[1 : task.function_frames])
            task.frames = task.frames[task.function_frames :]
        kept.before_task(task.digest)
        sender.task_id = task.task_id
        slot[slots.ITEM] = slots.NOT_STARTED
        slot[slots.TASK] = task.task_id
        unreadable = next((f for f in task.frames if isinstance(f, transport.Unreadable)), None)
        if task.call_id in cancelled:
            reply: object = messages.TaskDone(task.task_id, [], 0.0)
        elif task.digest not in functions:
            reply = messages.FunctionMissing(task.task_id)
        elif unreadable is not None:
            reply = messages.ItemsUnreadable(task.task_id, unreadable.reason)
        else:
            if task.announce:  # the live timeline shows the task running from now
                sender.send(messages.TaskStarted(task.task_id, os.getpid(), task.sent, time.time()))
            reply = execution.run_task(task, functions, setup, slot)
            if isinstance(reply, messages.TaskDone) and reply.frames:
                reply.frames = transport.share_large(reply.frames)
            tasks_done += 1
        for stream in streams:
            stream.flush()
        # The task's items leave this process's memory now, before the pool hears that the
        # task is done and sends the next one. The pages it read of captured arrays stay for
        # the next task of the same function, unless it wrote to them (see keptpages): that
        # check runs while the reply is on its way.
        del task, unreadable
        sender.send(reply)
        del reply
        kept.after_task(keep=limits.max_memory is None)  # a limit counts what the task kept
        if _worn_out(limits, tasks_done):
            sender.send(messages.Retiring())
            os._exit(0)


def _next_message(inbox: queue.SimpleQueue[Any], kept: keptpages.KeptPages) -> Any:
    """The next message; if none comes for IDLE_SECONDS, the kept pages are given back first."""
    if kept.mapped:
        try:
            return inbox.get(timeout=keptpages.IDLE_SECONDS)
        except queue.Empty:
            kept.release()
    return inbox.get()


def _worn_out(limits: messages.Limits, tasks_done: int) -> bool:
    """This worker ran its share of tasks, or grew past its memory limit (a leaky library)."""
    if limits.max_tasks is not None and tasks_done >= limits.max_tasks:
        return True
    if limits.max_memory is None:
        return False
    import psutil  # only where a limit is set: a worker starts faster without it

    return int(psutil.Process().memory_info().rss) > limits.max_memory
