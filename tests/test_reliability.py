"""Things that go wrong in real work: crashes, hostile objects, timeouts, leaks. Nothing hangs."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import CancelledError
from pathlib import Path

import psutil
import pytest

from nbparallel import (
    NbParallelError,
    ResultError,
    TaskExitError,
    TaskTimeoutError,
    UnsendableError,
    WorkerDiedError,
    lifecycle,
    parallel,
)
from nbparallel.backends import launcher

from .conftest import every_worker_ready, run_script, wait_until

pytestmark = pytest.mark.usefixtures("quiet_progress")


# --- a worker dies ------------------------------------------------------------------------


def exit_hard(x):
    if x == 8:
        os._exit(3)
    return x


def kill_self(x):
    if x == 8:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def segfault(x):
    if x == 8:
        ctypes.string_at(0)
    return x


@pytest.mark.parametrize(
    "func, how",
    [
        (exit_hard, r"exited with code 3"),
        (kill_self, r"was killed by signal 9 .*out-of-memory killer"),
        (segfault, r"was killed by signal 11 .*segmentation fault"),
    ],
    ids=["os._exit", "SIGKILL", "segfault"],
)
def test_a_dead_worker_fails_the_call_at_once_naming_pid_cause_and_item(func, how, tmp_path):
    """The call raises within 2 s of the worker's death (timed from it, not from the call's
    start: whatever the workers' start-up costs on this machine), naming pid, cause and item."""
    died_at = tmp_path / "died-at"

    def notes_when_it_dies(x):
        if x == 8:
            died_at.write_text(
                repr(time.monotonic())
            )  # CLOCK_MONOTONIC: one clock for all processes
        return func(x)

    with pytest.raises(WorkerDiedError, match=rf"worker pid \d+ {how}") as info:
        parallel.map(notes_when_it_dies, range(10), chunksize=5)  # item 8: 4th of the 2nd chunk
    assert time.monotonic() - float(died_at.read_text()) < 2.0
    assert "while running item 8 (8)" in str(info.value)
    assert parallel.map(abs, range(-3, 3)) == [3, 2, 1, 0, 1, 2]  # replaced; the pool works
    wait_until(lambda: len(parallel.status().workers) == parallel.options.worker_count)


def test_retries_run_the_items_of_a_dead_worker_again(tmp_path):
    def dies_once(x):
        marker = tmp_path / f"died-{x}"
        if x == 3 and not marker.exists():
            marker.touch()
            os._exit(1)
        return x * 10

    assert parallel.map(dies_once, range(6), chunksize=2, retries=1) == [0, 10, 20, 30, 40, 50]
    (tmp_path / "died-3").unlink()
    with pytest.raises(WorkerDiedError, match="item 3"):
        parallel.map(dies_once, range(6), chunksize=2, retries=0)


def test_sys_exit_in_a_task_is_a_task_error_not_the_callers_exit():
    with pytest.raises(TaskExitError, match=r"item 2 \(2\): SystemExit: 7"):
        parallel.map(lambda x: sys.exit(7) if x == 2 else x, range(4))


def interrupts(x):
    raise KeyboardInterrupt


def test_a_keyboard_interrupt_raised_by_a_task_says_how_to_stop_a_call():
    with pytest.raises(TaskExitError, match=r"\(0\): KeyboardInterrupt\. .* use Stop"):
        parallel.map(interrupts, [0])


# --- hostile objects at every boundary ------------------------------------------------------


def _raise(*_):
    raise ValueError("hostile object")


def _exit(*_):
    sys.exit(5)


def _crash(*_):
    os._exit(9)


class Hostile:
    """Misbehaves when pickled ("dump") or when unpickled ("load"), by raising, exiting or crashing."""

    def __init__(self, phase: str, behaviour: str) -> None:
        self.phase, self.behaviour = phase, behaviour

    def __reduce__(self):
        act = {"raise": _raise, "exit": _exit, "crash": _crash}[self.behaviour]
        if self.phase == "dump":
            return act()
        return act, ()


def make_hostile(phase_behaviour):
    return Hostile(*phase_behaviour)


