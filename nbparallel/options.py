"""The options of a call, validated once, and how session defaults and per-call values combine."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from . import errors


def usable_cpus() -> int:
    """CPUs this process may run on (respects affinity masks and container limits where visible)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class Options:
    """Everything a call can be told. `None` means "decide for me"."""

    workers: int | None = None
    """How many worker processes run the call's tasks at once (default: usable CPUs)."""
    chunksize: int | None = None
    """Items sent to a worker together (default: chosen from the number of items)."""
    progress: bool = True
    """Show a progress bar (a widget in a notebook, text on stderr in a terminal)."""

    def __post_init__(self) -> None:
        for name in ("workers", "chunksize"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise errors.bad_option(name, value, "a positive whole number, or None for automatic")
        if not isinstance(self.progress, bool):
            raise errors.bad_option("progress", self.progress, "True or False")

    @property
    def worker_count(self) -> int:
        return self.workers or usable_cpus()

    def merged(self, **overrides: Any) -> Options:
        """These options with `overrides` applied; None values leave the option as it is."""
        known = [f.name for f in dataclasses.fields(self)]
        for name in overrides:
            if name not in known:
                raise errors.unknown_option(name, known)
        changes = {name: value for name, value in overrides.items() if value is not None}
        return dataclasses.replace(self, **changes)
