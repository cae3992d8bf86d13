"""What `insights=True` recorded about one call: where each worker's time went, its slowest
items and what to change; as a table (`repr`), a DataFrame, or a Chrome trace.

Every time is in seconds; every moment is on the kernel's `time.time()` clock. Workers stamp
their moments with `time.time()` too: it is the clock that all processes of one machine share
(a monotonic clock is not guaranteed to be comparable between processes on every platform), so
worker and kernel moments line up with no offset to measure. Durations inside a worker (items,
loading, serializing) are measured with `perf_counter`, so a clock adjustment during a call can
shift a chunk on the timeline but never changes how long its items took.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

from . import errors

STATES = ("running", "done", "failed", "stopped")  # stopped: still out when the call ended


@dataclasses.dataclass(frozen=True, slots=True)
class ChunkSpan:
    """One chunk on the timeline (what the live timeline widget draws)."""

    worker: int  # the pid of the worker that ran it (threads backend: the thread's native id)
    first_item: int  # input position of its first item
    items: int
    sent: float  # the pool sent it to the worker
    started: float | None  # the worker took it from its queue (None: not yet, or never known)
    finished: float | None  # the worker had its results serialized
    received: float | None  # the kernel read the answer
    state: str  # "running", "done" or "failed"
    worker_name: str = ""  # dask: the worker's address, from the scheduler's task stream

    @property
    def worker_id(self) -> int | str:
        """Who ran it: the dask worker's address where known (workers of one process share a
        pid), else the pid."""
        return self.worker_name or self.worker


@dataclasses.dataclass(frozen=True, slots=True)
class ChunkCost:
    """Where one chunk's time went; `Insights.costs[i]` is of `chunks[i]`.

    Items of 20 us and more are timed one by one; faster ones in groups of about 10 ms, each item
    given its group's average (timing one alone would cost as much as running it).
    """

    send_seconds: float  # the kernel serializing its items and queueing them
    load_seconds: float  # the worker loading the function and the items
    working: float  # the items' runs of the function, together
    dump_seconds: float  # the worker serializing the results
    receive_seconds: float  # the kernel loading the results
    group_items: Sequence[int] = ()  # the items' times, in chunk order: items timed together,
    group_seconds: Sequence[float] = ()  # and the seconds each of them took
    # dask: what the scheduler's task stream says dask did for the task, (action, start, stop)
    cluster_steps: Sequence[tuple[str, float, float]] = ()

    @property
    def cluster_transfer_seconds(self) -> float:
        """dask fetching the task's inputs from other workers, or deserializing the task."""
        return _steps_seconds(self.cluster_steps, ("transfer", "deserialize"))

    @property
    def cluster_disk_seconds(self) -> float:
        """dask reading the task's inputs back from disk, or spilling its result there."""
        return _steps_seconds(self.cluster_steps, ("disk-read", "disk-write"))

    @property
    def item_seconds(self) -> list[float]:
        """Each item's time, in chunk order (empty if its worker died)."""
        return [
            each
            for count, each in zip(self.group_items, self.group_seconds, strict=True)
            for _ in range(count)
        ]


def _steps_seconds(steps: Sequence[tuple[str, float, float]], actions: tuple[str, ...]) -> float:
    return sum(stop - start for action, start, stop in steps if action in actions)


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerInsight:
    """One worker's share of the call. start-up + waiting + working + transfer = the wall time."""

    pid: int
    tasks: int  # chunks it ran
    items: int
    startup: float  # starting (only a worker that started during the call)
    waiting: float  # with nothing to do (no chunk had reached it, or the call was ending)
    working: float  # in the function, on items
    transfer: (
        float  # loading items and serializing results (dask: and what it moved, read, spilled)
    )
    wall: float  # the call's wall time
    name: str = ""  # dask: the worker's address

    @property
    def label(self) -> str:
        return self.name or str(self.pid)

    def share(self, part: str) -> float:
        """`part` ("startup", "waiting", "working" or "transfer") as a fraction of the wall time."""
        return getattr(self, part) / self.wall if self.wall > 0 else 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class SlowItem:
    position: int  # in the call's input
    seconds: float
    worker: int
    args: str  # a short repr of the item (the arguments, for starmap)
    worker_name: str = ""  # dask: the worker's address, as its row in the table shows it
    # More than 1: a group of fast items timed together (seconds is theirs together) that took
    # far longer than planned, so one of them was slow; `position` and `args` are its first's.
    items: int = 1

    @property
    def label(self) -> str:
        last = self.position + self.items - 1
        return f"item {self.position}" if self.items == 1 else f"items {self.position}-{last}"


