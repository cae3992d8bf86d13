"""The local dask cluster nbparallel starts itself: a scheduler and workers that follow the kernel.

Each is a process of its own (`python -c ...`, never multiprocessing, which would re-run a
script's `__main__`), started in a session of its own so that the kernel's interrupt (SIGINT to
its process group) does not reach it, and holding the read end of a pipe whose write end only
this process has: when this process is gone, however it went, a thread in each sees EOF and ends
its process at once (the same lifeline as the process pool's workers).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading

_BOOT = "from nbparallel.backends.dask_cluster import main; main()"


@dataclasses.dataclass
class _Host:
    process: subprocess.Popen[str]
    lifeline: int  # the write end of its pipe: closing it ends the process


def _start(role: str, *args: str) -> _Host:
    reader, writer = os.pipe()
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", _BOOT, role, str(reader), *args],
            pass_fds=[reader], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
            start_new_session=True,
            # The kernel's import path: this package, and the user's modules that tasks import.
            env={**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)},
        )
    finally:
        os.close(reader)
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
    """A scheduler and `workers` single-threaded workers on this machine."""

    def __init__(self, workers: int) -> None:
        self._scheduler = _start("scheduler")
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
            self._workers.append(_start("worker", self.address))
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


async def _serve(role: str, args: list[str]) -> None:
    import distributed

    logging.getLogger("distributed").setLevel(logging.ERROR)  # its INFO lines would fill the kernel's log

    if role == "scheduler":
        # A task whose worker dies fails at once, as on the process pool (retries= is
        # nbparallel's, not dask's rescheduling).
        async with distributed.Scheduler(port=0, dashboard_address=None, allowed_failures=0) as scheduler:
            print(scheduler.address, flush=True)
            await scheduler.finished()
    else:
        async with distributed.Worker(args[0], nthreads=1) as worker:
            await worker.finished()


def main() -> None:
    """Entry point: `python -c ... scheduler|worker <lifeline fd> [scheduler address]`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    role, lifeline, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    threading.Thread(target=_exit_with_parent, args=(lifeline,), name="nbparallel-lifeline", daemon=True).start()
    asyncio.run(_serve(role, args))
