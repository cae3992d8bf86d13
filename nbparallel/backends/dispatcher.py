"""The process pool's one waiting thread: it reads every worker's answers, sees a worker die the
moment its socket closes, hands queued chunks to workers as they free up, and stops items that
run past their call's timeout or workers that never said they were ready.

Each turn of its loop is one of a few named steps, each under the pool's lock and short: no
process is started here (replacements start on the launcher thread) and no user object is
unpickled (answers go on to the caller as bytes).
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING

from .. import errors, messages, slots, transport
from . import scheduling, worker_process
from .worker_process import WorkerProcess

if TYPE_CHECKING:
    from .process import ProcessPool

WATCH_SECONDS = 0.05  # how often running items are checked against a call's timeout
READY_SECONDS = 60.0  # a worker that has not said it is ready by then is stopped


class Dispatcher(threading.Thread):
    def __init__(self, pool: ProcessPool) -> None:
        super().__init__(name="nbparallel-dispatcher", daemon=True)
        self._pool = pool

    def run(self) -> None:
        while not self._pool.closed:
            try:
                self._turn()
            except Exception:  # never die silently: every call of this pool would wait forever
                if not self._pool.closed:
                    traceback.print_exc(file=sys.__stderr__)

    def _turn(self) -> None:
        pool = self._pool
        with pool.lock:
            if pool.closed:
                return
            pool.assign_pending()
            watching = self._stop_overdue()
            connections = [pool.wake_reader, *pool.workers]
        for ready in wait(connections, WATCH_SECONDS if watching else None):
            if ready is pool.wake_reader:
                pool.woken()
            else:
                self._receive(ready)  # type: ignore[arg-type]  # one of the workers' Connections

    def _stop_overdue(self) -> bool:
        """Kill workers whose item ran past its call's timeout, or that never said they were
        ready; True while something needs watching."""
        now = time.monotonic()
        watching = False
        for worker in self._pool.workers.values():
            if not worker.ready:
                watching = True
                if now - worker.started > READY_SECONDS and not worker.timed_out:
                    worker.timed_out = True
                    worker.process.kill()
                continue
            running = worker.running()
            timeout = running[0].timeout if running is not None else None
            if running is None or timeout is None or worker.timed_out:
                continue
            watching = True
            seen = (worker.slot[slots.TASK], worker.slot[slots.ITEM])
            if seen != worker.watched:
                worker.watched, worker.watched_since = seen, now
            elif now - worker.watched_since > timeout and seen[0] == running[1].task_id:
                worker.timed_out = True
                worker.process.kill()  # the only way to stop an item, whatever it is doing
        return watching

    def _receive(self, conn: Connection) -> None:
        try:
            message = transport.receive_message(conn, map_shared=False)  # results may be kept long
        except (EOFError, OSError):
            self._on_worker_exit(conn)
            return
        timing = getattr(message, "timing", None)
        if timing is not None:
            timing.received = time.time()
        with self._pool.lock:
            worker = self._pool.workers.get(conn)
            if worker is None:
                return
            if isinstance(message, messages.Ready):
                worker.ready, worker.ready_at = True, time.time()
                return
            if isinstance(message, messages.Retiring):
                worker.retiring = worker.said_retiring = True
                self._pool.start_replacements()
                return
            running = worker.running()
            if running is None:
                return
            call = running[0]
            if isinstance(message, messages.Output):
                deliver = None
            elif isinstance(message, messages.TaskStarted):
                deliver = call.deliver  # the task runs on: it stays first in the worker's queue
            elif isinstance(message, (messages.ItemsUnreadable, messages.FunctionMissing)):
                self._send_again(worker, message)
                return
            else:
                worker.inflight.popleft()
                worker.tasks_done += 1
                short = scheduling.keeps_queue_behind(
                    getattr(message, "seconds", scheduling.PREFETCH_BELOW_SECONDS),
                    transport.lends(running[2]),
                )
                worker.fast_call_id = call.call_id if short else 0
                self._pool.stop_idle_retiring()
                deliver = call.deliver
        if call.closed:
            return
        if isinstance(message, messages.Output):
            call.write_output(message.stream, message.text)
        elif deliver is not None:
            deliver(message)

    def _on_worker_exit(self, conn: Connection) -> None:
        """A worker's socket closed: it exited or was killed. Tell its running task's caller
        why, queue its other tasks again, and start a replacement."""
        pool = self._pool
        with pool.lock:
            # Under the lock: shutdown() and woken() close workers' connections too, and two
            # threads closing one Connection at once would close its fd number twice.
            conn.close()
            worker = pool.workers.get(conn)
            if worker is None:
                return  # shut down, restarted or retired on purpose
            pool.take_out(worker, died=True)
            running = worker.running()
        lost = lost_task(worker, worker_process.reap([worker])[0])
        # The replacement first, so that a retry of the lost task, or the caller's worker row,
        # finds it.
        pool.refill()
        if lost is not None and running is not None and not running[0].closed:
            running[0].deliver(lost)

    def _send_again(
        self, worker: WorkerProcess, message: messages.ItemsUnreadable | messages.FunctionMissing
    ) -> None:
        """The worker ran nothing of its task: queue it again, first, with its items shared
        (they could not be read from here) or its function sent along (it was dropped)."""
        call, chunk, frames = worker.inflight.popleft()
        if isinstance(message, messages.ItemsUnreadable):
            self._pool.stop_lending()
        else:
            worker.forget_function(call.payload.digest)
        if not call.closed:
            self._pool.queue_first((call, chunk, frames))


def lost_task(worker: WorkerProcess, returncode: int | None) -> messages.TaskLost | None:
    """What the caller hears about the task a dead worker was running, if it was running one."""
    running = worker.running()
    if running is None or worker.said_retiring:
        return None
    chunk = running[1]
    if not worker.ready:
        error = errors.worker_never_ready(worker.pid, READY_SECONDS) if worker.timed_out else None
        return messages.TaskLost(chunk.task_id, worker.pid, returncode, None, error=error)
    offset = worker.slot[slots.ITEM] if worker.slot[slots.TASK] == chunk.task_id else None
    watched = worker.timed_out and worker.watched[0] == chunk.task_id  # for insights
    return messages.TaskLost(
        chunk.task_id,
        worker.pid,
        returncode,
        offset if offset != slots.NOT_STARTED else None,
        worker.timed_out,
        item_seconds=time.monotonic() - worker.watched_since if watched else None,
    )
