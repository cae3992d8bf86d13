"""The same calls on every backend: processes, threads, and a real Dask cluster (several worker
processes). Process-only behaviour (pids, crashes, unsendable captures) lives in the other files."""

from __future__ import annotations

import os
import time

import psutil
import pytest

from nbparallel import Parallel, WorkerDiedError

from .conftest import KEPT_SESSIONS, interrupt_when, wait_until

BACKENDS = ["processes", "threads", "dask"]


@pytest.fixture(scope="module")
def sessions():
    """One session per backend for this module, started before any test of it runs (so its
    processes are not taken for leaks): a dask cluster starts once, not per test."""
    started: dict[str, Parallel] = {}
    for backend in BACKENDS:
        started[backend] = Parallel()
        started[backend].configure(backend=backend, progress=False, workers=2)
        started[backend].map(abs, [1])
    KEPT_SESSIONS.extend(started.values())
    yield started.__getitem__
    for session in started.values():
        KEPT_SESSIONS.remove(session)
        session.shutdown()


@pytest.fixture(params=BACKENDS)
def on(request, sessions):
    return sessions(request.param)


SCALE = 3


def scaled(x):
    return x * SCALE


def fails_on_seven(x):
    if x == 7:
        raise LookupError("seven")
    return scaled(x)


def test_map_keeps_input_order_and_uses_notebook_globals(on):
    offset = 100
    assert on.map(lambda x: scaled(x) + offset, range(50)) == [3 * x + 100 for x in range(50)]


def test_imap_unordered_starmap_and_submit(on):
    assert sorted(on.imap_unordered(scaled, range(20))) == sorted(3 * x for x in range(20))
    assert on.starmap(lambda a, b: a - b, [(5, 1), (7, 2)]) == [4, 5]
    assert on.submit(pow, 2, 10).result(timeout=60) == 1024


def fails_on_four(x):
    if x == 4:
        raise LookupError(f"no {x}")
    return x


def test_an_exception_keeps_its_type_names_the_item_and_the_backend_stays_usable(on):
    with pytest.raises(LookupError, match="no 4") as info:
        on.map(fails_on_four, range(8), chunksize=2)
    assert any("item 4: 4" in note for note in info.value.__notes__)
    assert on.map(fails_on_four, range(3)) == [0, 1, 2]


def test_errors_return_and_skip(on):
    returned = on.map(fails_on_four, range(6), errors="return", chunksize=3)
    assert (
        returned[:4] == [0, 1, 2, 3] and isinstance(returned[4], LookupError) and returned[5] == 5
    )
    assert on.map(fails_on_four, range(6), errors="skip") == [0, 1, 2, 3, 5]


def test_print_inside_a_task_reaches_the_caller(on, capsys):
    on.map(lambda x: print(f"task {x}"), range(3), chunksize=3)
    assert capsys.readouterr().out.splitlines() == ["task 0", "task 1", "task 2"]


def test_every_worker_setup_defines_names_for_later_tasks(on):
    base = 7
    assert (
        on.run_on_every_worker("import math as setup_math\nfrom_setup = base * 6", {"base": base})
        >= 1
    )
    assert on.map(lambda x: from_setup + x + int(setup_math.pi), range(3)) == [45, 46, 47]


def test_a_future_raises_the_tasks_exception_whatever_the_sessions_errors_rule(on):
    """`errors="return"` is for maps; a future's result() raises, always."""
    on.configure(errors="return")
    try:
        future = on.submit(fails_on_seven, 7)
        with pytest.raises(LookupError, match="seven"):
            future.result(timeout=30)
    finally:
        on.configure(errors="raise")


def test_items_a_failing_chunk_finished_are_kept(on):
    """Items 0-6 of a one-chunk call whose item 7 raises are in partial_results()."""
    with pytest.raises(LookupError):
        on.map(fails_on_seven, range(10), chunksize=10)
    assert on.partial_results() == {n: n * SCALE for n in range(7)}


def test_progress_shows_the_total(on, capsys):
    on.map(scaled, range(12), progress=True)
    assert "12/12" in capsys.readouterr().err


