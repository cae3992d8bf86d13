"""parallel.map and friends, in this process: order, streaming, reuse, decorator forms."""

from __future__ import annotations

import inspect
import itertools
import os
import subprocess
import sys

import psutil
import pytest

from nbparallel import crossmemory, parallel, transport

from .conftest import counting_shared_files, shared_files, wait_until

pytestmark = pytest.mark.usefixtures("quiet_progress")


def test_map_returns_results_in_input_order():
    assert parallel.map(lambda x: x * x, range(1000)) == [x * x for x in range(1000)]


def test_empty_input_returns_empty_list_without_starting_workers(session):
    assert session.map(lambda x: x, []) == []
    assert session.status().workers == []


def test_workers_are_reused_across_calls():
    """100 calls run on the same worker processes: the pool starts once."""
    pids = set()
    for _ in range(100):
        pids.update(parallel.map(lambda _: os.getpid(), range(4), chunksize=1))
    assert pids <= {w.pid for w in parallel.status().workers}
    assert os.getpid() not in pids


def test_decorator_keeps_name_docstring_signature_and_plain_function():
    @parallel.map
    def score(row: int, scale: int = 2) -> int:
        """Score one row."""
        return row * scale

    assert score.__name__ == "score"
    assert score.__doc__ == "Score one row."
    assert inspect.signature(score) == inspect.signature(score.func)
    assert list(inspect.signature(score).parameters) == ["row", "scale"]
    assert score.func(3) == 6
    assert score(range(5)) == [0, 2, 4, 6, 8]


def test_decorator_with_options_applies_them():
    @parallel.map(workers=1, chunksize=64, progress=False)
    def where(_):
        return os.getpid()

    assert len(set(where(range(200)))) == 1


def test_chunksize_keeps_items_together():
    """With chunksize equal to the item count, one worker runs every item."""
    assert len(set(parallel.map(lambda _: os.getpid(), range(50), chunksize=50))) == 1


@pytest.mark.parametrize(
    "kind", [list, tuple, range, iter], ids=["list", "tuple", "range", "iterator"]
)
def test_every_kind_of_input_gives_the_same_results_and_error_positions(kind, session):
    """Lists, tuples and ranges are chunked by slicing, other iterables read item by item: the
    results, and the position an error names, are the same."""
    items = range(1000) if kind is range else kind(range(1000))
    assert session.map(lambda x: x * 2, items, chunksize=7) == [x * 2 for x in range(1000)]

    def fails_at_500(x):
        if x == 500:
            raise ValueError("bad")
        return x

    items = range(1000) if kind is range else kind(range(1000))
    with pytest.raises(ValueError) as info:
        session.map(fails_at_500, items, chunksize=7)
    assert any("item 500: 500" in note for note in info.value.__notes__)


def test_imap_yields_in_order_and_reads_input_lazily():
    pulled = []

    def endless():
        for n in itertools.count():
            pulled.append(n)
            yield n

    results = parallel.imap(lambda x: x + 1, endless(), chunksize=1)
    assert list(itertools.islice(results, 10)) == list(range(1, 11))
    results.close()
    # The window is two chunks per worker: the input is never read far ahead of the results.
    assert len(pulled) <= 10 + 2 * parallel.options.worker_count + 1


def test_imap_unordered_yields_results_as_they_finish_not_in_input_order(session, tmp_path):
    """Item 0 cannot finish until the caller has received the five after it, so an iterator that
    kept input order could not go on. Two workers: with one, finishing order is input order."""
    release = tmp_path / "release"

    def held_until_released(x):
        if x == 0:
            wait_until(release.exists, timeout=30)
        return x

    results = session.imap_unordered(held_until_released, range(6), chunksize=1, workers=2)
    try:
        first_five = [next(results) for _ in range(5)]
    finally:
        release.touch()
    assert sorted(first_five) == [1, 2, 3, 4, 5]
    assert list(results) == [0]


def test_starmap_unpacks_argument_tuples():
    assert parallel.starmap(lambda a, b: a - b, [(5, 1), (7, 2)]) == [4, 5]


def test_starmap_rejects_items_that_are_not_tuples():
    with pytest.raises(TypeError, match="item 1 is int"):
        parallel.starmap(lambda a, b: a, [(1, 2), 3])