@dataclasses.dataclass(frozen=True)
class Insights:
    """The record of one call made with `insights=True` (see `parallel.insights()`)."""

    name: str  # the function's
    backend: str
    start: float  # the call began (time.time())
    end: float  # its last answer was read
    worker_count: int  # the workers the call could use at once
    workers: tuple[WorkerInsight, ...]
    chunks: tuple[ChunkSpan, ...]  # in the order their answers arrived
    costs: tuple[ChunkCost, ...]
    slowest: tuple[SlowItem, ...]  # the 5 slowest items, slowest first
    hints: tuple[str, ...]  # what to change, most telling first; empty when nothing is plain
    # Chunks were still out when the call ended (an error, a Stop): the last known with no
    # worker yet are not in `chunks`.
    ended_early: bool = False

    @property
    def wall(self) -> float:
        return self.end - self.start

    @property
    def items(self) -> int:
        return sum(chunk.items for chunk in self.chunks)

    @property
    def efficiency(self) -> float:
        """Busy worker-time (working and transfer) / (workers x wall time): 1.0 is every worker
        busy from the call's start to its end."""
        busy = sum(w.working + w.transfer for w in self.workers)
        capacity = self.worker_count * self.wall
        return min(1.0, busy / capacity) if capacity > 0 else 0.0

    @property
    def kernel_send_seconds(self) -> float:
        """The kernel serializing items and queueing chunks (on a first call, starting the pool)."""
        return sum(cost.send_seconds for cost in self.costs)

    @property
    def kernel_receive_seconds(self) -> float:
        return sum(cost.receive_seconds for cost in self.costs)

    @property
    def summary(self) -> str:
        """One line: the efficiency, and the most telling hint."""
        line = f"efficiency {self.efficiency:.0%} ({self.worker_count} workers, {self.wall:.2f} s)"
        if self.ended_early:
            line += ", stopped before its end"
        return f"{line} · {self.hints[0]}" if self.hints else line

    def __repr__(self) -> str:
        width = max([8, *(len(w.label) for w in self.workers)])  # a dask address is longer
        lines = [
            f"nbparallel insights: {self.name}, {self.items:,} items in {len(self.chunks):,} "
            f"chunks on {self.worker_count} workers ({self.backend}), {self.wall:.3f} s, "
            f"efficiency {self.efficiency:.0%}",
            f"  {'worker':>{width}} {'tasks':>6} {'items':>8}"
            + "".join(f" {title:>14}" for title in ("start-up", "waiting", "working", "transfer")),
        ]
        for w in self.workers:
            parts = "".join(
                f" {getattr(w, part):>8.3f}s {w.share(part):>4.0%}"
                for part in ("startup", "waiting", "working", "transfer")
            )
            lines.append(f"  {w.label:>{width}} {w.tasks:>6} {w.items:>8}{parts}")
        lines.append(
            f"  kernel: {self.kernel_send_seconds:.3f} s sending items, "
            f"{self.kernel_receive_seconds:.3f} s loading results"
        )
        if self.slowest:
            lines.append("  slowest items:")
            lines.extend(
                f"    {item.label:<13} {item.seconds:>9.4f} s  "
                f"worker {item.worker_name or item.worker}  {item.args}"
                for item in self.slowest
            )
        lines.extend(f"  hint: {hint}" for hint in self.hints)
        return "\n".join(lines)

    def to_dataframe(self, per: str = "chunk") -> Any:
        """A pandas DataFrame of the record: a row per "chunk" (spans and costs), "worker" or
        "item" (its position, worker and seconds).

        Raises:
            ImportError: pandas is not installed (`pip install pandas`).
            OptionError: `per` is none of "chunk", "worker", "item".
        """
        if per not in ("chunk", "worker", "item"):
            raise errors.bad_option("per", per, '"chunk", "worker" or "item"')
        try:
            import pandas
        except ImportError:
            raise errors.pandas_missing() from None
        if per == "worker":
            rows = [_fields(w) for w in self.workers]
        elif per == "item":
            rows = [
                {"position": span.first_item + offset, "worker": span.worker, "seconds": seconds}
                for span, cost in zip(self.chunks, self.costs, strict=True)
                for offset, seconds in enumerate(cost.item_seconds)
            ]
        else:
            rows = [
                {**_fields(span), **_fields(cost, skip=("group_items", "group_seconds"))}
                for span, cost in zip(self.chunks, self.costs, strict=True)
            ]
        return pandas.DataFrame(rows)

    def to_chrome_trace(self, path: str | os.PathLike[str], items: bool = False) -> None:
        """Write the record as Chrome trace-event JSON, which Perfetto (ui.perfetto.dev) and
        chrome://tracing open: a track per worker, a slice per chunk (and with `items`, a slice
        per item inside it).

        Raises:
            TypeError: `path` is not a path (an int would be taken as a file descriptor).
        """
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(
                f"to_chrome_trace wants a file path (str or pathlib.Path), got {path!r}: "
                'e.g. record.to_chrome_trace("trace.json")'
            )
        events = chrome_trace_events(self, items)
        with open(path, "w", encoding="utf-8") as file:
            json.dump({"traceEvents": events, "displayTimeUnit": "ms"}, file)


