"""What a dask scheduler recorded of each task (its task stream), for calls with insights on.

The scheduler keeps the task stream only once a client asks for it (it then adds distributed's
TaskStreamPlugin), so it is first asked when a call with insights on sends its first task: a
session that never turns insights on adds nothing to the scheduler. Records are read from a
cursor (the stream's index), so a task's record is read once, whatever the clocks of the
machines say, and kept until its task's answer arrives.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from typing import Any

from .. import messages

RPC_SECONDS = 10  # a scheduler that does not answer within this leaves the figures our own


class TaskStream:
    """The records of the task stream since this client first followed it, by task key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cursor: int | None = None  # the stream's index up to which it was read
        self._unread = True  # not yet followed, and not known to be unavailable
        self._records: dict[str, dict[str, Any]] = {}  # key -> record, its answer not yet in

    def follow(self, client: Any) -> None:
        """From now on, the scheduler records tasks (the first call adds its plugin)."""
        with self._lock:
            if not self._unread:
                return
            self._unread = False
            try:
                self._cursor = client.sync(
                    client.scheduler.get_task_stream_index, callback_timeout=RPC_SECONDS
                )
            except Exception:  # a distributed without it (dask/distributed#9282): ours only
                self._cursor = None

    def fill(self, client: Any, key: str, timing: messages.Timing, wanted: Collection[str]) -> None:
        """Put in `timing` what the scheduler recorded of task `key`: the dask worker's address,
        and the steps dask timed (compute, transfer, deserialize, disk-read, disk-write).
        `wanted`: keys of other tasks whose records to keep if they come along."""
        record = self._record(client, key, wanted)
        if record is None:
            return
        timing.worker_name = str(record.get("worker", ""))
        timing.cluster_steps = tuple(
            (str(step["action"]), float(step["start"]), float(step["stop"]))
            for step in record.get("startstops", ())
        )

    def _record(self, client: Any, key: str, wanted: Collection[str]) -> dict[str, Any] | None:
        with self._lock:
            if self._cursor is None:
                return None
            record = self._records.pop(key, None)
            if record is not None:
                return record
            try:  # everything recorded since the last read: often the next answers' too
                fresh = client.sync(
                    client.scheduler.get_task_stream,
                    start_index=self._cursor,
                    callback_timeout=RPC_SECONDS,
                )
            except Exception:  # the cluster is going away: the task's figures stay ours
                return None
            self._cursor += len(fresh)
            self._records = {k: r for k, r in self._records.items() if k in wanted}
            self._records.update(
                (r["key"], r) for r in fresh if r["key"] == key or r["key"] in wanted
            )
            return self._records.pop(key, None)
