"""What a user sees when something goes wrong: their own exception, the item, a usable pool."""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import sys
import threading
import traceback
import types

import pytest

from nbparallel import (
    RemoteTraceback,
    ResultError,
    UnsendableError,
    WorkerDiedError,
    parallel,
)

from .conftest import wait_until

pytestmark = pytest.mark.usefixtures("quiet_progress")


def fails_on_seven(x):
    if x == 7:
        raise KeyError(f"no such key: {x}")
    return x


def test_exception_keeps_its_type_with_remote_traceback_and_item():
    with pytest.raises(KeyError) as info:
        parallel.map(fails_on_seven, range(20))
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "fails_on_seven" in cause.text and 'raise KeyError(f"no such key: {x}")' in cause.text
    assert any("item 7: 7" in note for note in getattr(info.value, "__notes__", []))
    assert parallel.map(fails_on_seven, range(5)) == list(range(5))  # the pool is still usable


@pytest.mark.parametrize("backend", ["processes", "threads"])
def test_the_printed_traceback_names_the_failing_item_and_worker_on_every_python(backend):
    """What the user sees printed (exception notes on 3.11+, the cause's text on 3.10, which has
    no notes) names the item and the worker's pid."""
    with pytest.raises(KeyError) as info:
        parallel.map(fails_on_seven, range(20), backend=backend)
    shown = "".join(traceback.format_exception(info.type, info.value, info.tb))
    assert re.search(r"raised in worker pid \d+ on item 7: 7", shown)
    assert 'raise KeyError(f"no such key: {x}")' in shown


def test_error_cancels_the_rest_of_the_call(tmp_path):
    """Once item 0 has failed the call, only the items running at that moment (one per worker)
    finish; those queued are dropped, in the pool or in the workers. The other items wait for
    the test's go before they do anything, so the failure comes first whatever the machine."""
    go = tmp_path / "go"
    ran = tmp_path / "ran"
    ran.mkdir()

    def mark(x):
        if x == 0:
            raise ValueError("first item fails")
        wait_until(go.exists, timeout=30)
        (ran / str(x)).touch()

    try:
        with pytest.raises(ValueError, match="first item fails"):
            parallel.map(mark, range(200), chunksize=1)
    finally:
        go.touch()
    wait_until(lambda: not any(w.busy for w in parallel.status().workers))
    assert len(list(ran.iterdir())) <= parallel.options.worker_count


class NeedsTwoArgs(Exception):
    def __init__(self, a, b):
        super().__init__(a)  # pickles with one argument: cannot be rebuilt
        self.b = b


def raise_needs_two_args(x):
    raise NeedsTwoArgs(x, "b")


def test_exception_that_cannot_be_rebuilt_is_reported_with_its_traceback():
    with pytest.raises(ResultError, match="NeedsTwoArgs") as info:
        parallel.map(raise_needs_two_args, [1])
    assert "raise NeedsTwoArgs" in info.value.__cause__.text


def test_result_that_cannot_be_sent_names_the_item():
    with pytest.raises(ResultError, match=r"item 3 \(3\) but its result cannot be sent back"):
        parallel.map(lambda x: threading.Lock() if x == 3 else x, range(5), chunksize=5)


def test_item_that_cannot_be_sent_is_named_before_work_starts(session):
    with pytest.raises(UnsendableError, match=r"cannot send item 2 \(<unlocked _thread.lock"):
        session.map(lambda x: x, [1, 2, threading.Lock()], chunksize=3)
    assert all(worker.tasks_done == 0 for worker in session.status().workers)  # none was sent


def test_worker_death_names_pid_exit_code_and_item_and_pool_recovers():
    before = {w.pid for w in parallel.status().workers}

    def die(x):
        if x == 3:
            os._exit(17)
        return x

    with pytest.raises(WorkerDiedError, match=r"exited with code 17 while running item 3 \(3\)"):
        parallel.map(die, range(6), chunksize=1)
    assert parallel.map(lambda x: x, range(6)) == list(range(6))
    wait_until(lambda: len(parallel.status().workers) == parallel.options.worker_count)
    assert {w.pid for w in parallel.status().workers} != before


def test_missing_module_in_worker_is_named():
    ghost = types.ModuleType("ghost_module_only_in_parent")
    exec("def double(x):\n    return 2 * x", ghost.__dict__)
    sys.modules[ghost.__name__] = ghost
    try:
        with pytest.raises(
            ModuleNotFoundError, match="cannot import 'ghost_module_only_in_parent'"
        ):
            parallel.map(ghost.double, [1, 2])
    finally:
        del sys.modules[ghost.__name__]


@pytest.mark.parametrize(
    "make, kind",
    [
        (threading.Lock, "_thread.lock"),
        (lambda: open(os.devnull, "w"), "TextIOWrapper"),
        (socket.socket, "socket.socket"),
        (lambda: sqlite3.connect(":memory:"), "sqlite3.Connection"),
        (lambda: (n for n in range(3)), "generator"),
    ],
    ids=["lock", "file", "socket", "sqlite", "generator"],
)
def test_unsendable_capture_fails_before_any_work_and_names_the_variable(make, kind, session):
    resource = make()
    try:

        def use_resource(x):
            return (resource, x)

        with pytest.raises(
            UnsendableError,
            match=rf"cannot send '.*use_resource' .* captures 'resource' \(.*{kind}",
        ):
            session.map(use_resource, range(3))
        # The call launched its workers before serializing (so that they boot meanwhile), and
        # sent them nothing.
        assert all(worker.tasks_done == 0 for worker in session.status().workers)
    finally:
        if hasattr(resource, "close"):
            resource.close()


def test_unsendable_capture_is_found_through_helpers_and_containers():
    config = {"db": sqlite3.connect(":memory:")}

    def query(x):
        return config["db"], x

    def task(x):
        return query(x)

    with pytest.raises(
        UnsendableError, match=r"captures \"query -> config\['db'\]\" \(sqlite3.Connection\)"
    ):
        parallel.map(task, [1])
    config["db"].close()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: parallel.map(42, [1]), "needs a function"),
        (lambda: parallel.map(abs, 42), "needs an iterable"),
        (lambda: parallel.map(abs, [1], workers=0), "workers=0 is not valid"),
        (lambda: parallel.map(abs, [1], chunksize=-1), "chunksize=-1 is not valid"),
        (lambda: parallel.map(abs, [1], progress="yes"), "progress='yes' is not valid"),
        (lambda: parallel.map(abs, [1], wrokers=2), "unknown option 'wrokers'"),
        (lambda: parallel.configure(workers=2.5), "workers=2.5 is not valid"),
    ],
    ids=[
        "not-callable",
        "not-iterable",
        "workers",
        "chunksize",
        "progress",
        "unknown",
        "configure",
    ],
)
def test_bad_input_gets_a_clear_error(call, message):
    with pytest.raises((TypeError, ValueError), match=message):
        call()
