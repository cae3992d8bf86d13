"""The socket protocol between the pool and a worker, within one process (no worker started):
messages over a `socket.socketpair()` wrapped in `multiprocessing.connection.Connection`, as
`backends/process.py` (launch_worker) and `worker.py` (main) wrap theirs."""

from __future__ import annotations

import concurrent.futures
import gc
import mmap
import os
import socket
import sys
from multiprocessing.connection import Connection

import pytest

from nbparallel import crossmemory, messages, transport

from .conftest import counting_shared_files

BIG = transport.SHARE_ABOVE + 4097  # above the threshold, and not a whole number of pages
needs_lending = pytest.mark.skipif(
    not crossmemory.allow_children_to_read(), reason="process_vm_readv cannot read memory here"
)


@pytest.fixture
def pair():
    """(pool's end, worker's end) of a connected socket pair, each a Connection."""
    ours, theirs = socket.socketpair()
    pool_end, worker_end = Connection(ours.detach()), Connection(theirs.detach())
    yield pool_end, worker_end
    pool_end.close()
    worker_end.close()


@pytest.fixture
def receiver(pair):
    """Receives on another thread: a frame sent through the socket is larger than its buffer,
    so send_message returns only while someone reads. A receive left waiting by a failed test
    ends when `pair` closes the sending end (EOF)."""
    executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="test-receiver")

    def receive(conn: Connection, count: int = 1, map_shared: bool = True):
        return executor.submit(
            lambda: [transport.receive_message(conn, map_shared) for _ in range(count)]
        )

    yield receive
    executor.shutdown(wait=False, cancel_futures=True)