BOUNDARIES = [
    # (what misbehaves, where, expected error, message)
    ("argument", ("dump", "raise"), UnsendableError, r"cannot send item 1 .*hostile object"),
    ("argument", ("dump", "exit"), UnsendableError, r"cannot send item 1 .*SystemExit"),
    ("argument", ("load", "raise"), ValueError, r"hostile object"),
    ("argument", ("load", "exit"), TaskExitError, r"SystemExit: 5"),
    (
        "argument",
        ("load", "crash"),
        WorkerDiedError,
        r"exited with code 9 before it started an item",
    ),
    (
        "result",
        ("dump", "raise"),
        ResultError,
        r"item 1 .*result cannot be sent back.*hostile object",
    ),
    ("result", ("dump", "exit"), ResultError, r"item 1 .*result cannot be sent back.*SystemExit"),
    ("result", ("dump", "crash"), WorkerDiedError, r"exited with code 9"),
    (
        "result",
        ("load", "raise"),
        ResultError,
        r"could not be rebuilt here: ValueError: hostile object",
    ),
    ("result", ("load", "exit"), ResultError, r"could not be rebuilt here: SystemExit: 5"),
]


@pytest.mark.parametrize(
    "role, phase_behaviour, expected, message",
    BOUNDARIES,
    ids=[f"{r}-{p}-{b}" for r, (p, b), _, _ in BOUNDARIES],
)
def test_hostile_objects_at_every_boundary_give_a_clear_error_and_a_usable_pool(
    role, phase_behaviour, expected, message, tmp_path
):
    """The error comes within 5 s of the call on a ready pool (a crash is noticed, not waited
    out). Crashing while pickling or unpickling *in the caller* is left out: it ends the caller."""
    every_worker_ready(parallel, tmp_path)  # a worker replaced by the case before has booted
    started = time.monotonic()
    if role == "argument":
        call = lambda: parallel.map(lambda x: 0, [0, Hostile(*phase_behaviour), 2], chunksize=3)  # noqa: E731
    else:
        call = lambda: parallel.map(  # noqa: E731
            lambda x: make_hostile(phase_behaviour) if x == 1 else x, range(3), chunksize=3
        )
    with pytest.raises(expected, match=message):
        call()
    assert time.monotonic() - started < 5
    assert parallel.map(abs, [-1, -2]) == [1, 2]


# --- timeouts and keeping going -------------------------------------------------------------


def sleepy(x):
    if x == 1:
        time.sleep(30)  # the workload: one item hangs
    return x


def test_timeout_stops_the_item_and_names_it(tmp_path):
    """The error comes within 2.5 s of the item's start with timeout=0.5 (timed from the item's
    own start, so the workers' start-up is not counted), and the pool goes on."""
    started_at = tmp_path / "started-at"

    def notes_when_it_starts(x):
        if x == 1:
            started_at.write_text(repr(time.monotonic()))  # CLOCK_MONOTONIC: one clock for all
        return sleepy(x)

    with pytest.raises(TaskTimeoutError, match=r"timeout=0.5 s while running item 1 \(1\)"):
        parallel.map(notes_when_it_starts, range(4), chunksize=1, timeout=0.5)
    assert time.monotonic() - float(started_at.read_text()) < 2.5
    assert parallel.map(abs, [-5]) == [5]


def test_timeout_with_errors_return_lets_the_other_items_go_on():
    results = parallel.map(sleepy, range(6), chunksize=3, timeout=0.5, errors="return")
    assert [r for i, r in enumerate(results) if i != 1] == [0, 2, 3, 4, 5]
    assert isinstance(results[1], TaskTimeoutError) and isinstance(results[1], TimeoutError)


def fails_on_odd(x):
    if x % 2:
        raise ArithmeticError(f"odd {x}")
    return x


def test_errors_return_puts_the_exception_in_the_items_place():
    results = parallel.map(fails_on_odd, range(6), chunksize=4, errors="return")
    assert results[0::2] == [0, 2, 4]
    assert all(
        isinstance(r, ArithmeticError) and str(r) == f"odd {i}"
        for i, r in zip((1, 3, 5), results[1::2], strict=True)
    )
    assert "fails_on_odd" in results[1].__cause__.text


def test_errors_skip_leaves_failing_items_out():
    assert parallel.map(fails_on_odd, range(10), chunksize=3, errors="skip") == [0, 2, 4, 6, 8]
    assert parallel.map(exit_hard, range(10), chunksize=4, errors="skip") == [
        0,
        1,
        2,
        3,
        4,
        5,
        6,
        7,
        9,
    ]


