"""How a call's items are cut into chunks, and how many chunks it keeps in flight: a pure policy.

A chunk should keep a worker busy for about `TARGET_CHUNK_SECONDS`: long enough that sending it
costs little, short enough that progress moves and the last chunks finish together. The call
holds a window of chunks (sent, or finished and not yet handed to the caller); what those take
in bytes (items and results, serialized) stays within `BYTES_IN_FLIGHT`, so `imap` over large
results holds a fixed budget, not hundreds of them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast

TARGET_CHUNK_SECONDS = 0.05
BYTES_IN_FLIGHT = 128 * 2**20
WINDOW_PER_WORKER = 2  # enough to keep every worker fed; an endless input is never read far ahead
_CHUNKS_PER_WORKER = 4
_FEW_ITEMS = 32
_MAX_GROWTH = 4096
# Items per chunk until one has come back and said how many bytes an item takes: the first
# chunks of a call over 4 MB results hold 8 of them, not hundreds.
_UNTIL_MEASURED = 8


class ChunkSizer:
    """Chooses chunk sizes and the window: from the item count when it is known, else from
    measured task time; either way no larger than the byte budget allows."""

    def __init__(self, total: int | None, workers: int, fixed: int | None) -> None:
        self._workers = workers
        self._fixed = fixed is not None
        self._bytes_per_item = 0.0
        self._measured = False
        if fixed is not None:
            self._size = fixed
            self._adaptive = False
        elif total is not None:
            # A few items: one chunk per worker, one round trip. Many: several chunks per worker,
            # so that uneven tasks still finish together.
            per_worker = 1 if total <= _FEW_ITEMS else _CHUNKS_PER_WORKER
            self._size = max(1, math.ceil(total / (workers * per_worker)))
            self._adaptive = False
            self._measured = total <= _FEW_ITEMS  # few results: the call holds them all anyway
        else:
            self._size = 1
            self._adaptive = True

    @property
    def window(self) -> int:
        """How many chunks the call may hold at once (at least one per worker)."""
        full = self._workers * WINDOW_PER_WORKER
        if self._fixed or not self._bytes_per_item:
            return full
        return max(self._workers, min(full, int(BYTES_IN_FLIGHT // self._bytes_per_item)))

    @property
    def size(self) -> int:
        """Items in the next chunk."""
        if self._fixed:
            return self._size
        if not self._measured:
            return min(self._size, _UNTIL_MEASURED)
        if self._bytes_per_item:
            fits = int(BYTES_IN_FLIGHT // (self.window * self._bytes_per_item))
            return max(1, min(self._size, fits))
        return self._size

    def observe(self, items: int, seconds: float, nbytes: int) -> None:
        """A chunk of `items` took `seconds` and `nbytes` (items and results, serialized)."""
        if items <= 0:
            return
        self._measured = True
        self._bytes_per_item = max(self._bytes_per_item, nbytes / items)
        if self._adaptive and items >= self._size and seconds < TARGET_CHUNK_SECONDS / 2:
            self._size = min(self._size * 2, _MAX_GROWTH)


def length_hint(items: Iterable[Any]) -> int | None:
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None


def may_have_items(items: object) -> bool:
    """False for what `iter` refuses and for input of length 0, judged without reading it."""
    kind = type(items)
    if not hasattr(kind, "__iter__") and not hasattr(kind, "__getitem__"):
        return False
    return length_hint(items) != 0  # type: ignore[arg-type]


_SLICED = (list, tuple, range)
"""Inputs chunked by slicing: faster than reading them item by item, and a slice of a range is
a range (three numbers to send, not a list of them)."""


def chunks(items: Iterable[Any], sizer: ChunkSizer) -> Iterator[tuple[int, Sequence[Any]]]:
    """(position of the first item, items) pairs, read lazily from `items`."""
    if type(items) in _SLICED:
        sequence = cast(Sequence[Any], items)
        position = 0
        while position < len(sequence):
            chunk = sequence[position : position + sizer.size]
            yield position, chunk
            position += len(chunk)
        return
    iterator = iter(items)
    position = 0
    while True:
        chunk = list(itertools.islice(iterator, sizer.size))
        if not chunk:
            return
        yield position, chunk
        position += len(chunk)
