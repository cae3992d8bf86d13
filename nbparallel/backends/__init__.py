"""Backends run a call's chunks somewhere; they all follow `Backend`, and are created by name."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Protocol

from .. import tasks
from ..options import BACKENDS, Options

if TYPE_CHECKING:
    from .process import ProcessPool

__all__ = ["BACKENDS", "Backend", "WorkerStatus", "create", "start_process_pool"]


@dataclasses.dataclass(frozen=True)
class WorkerStatus:
    pid: int  # a process id (for threads: the thread's native id)
    state: str  # "idle", "busy", or "stopping" (the pool shrank; it exits once idle)
    tasks_done: int
    memory_rss: int  # bytes (for threads: the whole process)
    started: float = 0.0  # when it started (time.time()); 0.0 where unknown (dask)
    ready: float = 0.0  # when it could take tasks (time.time()); 0.0 where unknown
    name: str = ""  # dask: the worker's address

    @property
    def busy(self) -> bool:
        return self.state == "busy"


class Backend(Protocol):
    """What a call needs from the place its tasks run."""

    copies_data: bool
    """True if tasks run in other processes: functions and items are serialized for them."""

    @property
    def size(self) -> int: ...

    def submit(self, call: tasks.Call, chunk: tasks.Chunk) -> None:
        """Queue a chunk; its outcome arrives through `call.deliver`."""

    def cancel(self, call: tasks.Call, stop_running: bool) -> None:
        """Forget the call's queued chunks; with `stop_running`, stop its running tasks at once."""

    def running_items(self, call: tasks.Call) -> float:
        """How many items' worth of the call's running tasks is done (for the progress bar)."""

    def run_on_every_worker(self, call: tasks.Call, items: list[Any]) -> list[tasks.Chunk]:
        """Run a setup task on every worker now and on each one started later; the chunks sent
        now (their events arrive through `call.deliver`)."""

    def restart(self) -> None:
        """Replace every worker with a fresh one; setup tasks are replayed."""

    def resize(self, workers: int) -> None: ...

    def set_limits(self, max_tasks_per_worker: int | None, max_worker_memory: int | None) -> None:
        """Recycle a worker after this many tasks, or when it grows past this many bytes."""

    def status(self) -> list[WorkerStatus]: ...

    def shutdown(self) -> None: ...


def create(options: Options) -> Backend:
    """A new backend of the kind `options.backend` names; only that backend's module is imported."""
    if options.backend == "processes":
        return _process_pool(options)
    if options.backend == "threads":
        from .thread import ThreadPool

        return ThreadPool(options.worker_count)
    from .dask import DaskBackend  # Options allows no other name

    return DaskBackend(options.worker_count, options.address)


def start_process_pool(options: Options) -> Backend:
    """A process pool whose workers are launched now, not on its first task; returns once they
    are launched, before they are ready."""
    pool = _process_pool(options)
    pool.start()
    return pool


def _process_pool(options: Options) -> ProcessPool:
    from .process import ProcessPool

    return ProcessPool(
        options.worker_count, options.max_tasks_per_worker, options.max_worker_memory
    )
