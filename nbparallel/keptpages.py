"""The pages a worker keeps mapped of its newest large function's shared arrays between tasks,
and when it gives them back.

A worker maps the shared copy of a captured array copy-on-write and reads it page by page.
Giving those pages back after every task made every task map again what it reads (3 ms per
50 MB on a quiet machine, 15 ms on a loaded one), call after call over an unchanged array. They
are kept while tasks of the same function follow, and given back:
- when a task of another function comes, or a new version of the function arrives;
- when the worker has had no task for IDLE_SECONDS (the notebook is between cells);
- after a task that wrote to them (copy-on-write made those pages the worker's own), so that
  every task still sees the array as the notebook sent it.

Telling a task that wrote costs nothing in the common case: a page becomes the worker's own
only in a page fault, and Linux counts every fault of the process's threads (getrusage), so a
task during which the count did not move wrote nothing. After one during which it moved (it
mapped pages it had not read before, or wrote), Linux 6.7+'s PAGEMAP_SCAN says whether the
process holds a page of its own in the mappings, without reading the data (a walk of their page
tables: 5-40 ms for 400 MB mapped, as long as mapping them again, so it is not done every task).
Where it cannot tell (an older kernel), and on other systems, the pages of such a task are
given back, as they were after every task before.
"""

from __future__ import annotations

import functools
import os
import struct
import sys
from typing import Any

from . import transport

IDLE_SECONDS = 1.0
_COUNTS_FAULTS = sys.platform.startswith("linux")

# struct pm_scan_arg (linux/fs.h): size, flags, start, end, walk_end, vec, vec_len, max_pages,
# category_inverted, category_mask, category_anyof_mask, return_mask.
_SCAN_ARG = struct.Struct("12Q")
_PAGEMAP_SCAN = 0xC0000000 | _SCAN_ARG.size << 16 | ord("f") << 8 | 16  # _IOWR('f', 16, ...)
_PAGE_IS_FILE, _PAGE_IS_PRESENT, _PAGE_IS_SWAPPED = 1 << 2, 1 << 3, 1 << 4


class KeptPages:
    """The mapped frames of the function whose pages this worker keeps between its tasks."""

    def __init__(self) -> None:
        self._digest = b""
        self._frames: list[Any] = []
        self._spans: list[tuple[int, int]] = []
        self.mapped = False  # a task of the function ran since its pages were last given back
        self._faults: int | None = None  # the process's page faults when last seen clean

    def hold(self, digest: bytes, frames: list[Any]) -> None:
        """Keep the pages of a newly arrived function's frames (giving back the previous one's)."""
        self.release()
        self._digest = digest
        self._frames = transport.mapped_frames(frames)
        self._spans = [_span(frame) for frame in self._frames]

    def before_task(self, digest: bytes) -> None:
        """A task is about to run: if it is another function's, give the pages back."""
        if digest != self._digest:
            self.release()
        elif self._frames:
            self.mapped = True

    def after_task(self, keep: bool = True) -> None:
        """A task has run (of any function: one may have reached the arrays through a worker's
        globals): give the pages back if it wrote to them, if that cannot be told, or if not
        `keep` (the worker is about to measure its memory against a limit)."""
        if not self._frames:
            return
        faults = _faults()  # before the scan: a fault after it is counted for the next task
        if not keep or faults is None or (faults != self._faults and _written(self._spans)):
            self.release()
        self._faults = faults

    def release(self) -> None:
        transport.release_pages(self._frames)
        self.mapped = False


def _faults() -> int | None:
    """The page faults of this process so far; None where they are not known to count every write."""
    if not _COUNTS_FAULTS:
        return None
    import resource  # here: Windows has none

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_minflt + usage.ru_majflt


def _span(frame: memoryview) -> tuple[int, int]:
    import ctypes  # only once a function with shared arrays arrives: workers start faster

    return ctypes.addressof(ctypes.c_char.from_buffer(frame)), frame.nbytes


@functools.cache
def _pagemap() -> int | None:
    try:
        return os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # not Linux
        return None


def can_tell() -> bool:
    """True where the kernel tells whether a task wrote to a mapping (so pages can be kept)."""
    return not _written([])


def _written(spans: list[tuple[int, int]]) -> bool:
    """True if this process holds a page of its own (copied on a write) in any of the mappings
    `spans` (address, size), or if the kernel cannot say."""
    fd = _pagemap()
    if fd is None:
        return True
    import ctypes
    import fcntl  # here: Windows has none (nor any mapping to scan)

    region = ctypes.create_string_buffer(24)  # struct page_region: room for the first match
    # An empty span asks nothing, but an old kernel refuses the request all the same.
    for start, size in spans or [(0, 0)]:
        arg = bytearray(
            _SCAN_ARG.pack(
                _SCAN_ARG.size,
                0,
                start,
                start + size,
                0,
                ctypes.addressof(region),
                1,
                1,  # max_pages: stop at the first page found
                _PAGE_IS_FILE,  # inverted: pages that are *not* the shared file's...
                _PAGE_IS_FILE,
                _PAGE_IS_PRESENT | _PAGE_IS_SWAPPED,  # ...that are in memory or swapped out
                _PAGE_IS_PRESENT | _PAGE_IS_SWAPPED | _PAGE_IS_FILE,
            )
        )
        try:
            if fcntl.ioctl(fd, _PAGEMAP_SCAN, arg, True) > 0:
                return True
        except OSError:  # before Linux 6.7: ENOTTY
            return True
    return False
