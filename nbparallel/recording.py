"""Recording a call with insights on: the `Recorder` that `outcomes.Tracker` feeds with each
chunk's events, its live spans for the timeline, and the finished `Insights` with its hints.

Made only when insights are on (the Tracker holds None otherwise), so a call without them reads
no clock for them anywhere. On, the call's end is on the critical path of its results: per chunk
it only stores what arrived (a short repr is made for the final 5 slowest items alone, when the
call ends), and the record with its per-worker rows and hints is built when first read.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import threading
import time
from collections.abc import Sequence
from typing import Any

from . import errors, messages, tasks
from .insights import ChunkCost, ChunkSpan, Insights, SlowItem, WorkerInsight
from .timing import SLOWEST_KEPT

TARGET_CHUNK_SECONDS = 0.05  # a chunk this long makes the pool's per-chunk cost negligible


class Recorder:
    """The spans and costs of one call's chunks as their events arrive (one thread: the Tracker's)."""

    def __init__(self, name: str, backend: str, worker_count: int) -> None:
        self.name, self.backend, self.worker_count = name, backend, worker_count
        self.start = time.time()
        self._sent: dict[int, float] = {}  # task id -> the kernel's seconds sending it
        self._running: dict[int, ChunkSpan] = {}  # task id -> span of a chunk running
        self._chunks: list[ChunkSpan] = []
        self._costs: list[ChunkCost] = []
        # Chunks whose answer came with its Timing, not yet in _chunks and _costs: a frozen
        # record costs microseconds to make, so they are made when read (see `_settle`).
        # (position, items, timing, state, send seconds, receive seconds, received)
        self._arrived: list[tuple[int, int, messages.Timing, str, float, float, float]] = []
        # Slowest first, at most SLOWEST_KEPT: (seconds, position, worker, the item, the
        # worker's name, items: more than 1 for a group timed together)
        self._slowest: list[tuple[float, int, int, Any, str, int]] = []
        self._ended: tuple[float, tuple[Any, ...], tuple[SlowItem, ...]] | None = None
        self._record: Insights | None = None
        self._building = threading.Lock()  # a background call's bar and the user may both read

    def sent(self, chunk: tasks.Chunk, seconds: float) -> None:
        self._sent[chunk.task_id] = seconds

    def started(self, chunk: tasks.Chunk, event: messages.TaskStarted) -> None:
        self._running[chunk.task_id] = ChunkSpan(
            event.worker, chunk.position, len(chunk.items), event.sent, event.started, None, None,
            "running",
        )  # fmt: skip

    def ended(
        self, chunk: tasks.Chunk, event: object, receive_seconds: float = 0.0, failed: bool = True
    ) -> None:
        """The chunk's answer (TaskDone, TaskFailed or TaskLost) arrived; `failed`: some of a
        TaskDone's items raised (errors="return"/"skip")."""
        running = self._running.pop(chunk.task_id, None)
        send = self._sent.pop(chunk.task_id, 0.0)
        timing: messages.Timing | None = getattr(event, "timing", None)
        state = "done" if isinstance(event, messages.TaskDone) and not failed else "failed"
        if timing is not None:
            received = timing.received or time.time()
            arrived = (
                chunk.position,
                len(chunk.items),
                timing,
                state,
                send,
                receive_seconds,
                received,
            )
            self._arrived.append(arrived)
            self._keep_slowest(chunk, timing.worker, timing.slowest, timing.worker_name)
            return
        # Lost with its worker: what ran of it is unknown, but for a timed-out item.
        self._settle()  # the chunks stay in the order their answers arrived
        worker = getattr(event, "pid", 0) or (running.worker if running else 0)
        sent = running.sent if running else time.time()
        started = running.started if running else None
        ran = getattr(event, "item_seconds", None)
        if ran is not None and event.offset is not None:  # type: ignore[attr-defined]
            self._keep_slowest(chunk, worker, [(event.offset, ran, 1)])  # type: ignore[attr-defined]
            started = min(started or time.time(), time.time() - ran)
            sent = min(sent, started)
        self._chunks.append(
            ChunkSpan(
                worker, chunk.position, len(chunk.items), sent, started, None, time.time(), state
            )
        )
        self._costs.append(ChunkCost(send, 0.0, 0.0, 0.0, receive_seconds))

    def _settle(self) -> None:
        """Make the spans and costs of the chunks that arrived since last asked."""
        for position, items, timing, state, send, receive_seconds, received in self._arrived:
            self._chunks.append(
                ChunkSpan(
                    timing.worker, position, items, timing.sent, timing.started, timing.finished,
                    received, state, timing.worker_name,
                )
            )  # fmt: skip
            self._costs.append(
                ChunkCost(
                    send, timing.load_seconds, timing.working, timing.dump_seconds,
                    receive_seconds, timing.group_items, timing.group_seconds,
                    timing.cluster_steps,
                )
            )  # fmt: skip
        self._arrived.clear()

    def _keep_slowest(
        self,
        chunk: tasks.Chunk,
        worker: int,
        slowest: Sequence[tuple[int, float, int]],
        worker_name: str = "",
    ) -> None:
        """Merge a chunk's slowest items (offset, seconds, count; slowest first) into the call's."""
        kept = self._slowest
        floor = kept[-1][0] if len(kept) >= SLOWEST_KEPT else -1.0
        if not slowest or slowest[0][1] <= floor:  # the common case: none is among the call's
            return
        new = [
            (
                took,
                chunk.position + chunk.original_offset(offset),
                worker,
                chunk.items[offset],
                worker_name,
                count,
            )
            for offset, took, count in slowest
            if took > floor
        ]
        kept.extend(new)
        kept.sort(key=lambda item: -item[0])
        del kept[SLOWEST_KEPT:]

    def spans(self) -> list[ChunkSpan]:
        """Every chunk so far, those still running included (for the live timeline)."""
        self._settle()
        return [*self._chunks, *self._running.values()]

    def finish(self, workers: Sequence[Any] = ()) -> None:
        """The call ended; `workers`: the pool's (WorkerStatus), for the ones that ran nothing
        and for start-up times. Keeps what the record needs and no item but the final slowest
        ones' short reprs (an item may change once the call has returned it)."""
        slowest = tuple(
            SlowItem(position, took, worker, errors.short_repr(item), name, count)
            for took, position, worker, item, name, count in self._slowest
        )
        self._slowest = []
        self._ended = (time.time(), tuple(workers), slowest)

    def record(self) -> Insights:
        """The call's record (once `finish`ed), built on first read: the same object after."""
        with self._building:
            if self._record is None:
                self._record = self._build()
            return self._record

    def _build(self) -> Insights:
        assert self._ended is not None, "the call has not ended"
        end, workers, slowest = self._ended
        self._settle()
        stopped = [dataclasses.replace(span, state="stopped") for span in self._running.values()]
        spans = [*self._chunks, *stopped]
        costs = [*self._costs, *(ChunkCost(0.0, 0.0, 0.0, 0.0, 0.0) for _ in stopped)]
        rows = _worker_rows(self.start, end, spans, costs, workers, self.worker_count)
        record = Insights(
            self.name, self.backend, self.start, end, self.worker_count, tuple(rows),
            tuple(spans), tuple(costs), slowest, (), bool(stopped or self._sent),
        )  # fmt: skip
        return dataclasses.replace(record, hints=tuple(hints(record)))


