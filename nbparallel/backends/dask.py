"""The dask backend: the same calls on a dask.distributed cluster.

`parallel.configure(backend="dask")` starts a LocalCluster once per session and reuses it;
`address="tcp://scheduler:8786"` or `address=<distributed.Client>` uses an existing cluster
(nbparallel must be installed on its workers). Functions and items are serialized exactly as for
the process pool, and a worker runs a task with the very code a pool worker uses
(`worker.run_task`): same caching of functions, same errors, same every-worker setup. A call's
function is scattered to the cluster once, not sent with every task.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
from typing import Any

from .. import errors, serialize, tasks, worker
from . import WorkerStatus

try:
    import distributed
except ImportError as missing:
    raise errors.dask_missing() from missing

_START_SECONDS = 120

# In a dask worker process: the functions it holds and what every-worker cells defined there.
_functions = worker.FunctionCache()
_setup = worker.SetupNamespace()
_functions_lock = threading.Lock()


def run_on_dask_worker(function: list[bytes], task: tasks.RunTask) -> tuple[object, str, str]:
    """Run one task in a dask worker: its message, and what it printed (stdout, stderr)."""
    with _functions_lock:
        if task.digest not in _functions:
            _functions.touch(task.digest, function)
    out, err = io.StringIO(), io.StringIO()
    slot = tasks.local_slot(task.task_id)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        message = worker.run_task(task, _functions, _setup, slot)
    if isinstance(message, tasks.TaskDone) and message.frames is not None:
        message.frames = _as_bytes(message.frames)
    return message, out.getvalue(), err.getvalue()


class EveryWorkerCell(distributed.WorkerPlugin):
    """Runs an every-worker cell on each dask worker, now and on every worker that joins later."""

    def __init__(self, function: list[bytes], values: bytes) -> None:
        self.function, self.values = function, values

    def setup(self, worker: Any) -> None:
        cell = serialize.load_function(self.function)
        _setup.run(cell, serialize.loads(self.values)[0])


class DaskBackend:
    """Calls as dask futures; progress and results come from their completion."""

    copies_data = True

    def __init__(self, workers: int, address: Any) -> None:
        self._workers = workers
        self._address = address
        self._client: Any = None
        self._cluster: Any = None
        self._lock = threading.Lock()
        self._futures: dict[int, list[Any]] = {}  # call id -> its futures not yet done
        self._scattered: dict[bytes, Any] = {}  # function digest -> its data on the cluster
        self._setups = 0

    @property
    def size(self) -> int:
        return self._workers

    def _connect(self) -> Any:
        with self._lock:
            if self._client is None:
                if isinstance(self._address, distributed.Client):
                    self._client = self._address
                elif self._address:
                    self._client = distributed.Client(self._address)
                else:
                    # Not LocalCluster: its workers are spawned with multiprocessing, which re-runs
                    # a script's __main__ in each of them (the guard nbparallel promises to make
                    # needless). These workers are `dask worker` processes of their own.
                    from distributed.deploy.subprocess import SubprocessCluster

                    self._cluster = SubprocessCluster(
                        n_workers=self._workers, threads_per_worker=1,
                        # A task whose worker dies fails at once, as on the process pool
                        # (retries= is nbparallel's, not dask's rescheduling).
                        scheduler_kwargs={"allowed_failures": 0},
                        dashboard_address=None,  # type: ignore[arg-type]  # None turns it off
                        silence_logs=logging.ERROR,
                    )
                    self._client = distributed.Client(self._cluster)
                    self._client.wait_for_workers(self._workers, timeout=_START_SECONDS)
            return self._client

    def running_items(self, call: tasks.Call) -> float:
        """Not seen from here: the bar moves as each chunk finishes (in-task progress is dropped)."""
        return 0.0

    def submit(self, call: tasks.Call, chunk: tasks.Chunk) -> None:
        chunk.data = serialize.dump_chunk(chunk.items, chunk.position)
        client = self._connect()
        with self._lock:
            function = self._scattered.get(call.digest)
            if function is None:
                function = self._scattered[call.digest] = client.scatter(_as_bytes(call.function), broadcast=False)
        message = tasks.RunTask(
            chunk.task_id, call.call_id, call.digest, call.mode, call.keep_going,
            _as_bytes(chunk.data),  # dask serializes the message itself
        )
        future = client.submit(run_on_dask_worker, function, message, pure=False,
                               key=f"nbparallel-{call.call_id}-{chunk.task_id}")
        with self._lock:
            self._futures.setdefault(call.call_id, []).append(future)
        future.add_done_callback(lambda done: self._finished(call, chunk, done))

    def _finished(self, call: tasks.Call, chunk: tasks.Chunk, future: Any) -> None:
        with self._lock:
            pending = self._futures.get(call.call_id, [])
            if future in pending:
                pending.remove(future)
        if call.closed or future.cancelled():
            return
        try:
            message, out, err = future.result()
        except Exception as error:  # the task's worker died, or the cluster lost it
            lost = errors.dask_task_lost(call.name, chunk.position, chunk.size, error)
            call.deliver(tasks.TaskLost(chunk.task_id, 0, None, None, error=lost))
            return
        for stream, text in (("stdout", out), ("stderr", err)):
            if text:
                call.write_output(stream, text)
        call.deliver(message)

    def cancel(self, call: tasks.Call, stop_running: bool) -> None:
        """Cancel the call's futures on the cluster at once; the cluster stays usable."""
        call.closed = True
        with self._lock:
            futures = self._futures.pop(call.call_id, [])
        if futures and self._client is not None:
            self._client.cancel(futures)

    def run_on_every_worker(self, call: tasks.Call, items: list[Any]) -> int:
        client = self._connect()
        self._setups += 1
        plugin = EveryWorkerCell(_as_bytes(call.function), serialize.dumps(items))
        replies = client.register_plugin(plugin, name=f"nbparallel-setup-{self._setups}")
        for reply in replies.values():
            if reply.get("status") == "OK":
                call.deliver(tasks.TaskDone(0, [None], 0.0))
            else:
                error = reply.get("exception") or RuntimeError(str(reply))
                failure = tasks.Failure(error, f"{type(error).__name__}: {error}",
                                        str(reply.get("text") or reply.get("traceback") or ""), "", 0)
                call.deliver(tasks.TaskFailed(0, 0, [], "raised", failure))
        return len(replies)

    def restart(self) -> None:
        if self._client is not None:
            self._client.restart()

    def resize(self, workers: int) -> None:
        self._workers = workers
        if self._cluster is not None:
            self._cluster.scale(workers)

    def set_limits(self, max_tasks_per_worker: int | None, max_worker_memory: int | None) -> None:
        """Dask manages its workers' memory itself (see its memory_limit)."""

    def status(self) -> list[WorkerStatus]:
        if self._client is None:
            return []
        workers = self._client.scheduler_info(n_workers=-1).get("workers", {})
        return [
            WorkerStatus(
                int(info.get("pid", 0)),
                "busy" if info.get("metrics", {}).get("executing", 0) else "idle",
                0,  # dask does not count tasks per worker
                int(info.get("metrics", {}).get("memory", 0)),
            )
            for info in workers.values()
        ]

    def shutdown(self) -> None:
        """Cancel what runs; close the cluster if nbparallel started it (never one it was given)."""
        with self._lock:
            futures = [f for pending in self._futures.values() for f in pending]
            self._futures.clear()
            client, cluster = self._client, self._cluster
            self._client = self._cluster = None
            self._scattered.clear()
        if client is None:
            return
        if futures:
            client.cancel(futures)
        if client is not self._address:
            client.close()
        if cluster is not None:
            cluster.close()


def _as_bytes(frames: list[Any]) -> list[bytes]:
    """Frames as bytes, which dask serializes itself (memoryviews it cannot)."""
    return [bytes(frame) for frame in frames]
