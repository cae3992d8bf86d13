"""Which worker gets the next chunk, and which workers make way when the pool shrinks: a pure
policy over the pool's worker records (no processes, no lock: the pool calls it under its own).

A worker whose last task of a call took less than PREFETCH_BELOW_SECONDS gets the next task of
that call queued behind the running one, so it never idles for a round trip. Slower workers get
one task at a time: a task queued behind a long one would wait while another worker sits idle.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, TypeVar

PREFETCH_BELOW_SECONDS = 0.01


class Worker(Protocol):
    """What the policy reads of a worker (see worker_process.WorkerProcess)."""

    @property
    def inflight(self) -> Sequence[Any]:  # (call, chunk, frames) in the order the worker runs them
        ...

    @property
    def fast_call_id(self) -> int: ...

    @property
    def retiring(self) -> bool: ...

    @property
    def stopping(self) -> bool: ...

    def serves(self, call: Any) -> bool: ...


W = TypeVar("W", bound=Worker)


def has_room(worker: Worker) -> bool:
    """Idle, or running a short task of the call it would queue the next one behind."""
    if worker.retiring:
        return False
    return not worker.inflight or (
        len(worker.inflight) == 1 and worker.inflight[0][0].call_id == worker.fast_call_id
    )


def choose_worker(workers: Iterable[W], call: Any) -> W | None:
    """The least loaded worker with room for a task of `call`, within its `max_workers`; None
    if every worker is busy (the chunk waits for one)."""
    candidates = list(workers)
    serving = sum(w.serves(call) for w in candidates)
    free = [w for w in candidates if has_room(w) and (serving < call.max_workers or w.serves(call))]
    return min(free, key=lambda w: len(w.inflight), default=None)


def keeps_queue_behind(seconds: float, lent_items: bool) -> bool:
    """After a task that took `seconds`: may the worker's next task be queued behind its running
    one? Never behind a task whose items it copies from this process (it would copy the next
    items while it runs, and hold two tasks' data)."""
    return seconds < PREFETCH_BELOW_SECONDS and not lent_items


def to_retire(workers: Iterable[W], size: int) -> list[W]:
    """Workers beyond `size` that should stop taking tasks, the least busy first."""
    active = [w for w in workers if not w.retiring]
    extra = len(active) - size
    return sorted(active, key=lambda w: len(w.inflight))[: max(extra, 0)]


def to_stop_now(workers: Iterable[W]) -> list[W]:
    """Retiring workers that are idle and not yet told to stop."""
    return [w for w in workers if w.retiring and not w.inflight and not w.stopping]