@pytest.mark.parametrize("by_signal", [True, False], ids=["SIGINT", "interrupt_main"])
def test_interrupt_raises_within_1s_and_queued_items_never_start(on, tmp_path, by_signal):
    """Interrupted once both workers are inside an item, the call raises within 1 s of the
    interrupt, and its four queued items never start. Processes stop the running items at once
    (their workers are killed); threads and dask let them end. The next map runs.

    `_thread.interrupt_main()` wakes nothing (as a SIGINT that lands while the caller hands the
    GIL over): the caller must not wait for events without a deadline (progress is off here)."""
    release = tmp_path / "release"

    def held(n):
        (tmp_path / f"started-{n}").touch()
        wait_until(release.exists, timeout=30)
        return n

    def started() -> set[str]:
        return {path.name for path in tmp_path.glob("started-*")}

    processes = on.options.backend == "processes"
    workers_before = [psutil.Process(w.pid) for w in on.status().workers] if processes else []
    try:
        interrupter = interrupt_when(lambda: len(started()) >= 2, by_signal=by_signal)
        with pytest.raises(KeyboardInterrupt):
            on.map(held, range(6), chunksize=1)
        raised_at = time.monotonic()
        interrupter.join(5)
        assert interrupter.sent_at is not None and raised_at - interrupter.sent_at < 1.0
        if processes:  # before the release: only a kill can have ended them
            wait_until(lambda: not any(p.is_running() for p in workers_before), timeout=2)
        if on.options.backend == "dask":
            # A dask worker may hold a queued task besides its running one (worker-saturation),
            # and drops it when the scheduler's word of the cancel arrives: an item that ended
            # within milliseconds of the interrupt could let it start first (a known limit).
            wait_until(lambda: not tasks_queued_on_dask_workers(), timeout=10)
    finally:
        release.touch()  # threads and dask workers end their running items now
    # Queued items would run before the next map's (they came first), so by its end they would
    # have started.
    assert on.map(scaled, range(4)) == [0, 3, 6, 9]
    assert len(started()) == 2, sorted(started())


def tasks_queued_on_dask_workers() -> list[str]:
    """Tasks the workers of this process's current dask client hold but do not run yet."""
    import distributed

    def queued(dask_worker) -> list[str]:
        return [
            str(ts.key)
            for ts in dask_worker.state.tasks.values()
            if ts.state in ("waiting", "ready", "constrained")
        ]

    return [key for keys in distributed.Client.current().run(queued).values() for key in keys]


def test_dask_lost_worker_is_reported_and_the_cluster_recovers():
    dask = Parallel()  # a cluster of its own: cancelled tasks of other tests are not in its way
    dask.configure(backend="dask", progress=False, workers=2)
    try:
        with pytest.raises(WorkerDiedError, match="the dask cluster lost the task"):
            dask.map(lambda x: os._exit(1) if x == 1 else x, range(2), chunksize=1)
        assert dask.map(scaled, range(3)) == [0, 3, 6]
    finally:
        dask.shutdown()


def test_dask_without_distributed_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "distributed", None)
    monkeypatch.delitem(sys.modules, "nbparallel.backends.dask", raising=False)
    with pytest.raises(ModuleNotFoundError, match=r'pip install "nbparallel\[dask\]"'):
        Parallel().map(abs, [1], backend="dask")


def test_timeout_is_refused_where_a_task_cannot_be_stopped():
    with pytest.raises(ValueError, match="timeout= needs the processes backend"):
        Parallel().map(abs, [1], backend="threads", timeout=1)


def running_span(seconds):
    started = time.time()
    time.sleep(seconds)  # the item's work: the test measures how many run at once
    return started, time.time()


@pytest.mark.parametrize("backend", ["processes", "threads"])
def test_a_calls_workers_bounds_how_many_of_its_items_run_at_once_in_a_bigger_pool(
    sessions, backend
):
    """`workers=1` on a session of 2: one item at a time (the threads backend ran two). On dask
    the scheduler places the tasks: `workers` is the size of the local cluster."""
    spans = sessions(backend).map(running_span, [0.1] * 6, chunksize=1, workers=1)
    moments = sorted(
        (moment, change) for start, end in spans for moment, change in ((start, 1), (end, -1))
    )
    at_once = most = 0
    for _, change in moments:
        at_once += change
        most = max(most, at_once)
    assert most == 1
