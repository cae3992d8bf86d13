"""The options of a call, validated once, and how session defaults and per-call values combine."""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

from . import errors


def usable_cpus() -> int:
    """CPUs this process may run on (respects affinity masks and container limits where visible)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


WORKERS_VARIABLE = "NBPARALLEL_WORKERS"


def default_workers() -> int:
    """The worker count when none is given: NBPARALLEL_WORKERS if it is set, else usable CPUs.

    An empty value counts as unset, as Python's own PYTHON* variables do.

    Raises:
        OptionError: NBPARALLEL_WORKERS is set to something other than a positive whole number.
    """
    value = os.environ.get(WORKERS_VARIABLE, "")
    text = value.strip()
    if not text:
        return usable_cpus()
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise errors.bad_workers_variable(WORKERS_VARIABLE, value)
    return int(text)


def gil_enabled() -> bool:
    """False only on a free-threaded CPython running with the GIL off (3.13t, 3.14t)."""
    is_enabled = getattr(sys, "_is_gil_enabled", None)
    return True if is_enabled is None else bool(is_enabled())


def default_backend() -> str:
    """Threads where the GIL is off (they use every core, and nothing needs serializing),
    processes otherwise. Decided when the session's options are made; `backend=` overrides it."""
    return "processes" if gil_enabled() else "threads"


POOL_OPTIONS = ("max_tasks_per_worker", "max_worker_memory", "address", "joblib")
BACKENDS = ("processes", "threads", "dask")


def _is_count(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


@dataclasses.dataclass(frozen=True)
class Options:
    """Everything a call can be told. `None` means "decide for me"."""

    workers: int | None = None
    """How many worker processes run the call's tasks at once (default: $NBPARALLEL_WORKERS if
    set, else usable CPUs)."""
    chunksize: int | None = None
    """Items sent to a worker together (default: chosen from the number of items)."""
    progress: bool = True
    """Show a progress bar (a widget in a notebook, text on stderr in a terminal)."""
    show_workers: bool = False
    """In a notebook, show a row of the workers under the bar: busy or idle, tasks, memory."""
    insights: bool = False
    """Record where each worker's time goes (`parallel.insights()`), and show a timeline of the
    chunks under the bar (a table after a text bar)."""
    retries: int = 0
    """Run the items of a worker that died (or timed out) again, up to this many times."""
    timeout: float | None = None
    """Seconds one item may run; past it, its worker is stopped and TaskTimeoutError reported."""
    errors: str = "raise"
    """On a failing item: "raise" (stop the call), "return" (the exception takes the result's
    place), or "skip" (leave the item out)."""
    max_tasks_per_worker: int | None = None
    """Replace a worker after it ran this many tasks (chunks): for libraries that leak."""
    max_worker_memory: int | None = None
    """Replace a worker that grew past this many bytes (checked between tasks)."""
    backend: str = dataclasses.field(default_factory=default_backend)
    """Where tasks run: "processes" (this machine's cores), "threads" (I/O-bound work, and every
    core where the GIL is off: the default there), "dask"."""
    address: Any = None
    """For the dask backend: a scheduler address ("tcp://host:8786") or a distributed.Client;
    None starts a local cluster once and reuses it (it follows the kernel like the pool)."""
    joblib: bool = False
    """Make nbparallel joblib's default backend, so `n_jobs=-1` in scikit-learn runs on this pool
    (needs joblib); False gives the default back to joblib's loky."""

    def __post_init__(self) -> None:
        for name in ("workers", "chunksize", "max_tasks_per_worker", "max_worker_memory"):
            value = getattr(self, name)
            if value is not None and not _is_count(value, minimum=1):
                raise errors.bad_option(name, value, "a positive whole number, or None")
        for name in ("progress", "show_workers", "insights", "joblib"):
            if not isinstance(getattr(self, name), bool):
                raise errors.bad_option(name, getattr(self, name), "True or False")
        if not _is_count(self.retries, minimum=0):
            raise errors.bad_option("retries", self.retries, "a whole number, 0 or more")
        if self.timeout is not None and (
            isinstance(self.timeout, bool)
            or not isinstance(self.timeout, (int, float))
            or not self.timeout > 0
        ):
            raise errors.bad_option("timeout", self.timeout, "a number of seconds above 0, or None")
        if self.errors not in ("raise", "return", "skip"):
            raise errors.bad_option("errors", self.errors, '"raise", "return" or "skip"')
        if self.backend not in BACKENDS:
            raise errors.bad_option("backend", self.backend, " or ".join(map(repr, BACKENDS)))
        if self.timeout is not None and self.backend != "processes":
            raise errors.timeout_needs_processes(self.backend)

    @property
    def worker_count(self) -> int:
        return self.workers if self.workers is not None else default_workers()

    def merged(self, session: bool = False, **overrides: Any) -> Options:
        """These options with `overrides` applied; None values leave the option as it is.

        Options of the pool itself are set for the session only (`session=True`).
        """
        known = [f.name for f in dataclasses.fields(self)]
        for name in overrides:
            if name not in known:
                raise errors.unknown_option(name, known)
            if name in POOL_OPTIONS and not session:
                raise errors.session_option(name)
        changes = {name: value for name, value in overrides.items() if value is not None}
        return dataclasses.replace(self, **changes)