def _worker_rows(
    start: float,
    end: float,
    spans: Sequence[ChunkSpan],
    costs: Sequence[ChunkCost],
    pool: Sequence[Any],
    worker_count: int,
) -> list[WorkerInsight]:
    wall = end - start
    ran: dict[int | str, list[tuple[ChunkSpan, ChunkCost]]] = {}
    for span, cost in zip(spans, costs, strict=True):
        ran.setdefault(span.worker_id, []).append((span, cost))
    known = {w.name or w.pid: w for w in pool}
    # A dask worker ran chunks that its address does not name if the task stream was not read.
    by_pid = {span.worker for span in spans if not span.worker_name}
    idle = [who for who, w in known.items() if who not in ran and w.pid not in by_pid]
    idle = idle[: max(0, worker_count - len(ran))]
    rows = []
    for who in [*ran, *idle]:
        chunks = ran.get(who, [])
        status = known.get(who)
        startup = 0.0
        if status is not None and status.ready > 0:
            startup = max(0.0, min(status.ready, end) - max(status.started, start))
        working = sum(_working(span, cost, end) for span, cost in chunks)
        transfer = sum(
            cost.load_seconds + cost.dump_seconds + cost.cluster_transfer_seconds
            + cost.cluster_disk_seconds
            for _, cost in chunks
        )  # fmt: skip
        waiting = max(0.0, wall - startup - working - transfer)
        items = sum(span.items for span, _ in chunks)
        pid = chunks[0][0].worker if chunks else status.pid if status else 0
        name = who if isinstance(who, str) else ""
        rows.append(
            WorkerInsight(pid, len(chunks), items, startup, waiting, working, transfer, wall, name)
        )
    return rows