def test_results_before_a_failure_are_kept():
    items = [0, 2, 4, 5, 6]
    with pytest.raises(ArithmeticError):
        parallel.map(fails_on_odd, items, chunksize=1, workers=1)
    kept = parallel.partial_results()
    # Every item before the failing one; the one after may have finished too (its task was
    # queued on the worker behind the failing one), and then it is kept as well.
    assert {0: 0, 1: 2, 2: 4}.items() <= kept.items() and 3 not in kept
    assert all(kept[position] == items[position] for position in kept)


def test_a_restart_during_every_worker_setup_is_reported_as_a_restart(session):
    """The setup's error says the pool was restarted, not that a worker died by itself."""
    session.configure(workers=2)
    session.map(abs, range(2))
    outcome: list[BaseException] = []

    def run_setup():
        try:
            session.run_on_every_worker("import time\nwhile True: time.sleep(0.01)")
        except BaseException as error:
            outcome.append(error)

    setup = threading.Thread(target=run_setup)
    setup.start()
    wait_until(lambda: all(w.busy for w in session.status().workers))
    session.restart()
    setup.join(30)
    assert outcome and "the pool was restarted" in str(outcome[0]), outcome
    assert not isinstance(outcome[0], WorkerDiedError)


def test_cancel_of_a_call_stuck_in_its_inputs_next_says_so_within_its_deadline(monkeypatch):
    """A generator that blocks cannot be interrupted: cancel() says so instead of hanging."""
    from nbparallel import background

    monkeypatch.setattr(background, "CANCEL_SECONDS", 0.5)
    release = threading.Event()

    def blocking_input():
        yield 1
        release.wait(30)
        yield 2

    handle = parallel.map_async(abs, blocking_input(), chunksize=1)
    wait_until(lambda: parallel.status().workers)
    with pytest.raises(NbParallelError, match="waiting for the next item of its input"):
        handle.cancel()
    release.set()
    with pytest.raises(CancelledError):
        handle.result(timeout=30)


# --- memory and recycling -------------------------------------------------------------------


def test_max_tasks_per_worker_recycles_workers(session):
    session.configure(workers=2, max_tasks_per_worker=2)
    pids = session.map(lambda _: os.getpid(), range(12), chunksize=1)
    counts = {pid: pids.count(pid) for pid in set(pids)}
    assert len(counts) >= 6 and max(counts.values()) <= 2


def test_max_worker_memory_replaces_a_worker_that_grew(session):
    session.configure(workers=1, max_worker_memory=150 * 2**20)

    def leak(_):
        import builtins

        builtins.__dict__.setdefault("_leak", []).append(bytearray(200 * 2**20))  # a leaky library
        return os.getpid()

    first = session.map(leak, [0])
    second = session.map(lambda _: os.getpid(), [0])
    assert first != second


def test_a_generator_of_large_inputs_is_not_read_ahead_of_the_workers():
    pulled = []

    def large_inputs():
        for n in range(1_000):
            pulled.append(n)
            yield bytes(1_000_000)

    results = parallel.imap(len, large_inputs(), chunksize=1)
    assert next(results) == 1_000_000
    results.close()
    assert len(pulled) <= 2 * parallel.options.worker_count + 2


# --- no leaks, clean exits -----------------------------------------------------------------


def test_a_thousand_calls_leave_fds_threads_and_processes_as_they_were():
    parallel.map(abs, range(4))  # the pool is started: it is not a leak
    me = psutil.Process()
    before = (me.num_fds(), threading.active_count(), len(me.children(recursive=True)))
    for n in range(1_000):
        parallel.map(abs, range(n % 7))
    assert (me.num_fds(), threading.active_count(), len(me.children(recursive=True))) == before


def test_the_worker_record_lists_every_sessions_workers_until_each_shuts_down(session):
    """The record on disk, which the sweep reads after a crash, covers every pool of this process."""

    def recorded() -> set[int]:
        records = list(lifecycle.state_dir().glob(f"{os.getpid()}-*.json"))
        return (
            {pid for pid, _ in json.loads(records[0].read_text())["workers"]} if records else set()
        )

    def pids(owner) -> set[int]:
        return {w.pid for w in owner.status().workers}

    parallel.map(abs, range(4))
    session.map(abs, range(4))
    assert pids(parallel) and pids(session)
    assert recorded() == pids(parallel) | pids(session)
    session.shutdown()
    assert recorded() == pids(parallel)


