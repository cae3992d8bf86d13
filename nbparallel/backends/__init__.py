"""Backends run a call's chunks somewhere; they all follow `Backend`, and are created by name."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .. import tasks
    from ..options import Options

__all__ = ["Backend", "PoolStatus", "WorkerStatus", "create"]


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


class PoolStatus:
    """What `parallel.status()` returns: a list of workers, shown as a table."""

    def __init__(self, workers: list[Any]) -> None:
        self.workers = workers

    def __repr__(self) -> str:
        if not self.workers:
            return "nbparallel: no workers running (the pool starts on the first call)"
        lines = [f"nbparallel: {len(self.workers)} workers", "    pid  state     tasks  memory"]
        for w in self.workers:
            lines.append(
                f"{w.pid:>7}  {w.state:<8} {w.tasks_done:>6}  {w.memory_rss / 2**20:6.1f} MiB"
            )
        return "\n".join(lines)


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

    def status(self, memory: bool = True) -> list[WorkerStatus]:
        """The workers now; without `memory`, memory_rss is 0 (reading it costs a system call
        or more per worker: the record of a call with insights on needs no memory)."""

    def shutdown(self) -> None: ...


def create(options: Options, launch: bool = False) -> Backend:
    """A new backend of the kind `options.backend` names; only that backend's module is imported.

    With `launch`, a process pool's workers are launched now, not by its first task: they boot
    while the caller gets the call ready (returns before they are ready).
    """
    if options.backend == "processes":
        from .process import ProcessPool

        pool = ProcessPool(
            options.worker_count, options.max_tasks_per_worker, options.max_worker_memory
        )
        if launch:
            pool.start()
        return pool
    if options.backend == "threads":
        from .thread import ThreadPool

        return ThreadPool(options.worker_count)
    from .dask import DaskBackend  # Options allows no other name

    return DaskBackend(options.worker_count, options.address)
