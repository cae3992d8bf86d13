"""A worker's slot: a few integers it shares with the pool, written without any message.

The task it runs and the item within it (so a death or a timeout names the item, and the progress
bar moves within a chunk), the last call cancelled (so a running chunk stops between items), and
how far the running item says it is (`report_progress`, public as `nbparallel.progress`).
"""

from __future__ import annotations

import threading
from typing import Any

# The integers of a slot; the part done of the running item is in millionths, with the item it
# was reported for.
TASK, ITEM, CANCELLED, PART, PART_ITEM = range(5)
BYTES = 5 * 8
NOT_STARTED = -1
_PART_SCALE = 1_000_000

# The slot of the chunk this thread runs (threads backend), or of this worker process (for
# threads a task starts itself).
running = threading.local()
process_slot: Any = None


def report_progress(done: float, total: float) -> None:
    """Inside a task: the item being run is `done` out of `total` of the way (any unit).

    The call's progress bar moves by that fraction of an item instead of waiting for the item to
    end. Cheap enough to call in a tight loop (it writes two integers to shared memory; on the
    dask backend, the worker sends the latest at most 10 times a second); does nothing outside
    a task (in the notebook itself).

    Raises:
        TypeError, ValueError: `done` or `total` is not a number, or `total` is not above 0.
    """
    for name, value in (("done", done), ("total", total)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(
                f"nbparallel.progress(done, total): {name} must be a number, not {type(value).__name__}"
            )
    if not total > 0:
        raise ValueError(f"nbparallel.progress(done, total): total must be above 0, not {total!r}")
    slot = getattr(running, "slot", None) or process_slot
    if slot is None:
        return
    slot[PART] = int(min(max(done / total, 0.0), 1.0) * _PART_SCALE)
    slot[PART_ITEM] = slot[ITEM]


def report_items_done(count: int) -> None:
    """Inside a task that stands for many items (a joblib batch is one task): `count` of them are
    done, so the call's bar counts them before the task ends. Does nothing outside a task."""
    slot = getattr(running, "slot", None) or process_slot
    if slot is not None:
        slot[PART] = count * _PART_SCALE
        slot[PART_ITEM] = slot[ITEM]


def local_slot(task_id: int) -> list[int]:
    """A slot for a task run without a shared memory map: a plain list (threads: the pool reads it
    in the same process; dask: the worker reports what it holds)."""
    return [task_id, NOT_STARTED, 0, 0, NOT_STARTED]


def running_items(slot: Any, task_id: int) -> float:
    """How many items' worth of task `task_id` is done, read from its worker's slot."""
    if slot[TASK] != task_id or slot[ITEM] == NOT_STARTED:
        return 0.0
    item = slot[ITEM]
    part = slot[PART] / _PART_SCALE if slot[PART_ITEM] == item else 0.0
    return item + part