def pattern(size: int, seed: int = 7) -> bytearray:
    """`size` bytes that differ from one offset to the next: a shifted or truncated copy shows."""
    block = bytes((seed + i * 31) % 251 for i in range(4096))
    return bytearray((block * (size // len(block) + 1))[:size])


def run_task(frames: list) -> messages.RunTask:
    return messages.RunTask(
        task_id=3,
        call_id=2,
        digest=b"d" * 16,
        kind="map",
        keep_going=False,
        frames=frames,
        function_frames=0,
    )


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_message_without_frames_arrives_equal(pair, receiver):
    pool_end, worker_end = pair
    received = receiver(worker_end)
    transport.send_message(pool_end, messages.CancelCall(call_id=42))
    assert received.result(timeout=10) == [messages.CancelCall(call_id=42)]


def test_small_frames_go_through_the_socket_and_arrive_as_writable_copies(pair, receiver):
    pool_end, worker_end = pair
    frames = [b"header", pattern(100_000), bytearray(0)]
    received = receiver(worker_end)
    transport.send_message(pool_end, run_task(frames))
    (message,) = received.result(timeout=10)
    assert isinstance(message, messages.RunTask) and (message.task_id, message.call_id) == (3, 2)
    assert [bytes(f) for f in message.frames] == [bytes(f) for f in frames]
    assert all(isinstance(f, bytearray) for f in message.frames)  # writable, not views of a buffer


def test_a_frame_above_the_threshold_is_not_shared_unless_asked(pair, receiver):
    """Without share_large, even a big frame goes through the socket itself, intact."""
    pool_end, worker_end = pair
    big = pattern(BIG)
    received = receiver(worker_end)
    transport.send_message(pool_end, run_task([big]))
    (message,) = received.result(timeout=30)
    assert isinstance(message.frames[0], bytearray) and message.frames[0] == big


@pytest.mark.skipif(not hasattr(socket, "send_fds"), reason="passing descriptors needs SCM_RIGHTS")
@pytest.mark.parametrize("map_shared", [True, False], ids=["mapped", "read"])
def test_a_big_frame_goes_as_a_shared_file_and_arrives_intact(pair, receiver, map_shared):
    """share_large puts it in an anonymous file whose descriptor follows the header (SCM_RIGHTS);
    the receiver maps it copy-on-write (its changes stay its own) or reads it. Small frames
    beside it still go through the socket, in their places."""
    pool_end, worker_end = pair
    big, small = pattern(BIG), b"small frame"
    frames = transport.share_large([small, big])
    assert isinstance(frames[1], transport.SharedFrame) and frames[0] is small
    assert transport.frame_bytes(frames) == len(small) + BIG

    received = receiver(worker_end, map_shared=map_shared)
    transport.send_message(
        pool_end, messages.TaskDone(task_id=9, results=None, seconds=0.5, frames=frames)
    )
    (message,) = received.result(timeout=10)
    got_small, got_big = message.frames
    assert bytes(got_small) == small and bytes(got_big) == bytes(big)
    if map_shared or sys.version_info >= (3, 13):  # 3.13 maps without holding a descriptor
        assert isinstance(got_big, memoryview) and isinstance(got_big.obj, mmap.mmap)
        got_big[0] = (got_big[0] + 1) % 256  # copy-on-write: the file keeps the sender's bytes
        assert os.pread(frames[1].fd, 1, 0) == bytes(big[:1])
    else:
        assert isinstance(got_big, bytearray)


@pytest.mark.skipif(not hasattr(socket, "send_fds"), reason="passing descriptors needs SCM_RIGHTS")
def test_messages_keep_their_order_and_boundaries_whatever_their_frames(pair, receiver):
    """Plain, shared and socket frames interleaved on one connection: each message gets its own."""
    pool_end, worker_end = pair
    sent = [
        run_task([b"first"]),
        run_task(transport.share_large([pattern(BIG, seed=1), b"between"])),
        messages.CancelCall(call_id=5),
        run_task([pattern(70_000, seed=2)]),
        run_task(transport.share_large([pattern(BIG, seed=3)])),
    ]
    expected = [
        [b"first"],
        [bytes(pattern(BIG, seed=1)), b"between"],
        None,
        [bytes(pattern(70_000, seed=2))],
        [bytes(pattern(BIG, seed=3))],
    ]
    received = receiver(worker_end, count=len(sent))
    for message in sent:
        transport.send_message(pool_end, message)
    got = received.result(timeout=30)
    assert [type(m) for m in got] == [type(m) for m in sent]
    assert [[bytes(f) for f in m.frames] if hasattr(m, "frames") else None for m in got] == expected


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_a_shared_frame_and_its_received_mapping_hold_no_descriptor_once_dropped(pair, receiver):
    """The anonymous file is freed with its last reference: nothing leaks."""
    pool_end, worker_end = pair
    before = open_fd_count()
    frames = transport.share_large([pattern(BIG)])
    received = receiver(worker_end)
    transport.send_message(pool_end, run_task(frames))
    (message,) = received.result(timeout=10)
    assert bytes(message.frames[0][-5:]) == bytes(pattern(BIG)[-5:])
    assert open_fd_count() > before  # the count sees them while they live
    del frames, message, received
    gc.collect()
    assert open_fd_count() <= before


def test_a_big_frame_goes_through_the_socket_when_no_shared_file_can_be_made(
    pair, receiver, monkeypatch
):
    """No room for a shared file (say /dev/shm is full) slows a message down, never breaks it."""

    def refused() -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(transport, "_anonymous_file", refused)
    pool_end, worker_end = pair
    big = pattern(BIG)
    frames = transport.share_large([big])
    assert frames[0] is big
    received = receiver(worker_end)
    transport.send_message(pool_end, run_task(frames))
    (message,) = received.result(timeout=30)
    assert message.frames[0] == big


@needs_lending
def test_a_lent_frame_is_copied_out_of_the_senders_memory_and_only_its_address_travels(
    pair, receiver, monkeypatch
):
    """lend_large keeps a big writable frame where it is; the receiver (here this very process)
    copies it with process_vm_readv. No shared file is made, no frame bytes cross the socket."""
    made = counting_shared_files(monkeypatch)
    pool_end, worker_end = pair
    big = pattern(BIG)
    frames = transport.lend_large([b"small", big])
    assert isinstance(frames[1], transport.LentFrame) and transport.lends(frames)
    received = receiver(worker_end)
    transport.send_message(pool_end, run_task(frames))
    (message,) = received.result(timeout=10)
    assert bytes(message.frames[0]) == b"small" and bytes(message.frames[1]) == bytes(big)
    assert made == []
    assert not worker_end.poll(0)  # nothing else was sent: the header said where the bytes are


@needs_lending
def test_a_lent_frame_the_receiver_cannot_read_arrives_as_unreadable_and_can_be_shared_instead(
    pair, receiver, monkeypatch
):
    """Where the kernel refuses the copy, the receiver gets an Unreadable saying why, and the
    sender's share_instead puts the same bytes in a shared file for the next attempt."""

    def refuse(pid: int, address: int, size: int):
        raise PermissionError(1, "Operation not permitted")

    pool_end, worker_end = pair
    big = pattern(BIG)
    frames = transport.lend_large([big])
    monkeypatch.setattr(crossmemory, "read", refuse)
    received = receiver(worker_end)
    transport.send_message(pool_end, run_task(frames))
    (message,) = received.result(timeout=10)
    assert isinstance(message.frames[0], transport.Unreadable)
    assert "Operation not permitted" in message.frames[0].reason

    shared = transport.share_instead(frames)
    assert isinstance(shared[0], transport.SharedFrame) and not transport.lends(shared)
    received = receiver(worker_end)
    transport.send_message(pool_end, run_task(shared))
    (message,) = received.result(timeout=10)
    assert bytes(message.frames[0]) == bytes(big)