def test_submit_returns_a_future():
    future = parallel.submit(lambda a, b=0: a**2 + b, 7, b=1)
    assert future.result(timeout=30) == 50


def test_submit_future_carries_the_exception():
    future = parallel.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        future.result(timeout=30)


def test_print_inside_a_task_reaches_the_callers_stdout(capsys):
    parallel.map(lambda x: print(f"line {x}"), range(3), chunksize=1, workers=1)
    assert capsys.readouterr().out.splitlines() == ["line 0", "line 1", "line 2"]


def test_progress_bar_by_default_shows_total(capsys):
    parallel.map(lambda x: x, range(10), progress=True)
    assert "10/10" in capsys.readouterr().err


def test_nested_map_in_a_task_runs_serially_in_that_worker():
    def outer(x):
        from nbparallel import parallel as inner

        return inner.map(lambda y: (y, os.getpid()), range(x))

    for result in parallel.map(outer, [2, 3]):
        assert len({pid for _, pid in result}) == 1


def test_configure_sets_session_workers(session):
    session.configure(workers=1)
    assert len(set(session.map(lambda _: os.getpid(), range(20), chunksize=1))) == 1
    assert len(session.status().workers) == 1
    session.configure(workers=2)
    wait_until(lambda: len(session.status().workers) == 2)


def test_shutdown_stops_workers_and_next_call_starts_fresh(session):
    first = set(session.map(lambda _: os.getpid(), range(4), chunksize=1))
    session.shutdown()
    assert session.status().workers == []
    assert not any(
        psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        for pid in first
    )
    second = set(session.map(lambda _: os.getpid(), range(4), chunksize=1))
    assert first.isdisjoint(second)


def test_large_arrays_travel_out_of_band_and_come_back_writable():
    """NumPy buffers go as frames of their own (pickle protocol 5), both ways, and the arrays
    the caller gets are ordinary writable arrays."""
    numpy = pytest.importorskip("numpy")
    parts = [numpy.arange(n, dtype=float) for n in (3, 200_000, 1_000_000)]
    doubled = parallel.map(lambda a: a * 2, parts, chunksize=2)
    for part, result in zip(parts, doubled, strict=True):
        assert numpy.array_equal(result, part * 2)
    doubled[1][0] = -1.0  # writable: not a view of a read-only message
    assert doubled[1][0] == -1.0


@pytest.mark.skipif(
    not hasattr(os, "memfd_create"), reason="shared files are anonymous (memfd) on Linux only"
)
def test_big_arrays_go_through_shared_memory_copy_on_write_and_nothing_stays_behind(session):
    """Arrays above the sharing threshold, as items, results and captured globals, arrive
    correct; a worker changing its copy changes nothing in the notebook; and once calls are
    done no shared file is left, in the notebook or in the workers, bar the newest function's
    (kept by both, for a repeat call)."""
    numpy = pytest.importorskip("numpy")
    blocks = [numpy.full(3_000_000, float(n)) for n in range(4)]  # 24 MB each: shared, not sent

    def scribble(block):
        block[0] = -1.0  # the worker's copy only
        return block.sum()

    sums = session.map(scribble, blocks, chunksize=1)
    assert sums == [n * 3_000_000 - n - 1.0 for n in range(4)]
    assert all(block[0] == n for n, block in enumerate(blocks))

    copies = session.map(lambda n: numpy.full(2_000_000, n, dtype=numpy.int64), range(3))
    assert [int(c[-1]) for c in copies] == [0, 1, 2]
    copies[1][0] = 7  # the caller's results are writable
    assert shared_files(os.getpid())[0] == set()  # kept results hold no file descriptor each

    for value in (1.0, 2.0, 3.0):
        grid = numpy.full(4_000_000, value)  # a captured global of 32 MB, new each time
        assert session.map(lambda i: grid[i], [0, 3_999_999]) == [value, value]  # noqa: B023

    del copies
    opened, mapped = shared_files(os.getpid())
    assert mapped == set() and len(opened) <= 1  # the newest big function's
    for worker in session.status().workers:
        held = set.union(*shared_files(worker.pid))
        # That same file, or nothing; or, for a worker that got no task in the last call (both
        # of its items may go to the other one), the previous call's: it lets it go at its next.
        assert held <= opened or len(held) <= 1


