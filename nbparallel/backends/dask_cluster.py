"""The local dask cluster nbparallel starts itself: a scheduler and workers that follow the kernel,
and that only this kernel can use.

Each is a process of its own (`python -c ...`, never multiprocessing, which would re-run a
script's `__main__`), started in a session of its own so that the kernel's interrupt (SIGINT to
its process group) does not reach it, and holding the read end of a pipe whose write end only
this process has: when this process is gone, however it went, a thread in each sees EOF and ends
its process at once (the same lifeline as the process pool's workers).

A dask scheduler runs whatever code its clients send, so the cluster is closed to everyone else:
each process listens on 127.0.0.1 only, on one port that speaks TLS with both sides proving who
they are with a certificate made for this cluster (`Security.temporary()`, held in memory only),
and no HTTP port at all. A process gets the certificate and its key on its stdin, never on its
command line (which every user can read) nor in a file of ours, and prints the address it listens
on once it is ready (a worker: once the scheduler knows it); this process waits for that line
with a deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from .. import errors, lifecycle
from . import launcher

_BOOT = "from nbparallel.backends.dask_cluster import main; main()"
_LOOPBACK = "127.0.0.1"

# How long a scheduler may take to listen, and workers to join it (importing dask is slow).
START_SECONDS = 60.0

# The fields of a `Security` that hold this cluster's credentials, as PEM text.
_CREDENTIALS = (
    "tls_ca_file",
    "tls_client_cert",
    "tls_client_key",
    "tls_scheduler_cert",
    "tls_scheduler_key",
    "tls_worker_cert",
    "tls_worker_key",
)


@dataclasses.dataclass
class _Host:
    role: str  # "scheduler" or "worker", for messages
    process: subprocess.Popen[bytes]
    lifeline: int  # the write end of its pipe: closing it ends the process


def _start(role: str, credentials: bytes, *args: str) -> _Host:
    reader, writer = os.pipe()
    try:
        parent = os.getpid() if launcher.PARENT_DEATH_SIGNAL else 0  # 0: the child does not ask
        process = launcher.run(
            lambda: subprocess.Popen(
                [sys.executable, "-c", _BOOT, role, str(reader), str(parent), *args],
                pass_fds=[reader],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,
                start_new_session=True,
                # The kernel's import path: this package, and the user's modules that tasks import.
                env={
                    **os.environ,
                    "PYTHONPATH": os.pathsep.join(path for path in sys.path if path),
                },
            )
        )
    finally:
        os.close(reader)
    assert process.stdin is not None
    try:  # a few kB: fits in the pipe, so this never waits on the child
        process.stdin.write(credentials)
    except BrokenPipeError:  # it died at once; waiting for its announcement says so
        pass
    finally:
        process.stdin.close()
    return _Host(role, process, writer)


def _announcement(host: _Host, deadline: float, awaited: str) -> str:
    """The line `host` prints once it is ready, waited for until `deadline` (time.monotonic())."""
    assert host.process.stdout is not None
    stdout = host.process.stdout.fileno()
    received = b""
    with selectors.DefaultSelector() as selector:  # not select(): a kernel may hold 1024 fds
        selector.register(stdout, selectors.EVENT_READ)
        while not received.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                pid = host.process.pid
                raise errors.dask_cluster_silent(host.role, pid, awaited, START_SECONDS)
            chunk = os.read(stdout, 4096)
            if not chunk:
                try:
                    returncode: int | None = host.process.wait(5)
                except subprocess.TimeoutExpired:
                    returncode = None
                raise errors.dask_cluster_exited(host.role, host.process.pid, awaited, returncode)
            received += chunk
    return received.decode().strip()


def _stop(host: _Host) -> None:
    os.close(host.lifeline)
    try:
        host.process.wait(5)
    except subprocess.TimeoutExpired:
        host.process.kill()
        host.process.wait()
    if host.process.stdout is not None:
        host.process.stdout.close()


class LocalCluster:
    """A scheduler and `workers` single-threaded workers on this machine, for this process only.

    `address` and `security` are what a `distributed.Client` needs to connect to it."""

    def __init__(self, workers: int) -> None:
        from distributed.security import Security

        try:
            self.security = Security.temporary()
        except ImportError as missing:  # temporary() needs `cryptography`
            raise errors.dask_missing("cryptography") from missing
        self._credentials = (
            json.dumps({field: getattr(self.security, field) for field in _CREDENTIALS}).encode()
            + b"\n"
        )
        self._workers: list[_Host] = []
        self._scheduler = _start("scheduler", self._credentials)
        try:
            deadline = time.monotonic() + START_SECONDS
            awaited = "print the address it listens on"
            self.address = _announcement(self._scheduler, deadline, awaited)
            self.scale(workers)
        except BaseException:
            self.close()
            raise

    def scale(self, workers: int) -> None:
        """Start or stop workers (the newest first) until there are `workers`; started ones have
        joined the scheduler when this returns."""
        joining = [
            _start("worker", self._credentials, self.address)
            for _ in range(workers - len(self._workers))
        ]
        deadline = time.monotonic() + START_SECONDS
        try:
            for host in joining:
                _announcement(host, deadline, f"join the scheduler at {self.address}")
        except BaseException:
            for host in joining:
                _stop(host)
            raise
        self._workers.extend(joining)
        while len(self._workers) > workers:
            _stop(self._workers.pop())
        self._record()

    def close(self) -> None:
        for host in [*self._workers, self._scheduler]:
            _stop(host)
        self._workers = []
        lifecycle.record_workers(self, [])

    def _record(self) -> None:
        """In the worker record, as the pool's workers are: the sweep finds them if this process
        dies and they do not (where no parent-death signal exists)."""
        hosts = [self._scheduler, *self._workers]
        found = [lifecycle.identify(host.process.pid) for host in hosts]
        lifecycle.record_workers(self, [process for process in found if process is not None])


# --- in the scheduler's or a worker's own process -------------------------------------------


def _exit_with_parent(lifeline: int) -> None:
    while os.read(lifeline, 1):
        pass
    os._exit(0)  # EOF: the process that started us is gone


def _announce(server: Any) -> None:
    """Close the server's HTTP port, then tell the process that started us where we listen."""
    # Its pages and metrics need no credentials; nbparallel reads none of them.
    server.http_server.stop()
    print(server.address, flush=True)
    # Nobody reads the pipe from now on: what an every-worker cell prints goes to stderr, so a
    # full pipe can never block this process.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())


