"""Which worker gets a chunk, and which retire: the process pool's policy, with no process."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

from nbparallel.backends import scheduling


@dataclasses.dataclass(eq=False)
class FakeWorker:
    inflight: list[Any] = dataclasses.field(default_factory=list)
    fast_call_id: int = 0
    retiring: bool = False
    stopping: bool = False

    def serves(self, call: Any) -> bool:
        return any(task[0] is call for task in self.inflight)


def call(call_id: int = 1, max_workers: int = 8) -> Any:
    return SimpleNamespace(call_id=call_id, max_workers=max_workers)


def test_the_least_loaded_worker_with_room_gets_the_chunk():
    mine = call()
    busy, idle = FakeWorker([(mine, None, None)], fast_call_id=mine.call_id), FakeWorker()
    assert scheduling.choose_worker([busy, idle], mine) is idle


def test_a_short_tasks_worker_gets_the_next_task_queued_behind_it_a_slow_ones_does_not():
    mine = call()
    fast = FakeWorker([(mine, None, None)], fast_call_id=mine.call_id)
    slow = FakeWorker([(mine, None, None)], fast_call_id=0)
    assert scheduling.choose_worker([slow, fast], mine) is fast
    assert scheduling.choose_worker([slow], mine) is None


def test_a_call_uses_no_more_workers_than_it_asked_for():
    mine = call(max_workers=1)
    serving = FakeWorker([(mine, None, None)], fast_call_id=0)
    assert scheduling.choose_worker([serving, FakeWorker()], mine) is None


def test_a_retiring_worker_gets_nothing_and_stops_once_idle():
    mine = call()
    retiring = FakeWorker(retiring=True)
    assert scheduling.choose_worker([retiring], mine) is None
    assert scheduling.to_stop_now([retiring, FakeWorker()]) == [retiring]


def test_shrinking_retires_the_least_busy_workers_first():
    mine = call()
    busy, idle_a, idle_b = FakeWorker([(mine, None, None)]), FakeWorker(), FakeWorker()
    assert set(map(id, scheduling.to_retire([busy, idle_a, idle_b], 1))) == {id(idle_a), id(idle_b)}


def test_no_task_is_queued_behind_a_slow_task_or_one_whose_items_are_copied_from_the_notebook():
    assert scheduling.keeps_queue_behind(0.001, lent_items=False)
    assert not scheduling.keeps_queue_behind(0.5, lent_items=False)
    assert not scheduling.keeps_queue_behind(0.001, lent_items=True)