def _fields(record: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """A dataclass's fields as they are (dataclasses.asdict deep-copies each: 4 s for a record
    of 20,000 chunks)."""
    return {
        field.name: getattr(record, field.name)
        for field in dataclasses.fields(record)
        if field.name not in skip
    }


def chrome_trace_events(record: Insights, items: bool = False) -> list[dict[str, Any]]:
    """The trace events of `record`: microseconds from the call's start, one track (pid and tid
    alike) per worker, a complete ("X") event per chunk that started."""

    def micros(moment: float) -> float:
        return round((moment - record.start) * 1e6, 3)

    # A track per worker: its pid, or for dask workers (which may share a process) a number.
    names = sorted({span.worker_name for span in record.chunks if span.worker_name})
    tracks = {name: number for number, name in enumerate(names, 1)}

    def track_of(span: ChunkSpan) -> int:
        return tracks[span.worker_name] if span.worker_name else span.worker

    events: list[dict[str, Any]] = []
    for who, track in {span.worker_id: track_of(span) for span in record.chunks}.items():
        for kind in ("process_name", "thread_name"):
            events.append(
                {
                    "name": kind,
                    "ph": "M",
                    "pid": track,
                    "tid": track,
                    "args": {"name": f"worker {who}"},
                }
            )
    for span, cost in zip(record.chunks, record.costs, strict=True):
        track = track_of(span)
        for action, begin, stop in cost.cluster_steps:
            if action != "compute":  # what dask did around the chunk: moving, reading its data
                events.append(
                    {"name": f"dask {action}", "cat": "dask", "ph": "X", "pid": track,
                     "tid": track, "ts": micros(begin), "dur": round((stop - begin) * 1e6, 3)}
                )  # fmt: skip
        if span.started is None:
            continue  # lost before it started: nothing ran
        end = span.finished if span.finished is not None else span.received or span.started
        last = span.first_item + span.items - 1
        events.append(
            {
                "name": f"items {span.first_item}-{last}" if span.items > 1 else f"item {last}",
                "cat": "chunk",
                "ph": "X",
                "pid": track,
                "tid": track,
                "ts": micros(span.started),
                "dur": round(max(0.0, end - span.started) * 1e6, 3),
                "args": {
                    "state": span.state,
                    "items": span.items,
                    "load_seconds": cost.load_seconds,
                    "dump_seconds": cost.dump_seconds,
                    "queued_seconds": span.started - span.sent,
                },
            }
        )
        if items:
            events.extend(_item_events(track, span, cost, micros(span.started + cost.load_seconds)))
    return events


def _item_events(
    track: int, span: ChunkSpan, cost: ChunkCost, start: float
) -> list[dict[str, Any]]:
    """An item's slice: laid end to end after the chunk's loading (items run one after another)."""
    events = []
    for offset, seconds in enumerate(cost.item_seconds):
        duration = seconds * 1e6
        events.append(
            {
                "name": f"item {span.first_item + offset}",
                "cat": "item",
                "ph": "X",
                "pid": track,
                "tid": track,
                "ts": round(start, 3),
                "dur": round(duration, 3),
            }
        )
        start += duration
    return events