def _working(span: ChunkSpan, cost: ChunkCost, end: float) -> float:
    """Time in the function: the items' own times, or for a chunk whose worker died (or that
    runs still), the time it was seen running."""
    if cost.group_items or span.finished is not None or span.started is None:
        return cost.working
    return max(0.0, (span.received or end) - span.started)


def hints(record: Insights) -> list[str]:
    """What to change, when the cause is plain; most telling first."""
    found: list[str] = []
    wall, workers = record.wall, record.workers
    if wall <= 0 or not workers or not record.items or record.efficiency > 0.9:
        return found
    slowest = record.slowest
    stands_out = len(slowest) == 1 or (
        len(slowest) > 1 and slowest[0].seconds >= 2 * slowest[1].seconds
    )
    if slowest and stands_out and slowest[0].seconds >= 0.3 * wall and record.worker_count > 1:
        item = slowest[0]
        if item.items == 1:
            found.append(
                f"one item took {item.seconds / wall:.0%} of the time: item {item.position} "
                f"({item.args})"
            )
        else:
            found.append(
                f"{item.label}, timed together, took {item.seconds / wall:.0%} of the time: "
                "one of them is slow (items under 20 us are timed in groups)"
            )
    if record.ended_early:  # the rest assumes a call that ran to its end
        return found
    started_later = len(workers) - record.worker_count  # on dask: a cluster may be bigger
    if started_later > 0 and record.backend == "processes":
        # Workers that exited were replaced (max_tasks_per_worker, a crash, a timeout): their
        # successors' start-up, not the chunk size, is what kept the others waiting.
        found.append(
            f"{_count(started_later, 'worker')} started during the call, replacing ones that "
            "exited (max_tasks_per_worker, a crash or a timeout): starting them took the time"
        )
        return found
    chunks = [c for c in record.chunks if c.started is not None]
    items = record.items
    if len(chunks) < record.worker_count:
        if items < record.worker_count:
            found.append(f"only {_count(items, 'item')} for {record.worker_count} workers")
        else:
            smaller = max(1, math.ceil(items / (record.worker_count * 4)))
            found.append(
                f"only {_count(len(chunks), 'chunk')} for {record.worker_count} workers: "
                f"try chunksize={smaller}"
            )
    waiting = sum(w.waiting for w in workers) / (len(workers) * wall)
    per_chunk = [cost.working for cost in record.costs if cost.group_items]
    if waiting >= 0.3 and per_chunk and len(chunks) >= record.worker_count:
        typical = statistics.median(per_chunk)
        size = statistics.mean(c.items for c in chunks)
        if _tail_waiting(record) >= 0.5 * waiting * len(workers) * wall:
            # Waiting at the end, for the last chunks: one slow item (said above), or chunks
            # too big to share the work out evenly.
            if not found and size > 1:
                found.append(
                    f"workers waited {waiting:.0%} of the time, most of it for the last chunks "
                    f"to end: try chunksize={max(1, math.floor(size / 4))} to share the work "
                    "out evenly"
                )
        elif typical < TARGET_CHUNK_SECONDS / 2:
            bigger = math.ceil(size * TARGET_CHUNK_SECONDS / max(typical, 1e-6))
            bigger = min(bigger, max(1, items // record.worker_count))
            if bigger > size:  # never the chunk size the call had already
                found.append(
                    f"workers waited {waiting:.0%} of the time for work: chunks too small, try "
                    f"chunksize={bigger}"
                )
    transfer = sum(w.transfer for w in workers) / (len(workers) * wall)
    if transfer >= 0.25:
        found.append(
            f"workers spent {transfer:.0%} of the time loading items and serializing results: "
            "send less (a path or an index instead of the data), or return less"
        )
    startup = sum(w.startup for w in workers) / (len(workers) * wall)
    if startup >= 0.25:
        found.append(f"starting the workers took {startup:.0%} of the time: later calls reuse them")
    # Threads share the kernel's memory: what sending took there is starting the pool's threads.
    if record.kernel_send_seconds >= 0.25 * wall and record.backend != "threads":
        found.append(
            f"the kernel spent {record.kernel_send_seconds / wall:.0%} of the time serializing "
            "items: send smaller items (a path or an index instead of the data)"
        )
    return found


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _tail_waiting(record: Insights) -> float:
    """Worker-seconds spent idle after each worker's last chunk, until the last one ended."""
    last: dict[int | str, float] = {}
    for span in record.chunks:
        if span.finished is not None:
            last[span.worker_id] = max(last.get(span.worker_id, 0.0), span.finished)
    if not last:
        return 0.0
    end = max(last.values())
    return sum(end - finished for finished in last.values())
