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
command line (which every user can read) nor in a file of ours.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from typing import Any

from .. import errors

_BOOT = "from nbparallel.backends.dask_cluster import main; main()"
_LOOPBACK = "127.0.0.1"

# The fields of a `Security` that hold this cluster's credentials, as PEM text.
_CREDENTIALS = (
    "tls_ca_file",
    "tls_client_cert", "tls_client_key",
    "tls_scheduler_cert", "tls_scheduler_key",
    "tls_worker_cert", "tls_worker_key",
)


@dataclasses.dataclass
class _Host:
    process: subprocess.Popen[str]
    lifeline: int  # the write end of its pipe: closing it ends the process


def _start(role: str, credentials: str, *args: str) -> _Host:
    reader, writer = os.pipe()
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", _BOOT, role, str(reader), *args],
            pass_fds=[reader], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            start_new_session=True,
            # The kernel's import path: this package, and the user's modules that tasks import.
            env={**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)},
        )
    finally:
        os.close(reader)
    assert process.stdin is not None
    try:  # a few kB: fits in the pipe, so this never waits on the child
        process.stdin.write(credentials)
    except BrokenPipeError:  # it died at once; reading its address says so
        pass
    finally:
        process.stdin.close()
    return _Host(process, writer)


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
        self._credentials = json.dumps(
            {field: getattr(self.security, field) for field in _CREDENTIALS}
        ) + "\n"
        self._scheduler = _start("scheduler", self._credentials)
        assert self._scheduler.process.stdout is not None
        self.address = self._scheduler.process.stdout.readline().strip()
        if not self.address:
            _stop(self._scheduler)
            raise RuntimeError("the dask scheduler nbparallel started exited before it listened")
        self._workers: list[_Host] = []
        self.scale(workers)

    def scale(self, workers: int) -> None:
        """Start or stop workers (the newest first) until there are `workers`."""
        while len(self._workers) < workers:
            self._workers.append(_start("worker", self._credentials, self.address))
        while len(self._workers) > workers:
            _stop(self._workers.pop())

    def close(self) -> None:
        for host in [*self._workers, self._scheduler]:
            _stop(host)
        self._workers = []


# --- in the scheduler's or a worker's own process -------------------------------------------


def _exit_with_parent(lifeline: int) -> None:
    while os.read(lifeline, 1):
        pass
    os._exit(0)  # EOF: the process that started us is gone


def _close_http(server: Any) -> None:
    """Its pages and metrics need no credentials; nbparallel reads none of them."""
    server.http_server.stop()


async def _serve(role: str, args: list[str], credentials: dict[str, str]) -> None:
    import dask
    import distributed
    from distributed.security import Security

    # Its INFO lines would fill the kernel's log.
    logging.getLogger("distributed").setLevel(logging.ERROR)
    dask.config.set({"distributed.scheduler.http.routes": [], "distributed.worker.http.routes": []})
    closed: dict[str, Any] = {
        "host": _LOOPBACK, "protocol": "tls",
        "security": Security(require_encryption=True, **credentials),
        "dashboard": False, "dashboard_address": f"{_LOOPBACK}:0",  # never ":port", all interfaces
    }
    if role == "scheduler":
        # A task whose worker dies fails at once, as on the process pool (retries= is
        # nbparallel's, not dask's rescheduling).
        async with distributed.Scheduler(port=0, allowed_failures=0, **closed) as scheduler:
            _close_http(scheduler)
            print(scheduler.address, flush=True)
            await scheduler.finished()
    else:
        async with distributed.Worker(args[0], nthreads=1, **closed) as worker:
            _close_http(worker)
            await worker.finished()


def main() -> None:
    """Entry point: `python -c ... scheduler|worker <lifeline fd> [scheduler address]`, with the
    cluster's credentials as one JSON line on stdin."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    role, lifeline, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    threading.Thread(target=_exit_with_parent, args=(lifeline,), name="nbparallel-lifeline", daemon=True).start()
    credentials = json.loads(sys.stdin.readline())
    asyncio.run(_serve(role, args, credentials))
