"""Workers never outlive their kernel: a record on disk of who owns which workers, the sweep of
workers whose owner died, and the hook that stops a pool when its kernel is asked to exit.

Each worker exits by itself when its owner dies (EOF on its socket, see `worker.py`); this record
is the backstop for a worker that cannot notice (stuck in C code that holds the GIL). Processes
are named by pid *and* creation time, so a pid the system has since reused is never touched, and
only processes of our own user are ever killed. The record lives in a folder only we can write
(see `privatefolder.py`): anyone who could write a record could have us kill any of our processes.
psutil (15 ms to import) is imported when first needed, after a script's first call has launched
its workers.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from . import privatefolder

if TYPE_CHECKING:
    import psutil

Process = tuple[int, float]  # (pid, creation time)


def state_dir() -> Path:
    """Where owners record their workers: the user's runtime folder, else the temp folder
    (NBPARALLEL_STATE_DIR overrides, e.g. for tests). Either is used only if it is private."""
    override = os.environ.get("NBPARALLEL_STATE_DIR")
    return Path(override) if override else privatefolder.default_location()


def identify(pid: int) -> Process | None:
    import psutil

    try:
        return pid, psutil.Process(pid).create_time()
    except psutil.Error:
        return None


_workers_by_pool: dict[int, list[Process]] = {}  # this process's pools (by id) and their workers
_record_lock = threading.Lock()


def record_workers(pool: object, workers: list[Process]) -> None:
    """Write down the current workers of `pool`. The record lists those of every pool of this
    process (several sessions may each run one); with none left, it is removed."""
    with _record_lock:
        if workers:
            _workers_by_pool[id(pool)] = workers
        else:
            _workers_by_pool.pop(id(pool), None)
        everyone = [worker for pool_workers in _workers_by_pool.values() for worker in pool_workers]
        owner = identify(os.getpid())
        pid, created = owner or (os.getpid(), 0.0)
        name = f"{pid}-{created:.3f}.json"
        folder = privatefolder.open_folder(state_dir(), create=bool(everyone))
        if folder is None:
            return  # nothing recorded yet, or a folder we cannot trust (the user was warned)
        with folder:
            if everyone:
                folder.write(name, json.dumps({"owner": owner, "workers": everyone}).encode())
            else:
                folder.remove(name)


def is_running(process: Process) -> bool:
    """True if `process` still runs: same pid, same creation time, not a zombie."""
    import psutil

    pid, created = process
    try:
        found = psutil.Process(pid)
        return found.create_time() == created and found.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def reap_orphans() -> int:
    """Kill workers recorded by owners that are gone; returns how many were still running."""
    folder = privatefolder.open_folder(state_dir(), create=False)
    if folder is None:
        return 0  # no records, or a folder we cannot trust (the user was warned)
    killed = 0
    with folder:
        for name in folder.names():
            if not name.endswith(".json"):
                continue
            try:
                record = json.loads(folder.read(name) or b"")
                owner = (int(record["owner"][0]), float(record["owner"][1]))
                workers = [(int(pid), float(created)) for pid, created in record["workers"]]
            except (ValueError, KeyError, TypeError, IndexError):
                continue  # being written, or not a record of ours
            if is_running(owner):
                continue
            killed += sum(kill_if_ours(worker) for worker in workers)
            folder.remove(name)
    return killed


def kill_if_ours(process: Process) -> bool:
    """Kill `process` if it still runs (same pid, same creation time) as our user; True if so."""
    import psutil

    pid, created = process
    try:
        found = psutil.Process(pid)
        if found.create_time() != created or found.status() == psutil.STATUS_ZOMBIE:
            return False
        if not _same_user(found):
            return False  # a record can be wrong; another user's process is never ours to stop
        found.kill()
        return True
    except psutil.Error:
        return False


def _same_user(process: psutil.Process) -> bool:
    if hasattr(os, "getuid"):
        return bool(process.uids().real == os.getuid())
    return bool(process.username() == type(process)().username())


def stop_with_kernel(stop: Callable[[], None]) -> Callable[[], None]:
    """In an IPython kernel, call `stop` as soon as the kernel is asked to exit (shut down,
    restarted, `exit()`); returns a function that cancels this. Elsewhere, does nothing.

    It must run before ipykernel ends the kernel's child processes: a pool still running would
    replace each worker ipykernel kills, the kernel would not exit in time, and jupyter_client
    would kill it, skipping every atexit handler (ours and the user's)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or not shell.has_trait("exit_now"):
        return lambda: None

    def on_exit_now(change: dict[str, object]) -> None:
        if change["new"]:
            stop()

    shell.observe(on_exit_now, names="exit_now")
    return lambda: shell.unobserve(on_exit_now, names="exit_now")