async def _serve(role: str, args: list[str], credentials: dict[str, str]) -> None:
    import dask
    import distributed
    from distributed.security import Security

    # Its INFO lines would fill the kernel's log.
    logging.getLogger("distributed").setLevel(logging.ERROR)
    dask.config.set({"distributed.scheduler.http.routes": [], "distributed.worker.http.routes": []})
    closed: dict[str, Any] = {
        "host": _LOOPBACK,
        "protocol": "tls",
        "security": Security(require_encryption=True, **credentials),
        "dashboard": False,
        "dashboard_address": f"{_LOOPBACK}:0",  # never ":port", all interfaces
    }
    if role == "scheduler":
        # A task whose worker dies fails at once, as on the process pool (retries= is
        # nbparallel's, not dask's rescheduling).
        async with distributed.Scheduler(port=0, allowed_failures=0, **closed) as scheduler:
            _announce(scheduler)
            await scheduler.finished()
    else:
        # Entered once it has joined the scheduler.
        async with distributed.Worker(args[0], nthreads=1, **closed) as worker:
            _announce(worker)
            await worker.finished()


def main() -> None:
    """Entry point: `python -c ... scheduler|worker <lifeline fd> <parent pid or 0> [address]`, with the
    cluster's credentials as one JSON line on stdin."""
    # A task holding the GIL in C code keeps the lifeline thread from running: on Linux the
    # kernel's death kills this process anyway.
    launcher.die_with_parent(int(sys.argv[3]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    role, lifeline, args = sys.argv[1], int(sys.argv[2]), sys.argv[4:]
    threading.Thread(
        target=_exit_with_parent, args=(lifeline,), name="nbparallel-lifeline", daemon=True
    ).start()
    credentials = json.loads(sys.stdin.readline())
    asyncio.run(_serve(role, args, credentials))
