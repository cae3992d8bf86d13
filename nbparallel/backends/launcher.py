"""Every worker process is started from one thread, `nbparallel-launcher`, that lives as long as
this process.

Why one thread: on Linux a worker asks to be killed when its parent dies (PR_SET_PDEATHSIG, set
by the worker itself, see `worker.die_with_parent`). It is the only way out for a worker whose
task holds the GIL in C code, where its reader thread never runs to see the socket's EOF. But
Linux sends that signal when the *thread* that created the child ends, not the process (CPython
issue 111873), and a pool starts workers from whichever thread needs them: the caller's, a
map_async thread, the dispatcher. A worker started by a thread that then ends would die with it.
So no such thread starts a process: each hands the start to this one, which ends with the process.

Why the worker sets the signal itself, not Popen's `preexec_fn`: that runs Python between fork
and exec in a process full of threads (a kernel's), which can deadlock, and it stops subprocess
from using vfork.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from queue import Empty, SimpleQueue
from typing import Any, TypeVar

from .. import errors

PARENT_DEATH_SIGNAL = sys.platform.startswith("linux")
"""Workers ask Linux to kill them when this process dies. Elsewhere (and in the tests of that
case) the socket lifeline and the sweep of orphans when the next pool starts are what remain."""

_PR_SET_PDEATHSIG = 1  # from linux/prctl.h
ANSWER_SECONDS = 30.0  # starting a process takes milliseconds; this much means the system is stuck

_Result = TypeVar("_Result")
# A job's answer: (True, its result) or (False, its exception). (Not concurrent.futures: its
# import would cost every worker 4 ms, and this module is imported there for die_with_parent.)
_Answer = SimpleQueue[tuple[bool, Any]]
_jobs: SimpleQueue[tuple[Callable[[], Any], _Answer | None]] = SimpleQueue()
_thread: threading.Thread | None = None
_thread_lock = threading.Lock()


def run(job: Callable[[], _Result]) -> _Result:
    """Run `job` (e.g. `subprocess.Popen(...)`) on the launcher thread; its result or exception.

    Raises:
        NbParallelError: the launcher did not answer within ANSWER_SECONDS.
    """
    if threading.current_thread() is _thread:  # a job of the launcher's own (a pool's refill)
        return job()
    answer: _Answer = SimpleQueue()
    _put(job, answer)
    try:
        succeeded, outcome = answer.get(timeout=ANSWER_SECONDS)
    except Empty:
        raise errors.launcher_stuck(ANSWER_SECONDS) from None
    if not succeeded:
        raise outcome
    return outcome


def run_later(job: Callable[[], object]) -> None:
    """Run `job` on the launcher thread after the jobs queued before it, without waiting for it."""
    _put(job, None)


def _put(job: Callable[[], Any], answer: _Answer | None) -> None:
    global _thread
    with _thread_lock:
        if _thread is None or not _thread.is_alive():  # first use, or a child forked from here
            _thread = threading.Thread(target=_run_forever, name="nbparallel-launcher", daemon=True)
            _thread.start()
    _jobs.put((job, answer))


def _run_forever() -> None:
    # A child inherits its creating thread's signal mask, across exec: with SIGINT blocked here,
    # the kernel's interrupt (SIGINT to its whole process group) cannot kill a worker still
    # booting, and the kernel's own threads still get it. The worker's first line unblocks it.
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    while True:
        _run_one(*_jobs.get())  # in a function: nothing of a finished job stays alive here


def _run_one(job: Callable[[], Any], answer: _Answer | None) -> None:
    try:
        result = job()
    except BaseException as error:
        if answer is None:
            import traceback

            traceback.print_exc(file=sys.__stderr__)  # nobody waits for it: never silently
        else:
            answer.put((False, error))
    else:
        if answer is not None:
            answer.put((True, result))


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent, `parent_pid`, dies (0: do not ask).

    Run first thing in a child this module started (a pool worker, a dask scheduler or worker).
    Linux sends the signal when the parent *thread* that started this process ends: hence one
    thread that lives as long as its process starts them all.
    """
    if not parent_pid:
        return
    # ctypes is imported anyway (crossmemory): this costs microseconds. If prctl fails (a
    # seccomp filter), the socket lifeline remains.
    import ctypes

    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:  # it died before we asked, so no signal will come
        os._exit(0)
