"""How messages cross the socket between the pool and a worker, copying large data as little as possible.

A message is pickled; its `frames` (the raw buffers of large arrays and bytes, pickled out of
band) follow it, each as a message of its own, received straight into a buffer. A frame above
`SHARE_ABOVE` bytes does not go through the socket at all, in one of two ways:

- `lend_large` (items, which one worker reads): the frame stays where it is (a `LentFrame`)
  and the receiver copies it straight out of the sender's memory (crossmemory), or says it
  could not (an `Unreadable` frame) so that the sender shares it instead;
- `share_large` (functions, which every worker keeps, and results): the frame is written once
  into an anonymous shared file (a `SharedFrame`) whose descriptor is passed along
  (SCM_RIGHTS), however many workers it goes to, and the receiver maps it copy-on-write. A
  function's frames sent again unchanged reuse their files (`SharedCopies`).

Nothing can leak: the file has no name, and its memory is freed when the last descriptor and
mapping are gone; a lent frame is the sender's own memory, held while the sender needs it.

Where the platform lacks a piece, the next way is taken: no `memfd_create` (macOS), a temporary
file unlinked at once; no descriptor passing (Windows), every frame through the socket. The
environment switches NBPARALLEL_NO_MEMFD=1 and NBPARALLEL_NO_SHARED_FILES=1 take those ways on
Linux too, so that the tests prove them.
"""

from __future__ import annotations

import copy
import mmap
import os
import pickle
import socket
import sys
import tempfile
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from . import crossmemory

SHARE_ABOVE = 8 * 2**20
_MAPS_WITHOUT_FD = sys.version_info >= (3, 13)  # mmap(trackfd=False)
# Read once: a worker inherits the pool's environment, so both sides agree.
_MEMFD = hasattr(os, "memfd_create") and os.environ.get("NBPARALLEL_NO_MEMFD") != "1"
SHARES_FILES = hasattr(socket, "send_fds") and os.environ.get("NBPARALLEL_NO_SHARED_FILES") != "1"


class SharedFrame:
    """A frame's bytes in an anonymous shared file, written once; closed when no longer referenced."""

    def __init__(self, frame: Any) -> None:
        view = memoryview(frame).cast("B")
        self.size = view.nbytes
        self.fd = _anonymous_file()
        self._closer = weakref.finalize(self, os.close, self.fd)
        written = 0
        while written < self.size:
            written += os.write(self.fd, view[written:])


class LentFrame(crossmemory.Pinned):
    """A frame the receiver copies out of this process's memory; held in place while this lives."""


class Unreadable:
    """Stands for a lent frame the receiver could not copy (the kernel refused), and says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def lend_large(frames: list[Any]) -> list[Any]:
    """`frames`, with the writable ones above SHARE_ABOVE bytes lent (the rest shared if large)."""
    return share_large(
        [LentFrame(f) if _large(f) and not memoryview(f).readonly else f for f in frames]
    )


def lends(frames: list[Any]) -> bool:
    return any(isinstance(f, LentFrame) for f in frames)


def share_instead(frames: list[Any]) -> list[Any]:
    """`frames`, with lent ones put in shared files instead: for a receiver that cannot read them."""
    if not lends(frames):
        return frames
    return share_large([f.frame if isinstance(f, LentFrame) else f for f in frames])


def frame_bytes(frames: list[Any]) -> int:
    """What `frames` hold, in bytes, wherever each one is (in memory, lent or shared)."""
    return sum(
        f.size if isinstance(f, (SharedFrame, LentFrame)) else memoryview(f).nbytes for f in frames
    )


def _large(frame: Any) -> bool:
    return (
        not isinstance(frame, (SharedFrame, LentFrame)) and memoryview(frame).nbytes > SHARE_ABOVE
    )


def share_large(frames: list[Any]) -> list[Any]:
    """`frames`, with those above SHARE_ABOVE bytes moved into shared files (where they can be:
    one that cannot, say with no room for it in shared memory, goes through the socket)."""
    if not SHARES_FILES:
        return frames
    return [_shared(f) if _large(f) else f for f in frames]


class SharedCopies:
    """The shared files of the latest function shared, by content key: a function sent again
    over the same bytes (a global array not changed since) is given the same files, with no
    copy, and its workers, which cache it by digest, read nothing again.

    Only the latest function's files are kept, as a worker keeps only its newest function with
    large data: a copy superseded is closed as soon as no call still being sent holds it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[bytes, SharedFrame] = {}

    def share(self, frames: list[Any], keys: Sequence[bytes | None]) -> list[Any]:
        """`frames` as `share_large` makes them, reusing the files of frames with the same key."""
        with self._lock:
            latest = self._latest
        keyed = [(frame, keys[i] if i < len(keys) else None) for i, frame in enumerate(frames)]
        shared = [latest[key] if key in latest else share_large([frame])[0] for frame, key in keyed]
        kept = {
            key: frame
            for (_, key), frame in zip(keyed, shared, strict=True)
            if key is not None and isinstance(frame, SharedFrame)
        }
        if kept:  # a call with nothing shared (a small function) leaves the latest in place
            with self._lock:
                self._latest = kept
        return shared

    def clear(self) -> None:
        """Let the files go (closed once no call being sent holds them): the pool is shut down."""
        with self._lock:
            self._latest = {}


