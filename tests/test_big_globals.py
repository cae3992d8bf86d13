"""A big notebook global (a NumPy array) read by a function mapped again and again: every change
is seen, and an unchanged array is neither copied again nor read again by the workers."""

from __future__ import annotations

import os

import pytest

from nbparallel import keptpages, serialize, transport

from .conftest import counting_shared_files, shared_files, wait_until

numpy = pytest.importorskip("numpy")

pytestmark = pytest.mark.skipif(
    not transport.SHARES_FILES, reason="no shared files here (NBPARALLEL_NO_SHARED_FILES=1)"
)

SIZE = 2_000_000  # 16 MB of float64: above the size shared through shared memory
GRID = numpy.zeros(SIZE)  # the notebook's global, as a cell would assign it


def cell_functions():
    """Functions as a notebook cell defines them: sent by value, reading GRID as a global."""

    def part_sum(part):
        return float(GRID[part * SIZE // 4 : (part + 1) * SIZE // 4].sum())

    def same_array_as_before(_):
        """Its pid and which array object GRID is in this worker (kept alive there, so that an
        id is never that of another array freed meanwhile)."""
        import builtins

        builtins.__dict__.setdefault("kept_by_test", []).append(GRID)
        return os.getpid(), id(GRID)

    return part_sum, same_array_as_before


def _changes():
    """Ways a cell changes what GRID is between two calls, each a function of the array."""

    def one_element_in_place(grid):
        grid[SIZE - 1] = 7.0
        return grid

    def rebound(grid):
        return grid + 1.0

    def same_bytes_other_dtype(grid):
        grid[3] = 1.0
        return grid.view(numpy.int64)  # the same bytes read as integers

    def same_bytes_other_shape(grid):
        return grid.reshape(4, SIZE // 4)  # GRID[part...] then takes rows, not elements

    def a_view_whose_base_changes(grid):
        view = grid[SIZE // 8 :]
        grid[-1] = 5.0  # through the base, after the view is made
        return view

    return [
        one_element_in_place,
        rebound,
        same_bytes_other_dtype,
        same_bytes_other_shape,
        a_view_whose_base_changes,
    ]


@pytest.mark.parametrize("change", _changes(), ids=lambda change: change.__name__)
def test_a_change_to_a_global_array_is_seen_by_the_next_call(session, change):
    """Whatever changed between two calls, in place or by rebinding, the workers see the array
    the notebook has now: each result is what the function gives in the notebook."""
    global GRID
    part_sum, _ = cell_functions()
    GRID = numpy.arange(SIZE, dtype=numpy.float64)
    assert session.map(part_sum, range(4), chunksize=1) == [part_sum(p) for p in range(4)]

    GRID = change(GRID)

    expected = [part_sum(p) for p in range(4)]
    assert session.map(part_sum, range(4), chunksize=1) == expected


def test_a_change_inside_an_object_array_is_seen_by_the_next_call(session):
    """An array of objects holds references: a list it holds, changed in place, is seen (such an
    array is pickled again on every call, never taken as unchanged from its buffer)."""
    global GRID
    GRID = numpy.empty(200_000, dtype=object)  # 1.6 MB of references
    GRID[:] = [[n] for n in range(200_000)]

    def last_of(index):
        return GRID[index][-1]

    assert session.map(last_of, [0, 199_999]) == [0, 199_999]
    GRID[199_999].append(-1)  # the array's own bytes (its pointers) are unchanged
    assert session.map(last_of, [0, 199_999]) == [0, -1]


def test_an_unchanged_global_array_is_not_copied_or_read_again(session, monkeypatch):
    """Calls over the same array copy it into shared memory once, and each worker keeps the one
    array it read for every later call (where it was copied, and read, on every call)."""
    global GRID
    _, same_array_as_before = cell_functions()
    GRID = numpy.ones(SIZE)
    created = counting_shared_files(monkeypatch)

    seen: dict[int, set[int]] = {}
    for _ in range(4):
        for pid, array in session.map(same_array_as_before, range(8), chunksize=1):
            seen.setdefault(pid, set()).add(array)

    assert len(created) == 1
    assert all(len(arrays) == 1 for arrays in seen.values()), seen


def test_another_function_over_the_same_unchanged_array_shares_the_same_copy(session, monkeypatch):
    """Two functions reading one global array, called in turn: the array is copied once."""
    global GRID
    part_sum, same_array_as_before = cell_functions()
    GRID = numpy.ones(SIZE)
    created = counting_shared_files(monkeypatch)

    for _ in range(3):
        assert session.map(part_sum, range(4)) == [SIZE / 4] * 4
        assert len(session.map(same_array_as_before, range(4))) == 4

    assert len(created) == 1


def mapped_shared_kb(pid: int | str = "self") -> int:
    """How much shared memory process `pid` has mapped (Linux: RssShmem), in kB."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssShmem:"))


def array_readers():
    """Cell functions reporting how much shared memory their worker had mapped when they began:
    one reading GRID whole, one reading nothing."""

    def grid_sum(_):
        mapped = mapped_shared_kb()
        return mapped, float(GRID.sum())

    def no_grid(_):
        return mapped_shared_kb()

    return grid_sum, no_grid


needs_page_scan = pytest.mark.skipif(
    not keptpages.can_tell(), reason="the kernel cannot tell whether a task wrote to a mapping"
)


@needs_page_scan
def test_a_worker_keeps_an_unchanged_arrays_pages_for_the_next_task_of_the_same_function(session):
    """Tasks of one function over an unchanged array, back to back, find the pages the previous
    task read still mapped (where each task used to map them again); a task of another function
    finds them given back, and so does a worker left idle."""
    global GRID
    session.configure(workers=1)
    grid_sum, no_grid = array_readers()
    GRID = numpy.ones(SIZE)
    array_kb = GRID.nbytes // 1024

    first, *later = session.map(grid_sum, range(4), chunksize=1)
    later += session.map(grid_sum, range(4), chunksize=1)

    assert first[0] < array_kb // 2
    assert [mapped >= array_kb for mapped, _ in later] == [True] * len(later), later
    assert all(total == SIZE for _, total in [first, *later])
    assert all(mapped < array_kb // 2 for mapped in session.map(no_grid, range(2)))

    session.map(grid_sum, range(2))
    (worker,) = session.status().workers
    wait_until(lambda: mapped_shared_kb(worker.pid) < array_kb // 2)


@needs_page_scan
def test_a_task_that_writes_to_a_captured_array_leaves_the_next_one_the_notebooks_array(session):
    """A worker's copy of a captured array is its own to change, but only for the task: the next
    task of the same function, in the same worker, sees the array as the notebook sent it,
    whether the change was to a page the task had read or to one it had not."""
    global GRID
    session.configure(workers=1)
    GRID = numpy.arange(SIZE, dtype=numpy.float64)
    middle = SIZE // 2

    def read_then_write(item):
        seen = float(GRID[0]), float(GRID[middle])
        if item == 0:
            GRID[0] = -1.0  # a page this task read
        elif item == 1:
            GRID[-1] = -1.0  # a page no task read
        return seen, float(GRID[-1])

    expected = (0.0, float(middle))
    results = session.map(read_then_write, range(4), chunksize=1)
    assert results[0] == (expected, SIZE - 1.0)
    assert [seen for seen, _ in results] == [expected] * 4
    assert [last for _, last in results[2:]] == [SIZE - 1.0] * 2


@needs_page_scan
def test_a_write_by_another_functions_task_is_not_seen_by_the_next_task_either(session):
    """A task of another function that reaches a worker's copy of the array (an earlier task
    kept it in the worker's builtins) and writes to it: the array's own function, run again in
    that worker, still sees the array as the notebook sent it."""
    global GRID
    session.configure(workers=1)
    GRID = numpy.zeros(SIZE)

    def keep_and_read(_):
        import builtins

        builtins.__dict__["kept_by_test"] = GRID
        return float(GRID[0])

    def write_kept(_):
        import builtins

        builtins.__dict__.pop("kept_by_test")[0] = 5.0
        return True

    assert session.map(keep_and_read, range(2)) == [0.0, 0.0]
    assert session.map(write_kept, range(1)) == [True]
    assert session.map(keep_and_read, range(1)) == [0.0]


def test_a_global_array_changed_twenty_times_leaves_only_its_newest_copy(session):
    """Each call after a change makes a new shared copy, and the ones it supersedes are released:
    the notebook keeps only the newest, and each worker only the one of its last task (a worker
    that got no task in a call keeps its older copy until its next), so copies never pile up
    over 20 calls: at most one per worker plus the notebook's."""
    global GRID
    part_sum, _ = cell_functions()
    GRID = numpy.zeros(SIZE)
    for n in range(1, 21):
        GRID[n] = 1.0
        assert sum(session.map(part_sum, range(4), chunksize=1)) == n
        workers = session.status().workers
        held = set().union(
            *shared_files(os.getpid()), *(set().union(*shared_files(w.pid)) for w in workers)
        )
        assert len(held) <= len(workers) + 1, f"call {n}: {len(held)} shared copies held"


def test_without_a_fast_hash_each_call_copies_the_array_again(session, monkeypatch):
    """Where xxhash is not installed the standard library's hashes would cost more than the copy:
    the array is then copied on every call, and every change is still seen."""
    monkeypatch.setattr(serialize, "_fast_hash", lambda: None)
    global GRID
    part_sum, _ = cell_functions()
    GRID = numpy.ones(SIZE)
    created = counting_shared_files(monkeypatch)

    assert session.map(part_sum, range(4)) == [SIZE / 4] * 4
    assert session.map(part_sum, range(4)) == [SIZE / 4] * 4
    GRID[0] = 5.0
    assert session.map(part_sum, range(4)) == [SIZE / 4 + 4, *[SIZE / 4] * 3]
    assert len(created) == 3
