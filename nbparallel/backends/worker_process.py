"""One worker process as the pool sees it: how it is started, what it has been sent, how it ends.

Why fresh interpreters, not fork: a kernel runs threads (ZMQ, heartbeat, history), and forking
a threaded process can deadlock the child; Python 3.12 warns about it and 3.14 moved Linux off
fork by default. Why not multiprocessing's spawn: it re-imports a script's `__main__` in every
worker, which is what makes `if __name__ == "__main__":` necessary. So a worker is
`python -c "...worker.main()"` with one socket to this process; functions reach it by value.
The socket doubles as the worker's lifeline: it exits on EOF, i.e. when this process dies. On
Linux it also asks to be killed when this process dies, for a task that holds the GIL in C code
(see `launcher`, which starts every worker).
"""

from __future__ import annotations

import collections
import dataclasses
import mmap
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from typing import Any

from .. import lifecycle, messages, options, slots, tasks, thread_limits, transport
from . import launcher

EXIT_WAIT_SECONDS = 2.0  # a worker told to stop that has not exited by then is killed
_FUNCTIONS_REMEMBERED = 64  # digests a worker was sent, remembered so as not to send them again
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The kernel's interrupt is SIGINT to its whole process group, workers included, and a worker
# still booting would die of it. So a worker is started with SIGINT blocked (by the launcher: the
# mask survives exec), and its first line ignores SIGINT, then unblocks it: one that arrived
# meanwhile is dropped.
_BOOT = (
    "import _signal; _signal.signal(_signal.SIGINT, _signal.SIG_IGN); "
    "hasattr(_signal, 'pthread_sigmask') and "
    "_signal.pthread_sigmask(_signal.SIG_UNBLOCK, [_signal.SIGINT]); "
    f"import sys; sys.path.insert(0, {_PACKAGE_ROOT!r}); from nbparallel.worker import main; main()"
)

Task = tuple[tasks.Call, tasks.Chunk, list[Any]]  # a chunk, and its items serialized


@dataclasses.dataclass(eq=False)
class WorkerProcess:
    process: subprocess.Popen[bytes]
    conn: Connection
    create_time: float
    slot: memoryview  # see slots: which task and item the worker is running
    started: float = dataclasses.field(default_factory=time.monotonic)
    ready: bool = False  # it said so (messages.Ready)
    ready_at: float = 0.0  # when it said so (time.time())
    # Tasks sent, in the order the worker runs them: the first one runs.
    inflight: collections.deque[Task] = dataclasses.field(default_factory=collections.deque)
    # A hint, not a mirror: the worker says FunctionMissing if it dropped one since.
    functions_sent: collections.OrderedDict[bytes, None] = dataclasses.field(
        default_factory=collections.OrderedDict
    )
    tasks_done: int = 0  # answers received, for status
    fast_call_id: int = 0  # the call whose last task on this worker was short, if any
    # For timeouts: the (task, item) last seen running, and since when.
    watched: tuple[int, int] = (0, slots.NOT_STARTED)
    watched_since: float = 0.0
    timed_out: bool = False
    retiring: bool = False  # takes no new tasks; stops once idle
    said_retiring: bool = False  # it reached its limits and exits by itself, running nothing more
    stopping: bool = False  # told to stop (StopWorker)

    @property
    def pid(self) -> int:
        return self.process.pid

    def serves(self, call: tasks.Call) -> bool:
        """True if a task of `call` runs or waits on this worker."""
        return any(task[0] is call for task in self.inflight)

    def running(self) -> Task | None:
        return self.inflight[0] if self.inflight else None

    def remember_function(self, digest: bytes) -> bool:
        """Note that the worker was sent this function; False if it had been already."""
        known = digest in self.functions_sent
        self.functions_sent[digest] = None
        self.functions_sent.move_to_end(digest)
        while len(self.functions_sent) > _FUNCTIONS_REMEMBERED:
            self.functions_sent.popitem(last=False)
        return known

    def forget_function(self, digest: bytes) -> None:
        self.functions_sent.pop(digest, None)

    def send(self, message: object) -> None:
        try:
            transport.send_message(self.conn, message)
        except OSError:
            pass  # it died; the dispatcher sees EOF on its socket and reports it

    def send_task(
        self, call: tasks.Call, chunk: tasks.Chunk, frames: list[Any], function: list[Any]
    ) -> None:
        """Queue a task on this worker, with the call's `function` frames unless it was sent
        them already."""
        self.inflight.append((call, chunk, frames))
        digest = call.payload.digest
        sent = [] if self.remember_function(digest) else function
        self.send(
            messages.RunTask(
                chunk.task_id,
                call.call_id,
                digest,
                call.kind,
                call.keep_going,
                [*sent, *frames],
                len(sent),
                call.insights,
                time.time() if call.insights else 0.0,
                call.announce_starts,
            )
        )


def launch(limits: messages.Limits, count: int, pool_size: int) -> list[WorkerProcess]:
    """Start `count` worker interpreters (on the launcher thread), each with a socket pair to
    this process. All are started before anything else is done for any of them, so that they
    boot while this process records them (and imports what that takes, the first time). BLAS
    and OpenMP in each start at most cpus // pool_size threads (see thread_limits)."""
    threads = thread_limits.worker_environment(pool_size, options.usable_cpus(), os.environ)
    started = [_start_interpreter(threads) for _ in range(count)]
    workers = []
    for process, conn, slot in started:
        identified = lifecycle.identify(process.pid)  # None: it died already; its EOF says why
        conn.send_bytes(pickle.dumps({"sys_path": list(sys.path), "limits": limits}))
        workers.append(WorkerProcess(process, conn, identified[1] if identified else 0.0, slot))
    return workers


def _start_interpreter(
    threads: dict[str, str],
) -> tuple[subprocess.Popen[bytes], Connection, memoryview]:
    ours, theirs = socket.socketpair()
    with ours, theirs, tempfile.TemporaryFile() as slot_file:
        slot_file.truncate(slots.BYTES)
        slot = memoryview(mmap.mmap(slot_file.fileno(), slots.BYTES)).cast("q")
        parent = os.getpid() if launcher.PARENT_DEATH_SIGNAL else 0  # 0: the worker does not ask
        process = launcher.run(
            lambda: subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _BOOT,
                    str(theirs.fileno()),
                    str(slot_file.fileno()),
                    str(parent),
                ],
                pass_fds=[theirs.fileno(), slot_file.fileno()],
                stdin=subprocess.DEVNULL,
                env={**os.environ, **threads, "NBPARALLEL_WORKER": "1"},
            )
        )
        return process, Connection(ours.detach()), slot


def reap(workers: list[WorkerProcess]) -> list[int]:
    """Wait for the workers to exit, together within EXIT_WAIT_SECONDS, killing any still
    running then; their exit codes."""
    deadline = time.monotonic() + EXIT_WAIT_SECONDS
    codes = []
    for worker in workers:
        try:
            codes.append(worker.process.wait(max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            worker.process.kill()
            codes.append(worker.process.wait())
    return codes


def memory_rss(pid: int) -> int:
    import psutil  # not needed to start a pool (see lifecycle)

    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0