def _shared(frame: Any) -> Any:
    try:
        return SharedFrame(frame)
    except OSError:
        return frame


def send_message(conn: Any, message: Any) -> None:
    """Send a message; its `frames` (large buffers) go as frames of their own, uncopied."""
    frames = getattr(message, "frames", None)
    if not frames:
        conn.send_bytes(pickle.dumps(message, protocol=5))
        return
    header = copy.copy(message)
    header.frames = [_marker(f) for f in frames]
    conn.send_bytes(pickle.dumps(header, protocol=5))
    for frame in frames:
        if isinstance(frame, SharedFrame):
            with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                socket.send_fds(sock, [b"F"], [frame.fd])
        elif not isinstance(frame, LentFrame):  # the receiver copies that one from here
            conn.send_bytes(frame)


def _marker(frame: Any) -> Any:
    """What the header says of a frame: a size for one that follows through the socket, (size,)
    for a shared file whose descriptor follows, (size, pid, address) for a lent one."""
    if isinstance(frame, SharedFrame):
        return (frame.size,)
    if isinstance(frame, LentFrame):
        return (frame.size, os.getpid(), frame.address)
    return memoryview(frame).nbytes


def receive_message(conn: Any, map_shared: bool = True) -> Any:
    """Receive a message sent by `send_message`, its frames into fresh writable buffers.

    With `map_shared`, shared files are mapped (copy-on-write) rather than read: no copy, but
    before Python 3.13 every mapping holds a file descriptor while it lives, so a receiver that
    keeps many of them (the pool, holding results) reads them instead.
    """
    message = pickle.loads(conn.recv_bytes())
    sizes = getattr(message, "frames", None)
    if sizes:
        frames: list[Any] = []
        for size in sizes:
            if isinstance(size, tuple) and len(size) == 3:
                frames.append(_copy_lent(*size))
            elif isinstance(size, tuple):
                frames.append(_receive_shared(conn, size[0], map_shared or _MAPS_WITHOUT_FD))
            else:
                frame = bytearray(size)
                conn.recv_bytes_into(frame)
                frames.append(frame)
        message.frames = frames
    return message


def mapped_frames(frames: list[Any]) -> list[memoryview]:
    """The frames among `frames` that are mapped shared files (as `receive_message` maps them)."""
    return [frame for frame in frames if _mapping(frame) is not None]


def release_pages(frames: list[Any]) -> None:
    """Give back the memory of pages read from mapped shared frames; they are read again from
    the shared file if used. Changes made to them are dropped: they were the receiver's copy."""
    for frame in frames:
        mapping = _mapping(frame)
        if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
            mapping.madvise(mmap.MADV_DONTNEED)


def _mapping(frame: Any) -> mmap.mmap | None:
    mapping = getattr(frame, "obj", None)
    return mapping if isinstance(mapping, mmap.mmap) else None


def _anonymous_file() -> int:
    if _MEMFD:
        return os.memfd_create("nbparallel-frame", os.MFD_CLOEXEC)
    with tempfile.TemporaryFile() as file:  # unlinked at once where it cannot be anonymous
        return os.dup(file.fileno())


def _copy_lent(size: int, pid: int, address: int) -> Any:
    try:
        return crossmemory.read(pid, address, size)
    except OSError as error:
        return Unreadable(str(error))


def _receive_shared(conn: Any, size: int, map_it: bool) -> Any:
    with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        _, fds, _, _ = socket.recv_fds(sock, 1, 1)
    (fd,) = fds
    try:
        if map_it:
            # Copy-on-write: the receiver may change its arrays; the sender's data stays as it was.
            options = {"trackfd": False} if _MAPS_WITHOUT_FD else {}
            return memoryview(mmap.mmap(fd, size, access=mmap.ACCESS_COPY, **options))
        frame = bytearray(size)
        view = memoryview(frame)
        read = 0
        while read < size:
            if hasattr(os, "preadv"):
                got = os.preadv(fd, [view[read:]], read)
            else:  # macOS before 11
                data = os.pread(fd, min(size - read, 2**30), read)
                got = len(data)
                view[read : read + got] = data
            if got <= 0:
                raise OSError(f"a shared frame ended after {read} of {size} bytes")
            read += got
        return frame
    finally:
        os.close(fd)