@pytest.mark.skipif(
    not transport.SHARES_FILES, reason="no shared files here (NBPARALLEL_NO_SHARED_FILES=1)"
)
@pytest.mark.skipif(
    not hasattr(os, "memfd_create"), reason="shared files are anonymous (memfd) on Linux only"
)
def test_a_worker_gives_back_the_pages_of_a_captured_array_once_idle(session):
    """Reading all of a 64 MB captured array over a call leaves no worker holding it once the
    workers are idle (they keep the pages while tasks of the function follow)."""
    numpy = pytest.importorskip("numpy")
    session.configure(workers=2)
    small = numpy.ones(10)
    session.map(lambda i: small[i:].sum(), [1, 2], chunksize=1)  # NumPy imported in both workers
    before = {w.pid: w.memory_rss for w in session.status().workers}
    grid = numpy.ones(8_000_000)  # 64 MB; each task reads an eighth

    sums = session.map(
        lambda i: grid[i * 1_000_000 : (i + 1) * 1_000_000].sum(), range(8), chunksize=1
    )
    assert sums == [1_000_000.0] * 8

    def given_back():
        grown = {w.pid: w.memory_rss - before[w.pid] for w in session.status().workers}
        return all(growth < 16 * 2**20 for growth in grown.values())  # kept: 32 MB or more

    wait_until(given_back)


STEP = 1
TABLE = [1, 2, 3]


def test_repeated_calls_always_see_the_current_values_of_what_the_function_uses():
    """Serialization is skipped for an unchanged function over unchanged immutable values, and
    never otherwise: a rebound global or a list mutated in place is seen by the next call."""
    global STEP

    def stepped(x):  # captures only an int: its payload may be reused while STEP is unchanged
        return x + STEP

    def shifted(x):  # captures a list: serialized again on every call
        return x + STEP + sum(TABLE)

    assert parallel.map(stepped, [0, 1]) == parallel.map(stepped, [0, 1]) == [1, 2]
    assert parallel.map(shifted, [0]) == parallel.map(shifted, [0]) == [7]
    STEP = 100
    assert parallel.map(stepped, [0, 1]) == [100, 101]
    assert parallel.map(shifted, [0]) == [106]
    TABLE.append(1000)
    assert parallel.map(shifted, [0]) == [1106]
    STEP = 1
    TABLE[:] = [1, 2, 3]


