"""The chunking policy on its own (no processes): sizes from counts, time, and bytes in flight."""

from __future__ import annotations

import pytest

from nbparallel.chunking import BYTES_IN_FLIGHT, ChunkSizer, chunks

MB = 2**20


def test_few_items_go_one_chunk_per_worker():
    sizer = ChunkSizer(total=10, workers=2, fixed=None)
    assert sizer.size == 5 and sizer.window == 4


def test_many_items_go_four_chunks_per_worker_once_the_first_chunk_said_its_size():
    sizer = ChunkSizer(total=200_000, workers=2, fixed=None)
    assert sizer.size == 8  # until a chunk came back, results might be large
    sizer.observe(8, 0.0001, 8 * 20)
    assert sizer.size == 25_000


def test_large_results_shrink_chunks_and_window_to_the_byte_budget():
    """1,000 results of 4 MB: what the call holds in flight stays within the budget."""
    sizer = ChunkSizer(total=1000, workers=2, fixed=None)
    sizer.observe(8, 0.01, 8 * 4 * MB)
    assert sizer.size * sizer.window * 4 * MB <= BYTES_IN_FLIGHT
    assert sizer.size >= 1 and sizer.window >= 2


def test_results_larger_than_the_budget_go_one_at_a_time_one_per_worker():
    sizer = ChunkSizer(total=1000, workers=3, fixed=None)
    sizer.observe(1, 1.0, 2 * BYTES_IN_FLIGHT)
    assert (sizer.size, sizer.window) == (1, 3)


def test_a_fixed_chunksize_is_kept_whatever_the_bytes():
    sizer = ChunkSizer(total=1000, workers=2, fixed=50)
    sizer.observe(50, 0.01, 50 * 100 * MB)
    assert (sizer.size, sizer.window) == (50, 4)


@pytest.mark.parametrize("seconds, grows", [(0.001, True), (1.0, False)])
def test_unknown_length_grows_chunks_only_while_they_finish_fast(seconds, grows):
    sizer = ChunkSizer(total=None, workers=2, fixed=None)
    for _ in range(3):
        sizer.observe(sizer.size, seconds, 0)
    assert sizer.size == (8 if grows else 1)


@pytest.mark.parametrize("kind", [list, range, iter], ids=["list", "range", "iterator"])
def test_chunks_cover_every_item_once_in_order(kind):
    sizer = ChunkSizer(total=None, workers=1, fixed=7)
    pieces = list(chunks(kind(range(30)) if kind is not range else range(30), sizer))
    assert [position for position, _ in pieces] == [0, 7, 14, 21, 28]
    assert [item for _, piece in pieces for item in piece] == list(range(30))
