"""Copying a large buffer straight out of another process's memory (Linux `process_vm_readv`).

A chunk's large arrays need not be copied by the pool at all: the worker that runs the chunk
copies them out of the pool's memory into its own, in one system call, so the copies happen in
the workers, in parallel, each of only the items it runs. Linux lets a process read another's
memory when it could trace it: same user, and under Yama's ptrace_scope 1 (Ubuntu's default)
only when the reader descends from a process the target named with PR_SET_PTRACER, as crash
reporters do: the pool names itself, so its own descendants may read it and no other process
gains anything. Elsewhere (not Linux, a stricter Yama scope, a seccomp filter), `allow_children_to_read`
is False and large items go through shared files instead (see transport).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import mmap
import os
import sys
from typing import Any


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]


@functools.cache
def _process_vm_readv() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).process_vm_readv
    except (OSError, AttributeError):  # a libc without it
        return None
    function.restype = ctypes.c_ssize_t
    function.argtypes = [
        ctypes.c_int,
        ctypes.POINTER(_IoVec),
        ctypes.c_ulong,
        ctypes.POINTER(_IoVec),
        ctypes.c_ulong,
        ctypes.c_ulong,
    ]
    return function


YAMA_SCOPE = "/proc/sys/kernel/yama/ptrace_scope"
_PR_SET_PTRACER = 0x59616D61  # "Yama", from linux/prctl.h


@functools.cache
def allow_children_to_read() -> bool:
    """Let this process's children read its memory where the system allows it (under Yama scope
    1, this process names itself their ptracer); True if they can be expected to: the system
    call is there and allowed (a seccomp filter may forbid it), and Yama, if present, lets them.
    A worker that is refused anyway says so, and the pool stops lending (see ProcessPool).

    NBPARALLEL_NO_CROSS_MEMORY=1 makes it False: the way macOS and Windows go, tested on Linux."""
    if os.environ.get("NBPARALLEL_NO_CROSS_MEMORY") == "1":
        return False
    if _process_vm_readv() is None or not _yama_lets_children_read():
        return False
    probe = Pinned(bytearray(b"can a process read this?"))
    try:
        return bytes(read(os.getpid(), probe.address, probe.size)) == bytes(probe.frame)
    except OSError:
        return False


def _yama_lets_children_read() -> bool:
    """Scope 0 or no Yama: yes. Scope 1: yes once this process has named itself as the one
    whose descendants may trace it (which replaces any ptracer it named before). Stricter: no."""
    try:
        with open(YAMA_SCOPE) as file:
            scope = file.read().strip()
    except FileNotFoundError:  # no Yama: the usual same-user rule alone applies
        return True
    except OSError:
        return False
    if scope == "1":
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PTRACER, ctypes.c_ulong(os.getpid()), 0, 0, 0) == 0
    return scope == "0"


class Pinned:
    """A writable buffer held in place (it cannot be freed or resized while this lives), and its address."""

    def __init__(self, frame: Any) -> None:
        view = memoryview(frame).cast("B")
        self.frame = frame
        self.size = view.nbytes
        self._pin = (ctypes.c_char * self.size).from_buffer(view)  # TypeError if read-only
        self.address = ctypes.addressof(self._pin)


def read(pid: int, address: int, size: int) -> memoryview:
    """Copy `size` bytes at `address` in process `pid` into new memory of this process.

    Raises:
        OSError: the kernel refused (no permission: EPERM), or the process is gone (ESRCH).
    """
    readv = _process_vm_readv()
    if readv is None:
        raise OSError(errno.ENOSYS, "reading another process's memory needs Linux")
    # Pages allocated up front (MAP_POPULATE): the copy then takes no page fault, about 40% faster.
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
    mapping = mmap.mmap(-1, size, flags=flags)
    target = (ctypes.c_char * size).from_buffer(mapping)
    try:
        done = 0
        while done < size:
            local = _IoVec(ctypes.addressof(target) + done, size - done)
            remote = _IoVec(address + done, size - done)
            copied = readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
            if copied <= 0:
                code = ctypes.get_errno() if copied < 0 else errno.EFAULT
                raise OSError(code, f"cannot read the memory of process {pid}: {os.strerror(code)}")
            done += copied
    finally:
        del target  # the mapping's only export besides the view returned
    return memoryview(mapping)
