"""Timing a task's items in a worker, with insights on, at a cost lost in the items themselves.

A clock read costs about as much as running a tiny item (`x + 1`), so items are timed one by one
only while they are slow enough for the read not to matter (EXACT_ABOVE seconds each); faster
ones are timed in groups that last about GROUP_SECONDS, each item given its group's average.
Each group's time decides the next group's size: a slow item among fast ones is timed with its
group (which then shows as slow), and the items after it one by one. With insights off, none of this runs: the plain loop of
`execution.run_chunk` reads no clock.
"""

from __future__ import annotations

import array
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import messages, slots

EXACT_ABOVE = 20e-6  # an item this long hides the ~0.2 us of timing it alone (1%)
# Faster items are timed together, about this long a group: a group costs more than its two
# clock reads (a loop of tiny items measured 4% slower in 1 ms groups, 2% in 10 ms, 1% in one).
GROUP_SECONDS = 0.01
GROUP_MOST = 1 << 18
SLOWEST_KEPT = 5
# A group this many times longer than planned held a slow item, which one unknown: it is kept
# among the slowest as one entry (its first item, its total, its count), not as items of its
# average, where a 0.5 s item among 1,000 tiny ones showed as 1,000 items of 0.5 ms.
SURPRISE = 5


class ItemClock:
    """The item times of one chunk: groups of items with their time per item, the total, and
    the slowest items, kept as they run (so the kernel never walks every item's time)."""

    def __init__(self) -> None:
        self.group_items: array.array[int] = array.array("l")
        self.group_seconds: array.array[float] = array.array("d")  # per item of the group
        self.working = 0.0
        # (offset in the chunk, seconds, items: 1, or a group's count), slowest first
        self.slowest: list[tuple[int, float, int]] = []

    def add(self, first: int, count: int, seconds: float) -> None:
        each = seconds / count
        self.group_items.append(count)
        self.group_seconds.append(each)
        self.working += seconds
        if count > 1 and seconds > SURPRISE * GROUP_SECONDS:
            entries = [(first, seconds, count)]
        elif len(self.slowest) < SLOWEST_KEPT or each > self.slowest[-1][1]:
            entries = [(first + i, each, 1) for i in range(min(count, SLOWEST_KEPT))]
        else:
            return
        self.slowest.extend(entries)
        self.slowest.sort(key=lambda kept: -kept[1])
        del self.slowest[SLOWEST_KEPT:]


def run_timed(
    call: Callable[[Any], Any],
    items: Sequence[Any],
    call_id: int,
    slot: Any,
    results: list[Any],
    clock: ItemClock,
) -> None:
    """`execution.run_chunk`'s loop from item len(results) on, timing the items into `clock`.

    Returns when every item ran or the call was cancelled; an item's exception goes up as in
    the plain loop, its time (and its group's) recorded first.
    """
    read, append, count = time.perf_counter, results.append, len(items)
    cancelled, running = slots.CANCELLED, slots.ITEM
    size = 1  # the first item alone: it says how long items take
    while len(results) < count:
        first = len(results)
        stopped, raised = False, True
        began = read()
        try:
            for offset in range(first, min(count, first + size)):
                if slot[cancelled] == call_id:
                    stopped = True
                    break
                slot[running] = offset
                append(call(items[offset]))
            raised = False
        finally:
            took = read() - began
            ran = len(results) - first + raised  # the item that raised took time too
            if ran:
                clock.add(first, ran, took)
        if stopped:
            return
        each = took / max(ran, 1)
        size = 1 if each >= EXACT_ABOVE else min(GROUP_MOST, int(GROUP_SECONDS / max(each, 1e-9)))


class TaskClock:
    """With insights on: when a task started, how long its loading, items and results took."""

    def __init__(self, task: messages.RunTask) -> None:
        self.sent = task.sent
        self.started = time.time()
        self.start = time.perf_counter()
        self.loaded: float | None = None  # perf_counter once the function and items are loaded
        self.items = ItemClock()

    def timing(self, results_from: float | None = None) -> messages.Timing:
        """The task's Timing, now that its answer is made; `results_from`: when its results
        began to be serialized (perf_counter), None if it failed before."""
        now = time.perf_counter()
        loaded = self.loaded if self.loaded is not None else now
        return item_timing(
            os.getpid(),
            self.sent,
            self.started,
            self.started + (now - self.start),
            loaded - self.start,
            now - results_from if results_from is not None else 0.0,
            self.items,
        )


def item_timing(
    worker: int,
    sent: float,
    started: float,
    finished: float,
    load_seconds: float,
    dump_seconds: float,
    clock: ItemClock,
) -> messages.Timing:
    """A Timing with the item times of `clock`."""
    return messages.Timing(
        worker,
        sent,
        started,
        finished,
        load_seconds,
        dump_seconds,
        clock.working,
        clock.group_items,
        clock.group_seconds,
        clock.slowest,
    )