def test_a_module_of_the_users_own_is_imported_by_name_in_workers(session, tmp_path, monkeypatch):
    """A helpers.py beside the notebook (or an editable install) is imported by the workers, not
    copied: dill alone would copy its whole dict, here a thread-local that cannot be pickled."""
    (tmp_path / "nbp_helpers.py").write_text(
        "import threading\n_state = threading.local()\nSCALE = 3\n\ndef scale(x):\n    return x * SCALE\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # before the session's workers start: they get it
    monkeypatch.delitem(sys.modules, "nbp_helpers", raising=False)
    import nbp_helpers

    assert session.map(lambda x: nbp_helpers.scale(x), [1, 2]) == [3, 6]
    monkeypatch.delitem(sys.modules, "nbp_helpers")


@pytest.mark.skipif(
    not crossmemory.allow_children_to_read(),
    reason="workers cannot read this process's memory here",
)
def test_big_items_are_copied_by_their_worker_straight_from_the_notebooks_memory(
    session, monkeypatch
):
    """Large items are neither copied here nor put in shared memory: the worker that runs them
    copies them out of this process, and frees them when its task ends."""
    numpy = pytest.importorskip("numpy")
    session.configure(workers=2)
    session.map(
        lambda n: numpy.ones(n).sum(), [1, 2], chunksize=1
    )  # NumPy imported in both workers
    before = {w.pid: w.memory_rss for w in session.status().workers}
    created = counting_shared_files(monkeypatch)
    blocks = [numpy.full(3_000_000, float(n)) for n in range(6)]  # 24 MB each

    assert session.map(lambda b: b.sum(), blocks, chunksize=1) == [
        n * 3_000_000.0 for n in range(6)
    ]
    assert created == []
    grown = {w.pid: w.memory_rss - before[w.pid] for w in session.status().workers}
    assert all(growth < 12 * 2**20 for growth in grown.values()), grown  # an item kept: 24 MB


@pytest.mark.skipif(
    not transport.SHARES_FILES, reason="no shared files here (NBPARALLEL_NO_SHARED_FILES=1)"
)
@pytest.mark.skipif(
    not crossmemory.allow_children_to_read(),
    reason="workers cannot read this process's memory here",
)
def test_a_worker_refused_reading_the_notebooks_memory_gets_big_items_through_shared_memory(
    session, monkeypatch
):
    """Where the kernel forbids a worker to read the notebook's memory (an AppArmor rule, say),
    the pool shares the items instead, for this call and the next: slower, never broken."""
    numpy = pytest.importorskip("numpy")
    session.run_on_every_worker(
        "import errno\n"
        "from nbparallel import crossmemory\n"
        "def refuse(pid, address, size):\n"
        "    raise PermissionError(errno.EPERM, 'Operation not permitted')\n"
        "crossmemory.read = refuse\n"
    )
    created = counting_shared_files(monkeypatch)
    blocks = [numpy.full(2_000_000, float(n)) for n in range(4)]  # 16 MB each

    assert session.map(lambda b: b.sum(), blocks, chunksize=1) == [
        n * 2_000_000.0 for n in range(4)
    ]
    assert len(created) == 4
    assert session.map(lambda b: b[-1], blocks, chunksize=1) == [0.0, 1.0, 2.0, 3.0]
    assert len(created) == 8


@pytest.fixture
def yama_scope(tmp_path, monkeypatch):
    """Sets the Yama ptrace_scope that crossmemory reads (the real one needs root to change)."""

    def set_scope(scope: str) -> None:
        path = tmp_path / "ptrace_scope"
        path.write_text(scope + "\n")
        monkeypatch.setattr(crossmemory, "YAMA_SCOPE", str(path))
        crossmemory.allow_children_to_read.cache_clear()

    yield set_scope
    crossmemory.allow_children_to_read.cache_clear()  # the next caller reads the real scope again


@pytest.mark.skipif(
    not crossmemory.allow_children_to_read(),
    reason="workers cannot read this process's memory here",
)
@pytest.mark.parametrize("scope", ["0", "1", "2", "3"])
def test_workers_read_the_notebooks_memory_only_where_yama_lets_them(yama_scope, scope):
    """Scope 0: they may. Scope 1 (Ubuntu): once the pool has named itself the process whose
    descendants may read it, which only a kernel with Yama accepts. 2 and 3: never."""
    yama_scope(scope)
    has_yama = os.path.exists("/proc/sys/kernel/yama")
    expected = {"0": True, "1": has_yama, "2": False, "3": False}[scope]
    assert crossmemory.allow_children_to_read() is expected


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_reading_the_memory_of_a_process_that_is_gone_says_which_process():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with pytest.raises(
        OSError, match=f"cannot read the memory of process {gone.pid}: No such process"
    ):
        crossmemory.read(gone.pid, 4096, 16)


def test_a_read_only_big_buffer_is_never_lent():
    """Lending pins the buffer through a writable export; a read-only one is shared instead."""
    from nbparallel import transport

    (frame,) = transport.lend_large([memoryview(bytes(transport.SHARE_ABOVE + 1))])
    assert not isinstance(frame, transport.LentFrame)


def test_a_big_array_goes_through_the_socket_when_shared_memory_is_refused(session, monkeypatch):
    """No room in shared memory (say /dev/shm is full) slows a call down, never breaks it."""
    numpy = pytest.importorskip("numpy")
    from nbparallel import transport

    def refused() -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(
        crossmemory, "allow_children_to_read", lambda: False
    )  # items shared, not lent
    monkeypatch.setattr(transport, "_anonymous_file", refused)
    block = numpy.arange(2_000_000, dtype=numpy.float64)  # 16 MB: above the sharing threshold
    assert session.map(lambda b: float(b[-1]), [block]) == [1_999_999.0]
