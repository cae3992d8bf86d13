"""Backends run a call's chunks somewhere; they all follow `Backend`, and are created by name."""

from __future__ import annotations

from typing import Any, Protocol

from .. import errors, tasks
from ..options import Options

BACKENDS = ("processes",)


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

    def run_on_every_worker(self, call: tasks.Call, items: list[Any]) -> int:
        """Run a setup task on every worker now and on each one started later; how many got it."""

    def restart(self) -> None:
        """Replace every worker with a fresh one; setup tasks are replayed."""

    def resize(self, workers: int) -> None: ...

    def set_limits(self, max_tasks_per_worker: int | None, max_worker_memory: int | None) -> None:
        """Recycle a worker after this many tasks, or when it grows past this many bytes."""

    def status(self) -> list[Any]: ...

    def worker_pids(self) -> list[int]: ...

    def shutdown(self) -> None: ...


def create(name: str, options: Options) -> Backend:
    """A new backend; heavy imports happen only for the backend asked for."""
    if name == "processes":
        from .process import ProcessPool

        return ProcessPool(options.worker_count, options.max_tasks_per_worker, options.max_worker_memory)
    raise errors.bad_option("backend", name, f"one of {', '.join(map(repr, BACKENDS))}")