def test_interpreter_exit_with_work_in_flight_is_quick_and_clean(tmp_path):
    """A script that ends with a task running on every worker (and as many queued) exits, its
    workers gone, within 5 s of its last line, with nothing said about leaks."""
    result = run_script(
        """
        import time
        from nbparallel import parallel
        count = parallel.options.worker_count
        futures = [parallel.submit(time.sleep, 60) for _ in range(2 * count)]  # half run, half wait
        while len(parallel.status().workers) < count or not all(w.busy for w in parallel.status().workers):
            time.sleep(0.01)
        print(" ".join(str(w.pid) for w in parallel.status().workers), flush=True)
        print(repr(time.monotonic()), flush=True)  # the script ends here, every worker busy
        """,
        tmp_path,
        timeout=30,
    )
    exited_at = (
        time.monotonic()
    )  # run_script returns once every holder of the script's stdout is gone
    assert result.returncode == 0, result.stderr
    pids_line, last_line_at = result.stdout.splitlines()
    assert exited_at - float(last_line_at) < 5
    assert "resource_tracker" not in result.stderr and "leaked" not in result.stderr
    workers = [int(pid) for pid in pids_line.split()]
    assert workers
    wait_until(lambda: not any(psutil.pid_exists(pid) for pid in workers), timeout=5)


# --- the worker dies with its pool's process ------------------------------------------------

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's"
)


def parent_death_signal(_):
    found = ctypes.c_int()
    ctypes.CDLL(None).prctl(2, ctypes.byref(found), 0, 0, 0)  # PR_GET_PDEATHSIG
    return found.value


@linux_only
@pytest.mark.parametrize(
    "asked, expected", [(True, signal.SIGKILL), (False, 0)], ids=["linux", "forced-off"]
)
def test_workers_ask_to_be_killed_with_the_pool_and_still_work_without(
    session, monkeypatch, asked, expected
):
    """Forced off, as on systems without the signal, a worker starts and works all the same."""
    monkeypatch.setattr(launcher, "PARENT_DEATH_SIGNAL", asked)
    assert session.map(parent_death_signal, range(4)) == [expected] * 4


@linux_only
@pytest.mark.parametrize(
    "parent, survives",
    [("os.getppid()", True), ("os.getppid() + 1", False)],
    ids=["parent-alive", "parent-gone-before-asking"],
)
def test_a_worker_whose_parent_died_before_it_asked_exits_at_once(tmp_path, parent, survives):
    """No signal would come: the parent it was told of is not its parent any more."""
    result = run_script(
        f"""
        import os
        from nbparallel.backends.launcher import die_with_parent
        die_with_parent({parent})
        print("still running")
        """,
        tmp_path,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert (result.stdout == "still running\n") == survives


def test_a_worker_that_never_says_it_is_ready_is_stopped_with_an_error_saying_so(tmp_path):
    """A worker stuck before its first word (here, a sitecustomize that hangs in workers only)
    fails the call after the start-up deadline instead of hanging it."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import os, time\nif os.environ.get('NBPARALLEL_WORKER') == '1':\n    time.sleep(120)\n"
    )
    script = tmp_path / "script.py"
    script.write_text(
        "from nbparallel import parallel, WorkerDiedError\n"
        "from nbparallel.backends import dispatcher\n"
        "dispatcher.READY_SECONDS = 1.0\n"
        "parallel.configure(progress=False, workers=1)\n"
        "try:\n"
        "    parallel.map(abs, [1])\n"
        "except WorkerDiedError as error:\n"
        "    print('refused:', error)\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(hooks), str(Path(__file__).parent.parent)]),
    }
    out = tmp_path / "out.txt"
    with out.open("w") as stdout:
        subprocess.run(
            [sys.executable, str(script)],
            stdout=stdout,
            stderr=subprocess.STDOUT,
            timeout=60,
            env=env,
            check=False,
        )
    assert "did not say it was ready within 1 s" in out.read_text(), out.read_text()
