"""The dask backend: the same calls on a dask.distributed cluster.

`parallel.configure(backend="dask")` starts a local cluster once per session (`dask_cluster`) and reuses it;
`address="tcp://scheduler:8786"` or `address=<distributed.Client>` uses an existing cluster
(nbparallel must be installed on its workers). Functions and items are serialized exactly as for
the process pool, and a worker runs a task with the very code a pool worker uses
(`execution.run_task`): same caching of functions, same errors, same every-worker setup. A call's
function is scattered to the cluster once, not sent with every task; so is a large chunk's data,
which then reaches a worker without passing through the scheduler inside the task graph. With
insights on, the scheduler's task stream adds what dask itself did (`task_stream`).
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
import uuid
from typing import Any

from .. import errors, execution, messages, serialize, slots, tasks
from . import WorkerStatus
from .dask_cluster import LocalCluster
from .task_stream import TaskStream

try:
    import distributed
except ImportError as missing:
    raise errors.dask_missing() from missing

# In a dask worker process: the functions it holds and what every-worker cells defined there.
_functions = execution.FunctionCache()
_setup = execution.SetupNamespace()
_functions_lock = threading.Lock()


PROGRESS_SECONDS = 0.1
# A chunk's items this large (serialized) are scattered, as dask advises for large data, rather
# than put in the task graph (which dask warns about from 10 MiB, and which the scheduler holds).
SCATTER_BYTES = 1 << 20


class _ReportingSlot(list):
    """A task's slot on a dask worker: how far the task is goes to the client as an event on
    `topic` (the client cannot read a worker's memory), at most every PROGRESS_SECONDS; a change
    within that time is sent when it is up, so the last word of a long item is never lost."""

    def __init__(self, task_id: int, topic: str, key: str) -> None:
        super().__init__(slots.local_slot(task_id))
        self._worker = distributed.get_worker()  # here, in the task's thread, where it is known
        self._topic, self._key = topic, key
        self._next = 0.0
        self._timer: threading.Timer | None = None

    def __setitem__(self, index: Any, value: Any) -> None:
        super().__setitem__(index, value)
        if index not in (slots.ITEM, slots.PART_ITEM) or self._timer is not None:
            return
        wait = self._next - time.monotonic()
        if wait <= 0:
            self._send()
        else:
            self._timer = threading.Timer(wait, self._send)
            self._timer.daemon = True
            self._timer.start()

    def _send(self) -> None:
        self._timer = None
        self._next = time.monotonic() + PROGRESS_SECONDS
        self._worker.log_event(
            self._topic, [self._key, slots.running_items(self, self[slots.TASK])]
        )


def run_on_dask_worker(
    function: list[bytes], task: messages.RunTask, topic: str, items: list[bytes] | None = None
) -> tuple[object, str, str]:
    """Run one task in a dask worker: its message, and what it printed (stdout, stderr).

    How far it is goes to the client as events on `topic`. `items`: the task's serialized items,
    when they were scattered rather than sent in the message."""
    if items is not None:
        task.frames = items
    with _functions_lock:
        if task.digest not in _functions:
            _functions.add(task.digest, function)
    out, err = io.StringIO(), io.StringIO()
    slot = _ReportingSlot(task.task_id, topic, _key(task.call_id, task.task_id))
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        message = execution.run_task(task, _functions, _setup, slot)
    if isinstance(message, messages.TaskDone) and message.frames is not None:
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
    """Calls as dask futures: results come from their completion, progress also from worker events."""

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
        self._topic = f"nbparallel-progress-{uuid.uuid4().hex}"
        self._running: dict[str, float] = {}  # key of a running task -> items' worth done in it
        # Its own lock: events arrive on the client's event loop, which `_lock`'s holders may
        # be waiting on (scatter, submit).
        self._running_lock = threading.Lock()
        self._task_stream = TaskStream()

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
                    # Not dask's LocalCluster: it spawns workers with multiprocessing, which re-runs
                    # a script's __main__ in each; nor its SubprocessCluster, whose processes the
                    # kernel's interrupt reaches and which nothing stops if the kernel dies.
                    # Its workers have joined when it returns; only its credentials open it.
                    self._cluster = LocalCluster(self._workers)
                    self._client = distributed.Client(
                        self._cluster.address, security=self._cluster.security
                    )
                self._client.subscribe_topic(self._topic, self._on_progress)
            return self._client

    def _on_progress(self, event: tuple[float, list[Any]]) -> None:
        key, done = event[1]
        with self._running_lock:
            if key in self._running:  # not a late event of a task that ended
                self._running[key] = done

    def running_items(self, call: tasks.Call) -> float:
        """As the workers last said (see _ReportingSlot)."""
        with self._lock:
            keys = [future.key for future in self._futures.get(call.call_id, [])]
        with self._running_lock:
            return sum(self._running.get(key, 0.0) for key in keys)

    def submit(self, call: tasks.Call, chunk: tasks.Chunk) -> None:
        frames = _as_bytes(serialize.dump_chunk(chunk.items, chunk.position))
        client = self._connect()
        if call.insights:
            self._task_stream.follow(client)
        scattered = None
        if sum(map(len, frames)) >= SCATTER_BYTES:
            (scattered,) = client.scatter([frames], hash=False)
            frames = []
        digest = call.payload.digest
        with self._lock:
            function = self._scattered.get(digest)
            if function is None:
                function = self._scattered[digest] = client.scatter(
                    _as_bytes(call.payload.frames), broadcast=True
                )
        message = messages.RunTask(
            chunk.task_id,
            call.call_id,
            digest,
            call.kind,
            call.keep_going,
            frames,  # as bytes: dask serializes the message itself
            insights=call.insights,
            sent=time.time() if call.insights else 0.0,
        )
        future = client.submit(
            run_on_dask_worker,
            function,
            message,
            self._topic,
            scattered,
            pure=False,
            key=_key(call.call_id, chunk.task_id),
        )
        with self._lock:
            self._futures.setdefault(call.call_id, []).append(future)
        with self._running_lock:
            self._running[future.key] = 0.0
        future.add_done_callback(lambda done: self._finished(call, chunk, done))

    def _finished(self, call: tasks.Call, chunk: tasks.Chunk, future: Any) -> None:
        with self._running_lock:
            self._running.pop(future.key, None)
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
            call.deliver(messages.TaskLost(chunk.task_id, 0, None, None, error=lost))
            return
        timing = getattr(message, "timing", None)
        if timing is not None:
            timing.received = time.time()
            with self._lock:
                wanted = {f.key for pending in self._futures.values() for f in pending}
            self._task_stream.fill(self._client, future.key, timing, wanted)
        for stream, text in (("stdout", out), ("stderr", err)):
            if text:
                call.write_output(stream, text)
        call.deliver(message)

    def cancel(self, call: tasks.Call, stop_running: bool) -> None:
        """Cancel the call's futures on the cluster at once; the cluster stays usable."""
        with self._lock:
            futures = self._futures.pop(call.call_id, [])
        with self._running_lock:
            for future in futures:
                self._running.pop(future.key, None)
        if futures and self._client is not None:
            self._client.cancel(futures)

    def run_on_every_worker(self, call: tasks.Call, items: list[Any]) -> list[tasks.Chunk]:
        """A WorkerPlugin: dask runs it on every worker now, and on each worker that joins."""
        client = self._connect()
        self._setups += 1
        plugin = EveryWorkerCell(_as_bytes(call.payload.frames), serialize.dumps(items))
        replies = client.register_plugin(plugin, name=f"nbparallel-setup-{self._setups}")
        chunks = [tasks.Chunk(tasks.next_id(), 0, 1, items) for _ in replies]
        for chunk, reply in zip(chunks, replies.values(), strict=True):
            if reply.get("status") == "OK":
                call.deliver(messages.TaskDone(chunk.task_id, [None], 0.0))
            else:
                error = reply.get("exception") or RuntimeError(str(reply))
                failure = messages.Failure(
                    error,
                    f"{type(error).__name__}: {error}",
                    str(reply.get("text") or reply.get("traceback") or ""),
                    "",
                    0,
                )
                call.deliver(messages.TaskFailed(chunk.task_id, 0, [], "raised", failure))
        return chunks

    def restart(self) -> None:
        if self._client is not None:
            self._client.restart()

    def resize(self, workers: int) -> None:
        self._workers = workers
        if self._cluster is not None:
            self._cluster.scale(workers)

    def set_limits(self, max_tasks_per_worker: int | None, max_worker_memory: int | None) -> None:
        """Dask manages its workers' memory itself (see its memory_limit)."""

    def status(self, memory: bool = True) -> list[WorkerStatus]:
        # The scheduler sends each worker's memory with the rest: `memory` saves nothing here.
        if self._client is None:
            return []
        workers = self._client.scheduler_info(n_workers=-1).get("workers", {})
        return [
            WorkerStatus(
                int(info.get("pid", 0)),
                "busy" if info.get("metrics", {}).get("executing", 0) else "idle",
                0,  # dask does not count tasks per worker
                int(info.get("metrics", {}).get("memory", 0)),
                name=address,
            )
            for address, info in workers.items()
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


def _key(call_id: int, task_id: int) -> str:
    """The dask key of a task."""
    return f"nbparallel-{call_id}-{task_id}"
