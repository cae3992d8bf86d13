"""Shared fixtures: every test is bounded (pytest-timeout) and leaves no child process behind."""

from __future__ import annotations

import _thread
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from nbparallel import Parallel, parallel

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    """Worker records of this run (and of the kernels and scripts it starts) stay out of the user's.

    Made here rather than at import: workers (ours and Dask's) import this module to unpickle a
    test's function, and each would otherwise leave a directory of its own behind."""
    os.environ["NBPARALLEL_STATE_DIR"] = tempfile.mkdtemp(prefix="nbparallel-test-state-")
    # A shell starts a background job (`bash .ci/run &`) with SIGINT ignored, and Python then
    # keeps it ignored, so neither Ctrl-C nor _thread.interrupt_main() would reach the interrupt
    # tests: give this run the handler a foreground Python has.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def wait_until(condition, timeout: float = 10.0, interval: float = 0.02):
    """Poll `condition` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {condition}")
        time.sleep(interval)


class Interrupter(threading.Thread):
    """Sends SIGINT to the thread that made it (as Jupyter's Stop button does to the kernel) once
    `condition()` holds, and notes when in `sent_at` (time.monotonic). Sends nothing if the
    condition is not met within `timeout` seconds. With `by_signal=False` it only trips Python's
    SIGINT handler (`_thread.interrupt_main()`): no system call of the main thread is woken."""

    def __init__(self, condition, timeout: float = 30.0, by_signal: bool = True) -> None:
        super().__init__(name="test-interrupter", daemon=True)
        self._condition, self._timeout, self._by_signal = condition, timeout, by_signal
        self._victim = threading.get_ident()
        self.sent_at: float | None = None

    def run(self) -> None:
        try:
            wait_until(self._condition, timeout=self._timeout)
        except AssertionError:
            return  # the test then fails on its own: no KeyboardInterrupt came
        self.sent_at = time.monotonic()
        if self._by_signal:
            signal.pthread_kill(self._victim, signal.SIGINT)
        else:
            _thread.interrupt_main()


def interrupt_when(condition, timeout: float = 30.0, by_signal: bool = True) -> Interrupter:
    """Start an `Interrupter` for the calling thread (it must be the main thread)."""
    interrupter = Interrupter(condition, timeout, by_signal)
    interrupter.start()
    return interrupter


def every_worker_ready(session: Parallel, tmp_path: Path) -> set[int]:
    """Return once each of the `options.worker_count` workers a call of `session` uses has
    booted and run a task (their pids): so that what a test times next excludes start-up.

    Each item waits for all the others, so no worker can take two of them."""
    count = session.options.worker_count
    directory = Path(tempfile.mkdtemp(prefix="ready-", dir=tmp_path))

    def arrive(_):
        (directory / str(os.getpid())).touch()
        wait_until(lambda: len(list(directory.iterdir())) >= count, timeout=30)
        return os.getpid()

    return set(session.map(arrive, range(count), chunksize=1, progress=False))


def children() -> set[tuple[int, float]]:
    """This process's descendants, as (pid, creation time): a pid alone can be reused."""
    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            found.add((child.pid, child.create_time()))
        except psutil.NoSuchProcess:
            pass
    return found


# Sessions kept across several tests (besides `parallel`): their workers are not leaks.
KEPT_SESSIONS: list[Parallel] = []


def leaked(before: set[tuple[int, float]]) -> set[tuple[int, float]]:
    """Processes started since `before` that are neither the workers of a kept session nor
    descendants of a process that was already there (a kernel kept for several tests owns those)."""
    allowed = {w.pid for session in [parallel, *KEPT_SESSIONS] for w in session.status().workers}
    kept = {pid for pid, _ in before}
    found = set()
    for pid, created in children() - before:
        try:
            ancestors = {p.pid for p in psutil.Process(pid).parents()}
        except psutil.NoSuchProcess:
            continue
        if pid not in allowed and not ancestors & kept:
            found.add((pid, created))
    return found


@pytest.fixture(autouse=True)
def no_leaked_processes():
    """After each test, nothing it started is left running."""
    before = children()
    yield
    wait_until(lambda: not leaked(before), timeout=10)


@pytest.fixture(scope="session", autouse=True)
def pool_ends_with_the_session():
    """Shutting the session's pool down leaves no child process at all."""
    yield
    parallel.shutdown()
    wait_until(lambda: not children(), timeout=10)
    shutil.rmtree(os.environ["NBPARALLEL_STATE_DIR"], ignore_errors=True)


@pytest.fixture
def quiet_progress():
    """The session pool without progress bars, for tests that do not look at them."""
    parallel.configure(progress=False)
    yield
    parallel.configure(progress=True)


@pytest.fixture
def session():
    """A separate `Parallel` session (own pool, no progress bars), shut down after the test."""
    own = Parallel()
    own.configure(progress=False)
    yield own
    own.shutdown()


def run_script(
    code: str, tmp_path: Path, timeout: float = 60, **kwargs
) -> subprocess.CompletedProcess[str]:
    """Run `code` as a real `__main__` script (no guard) in a fresh interpreter."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
        env=env,
        **kwargs,
    )


def counting_shared_files(monkeypatch) -> list[int]:
    """Count the shared files this process creates from now on (one entry each)."""
    from nbparallel import transport

    created: list[int] = []
    original = transport._anonymous_file

    def counted() -> int:
        created.append(1)
        return original()

    monkeypatch.setattr(transport, "_anonymous_file", counted)
    return created


def shared_files(pid: int) -> tuple[set[int], set[int]]:
    """The nbparallel shared files process `pid` holds open, and those it maps (Linux /proc)."""
    proc = Path(f"/proc/{pid}")
    opened = set()
    for fd in (proc / "fd").iterdir():
        try:
            if "nbparallel-frame" in os.readlink(fd):
                opened.add(fd.stat().st_ino)
        except FileNotFoundError:  # closed meanwhile (the listing's own descriptor, say)
            continue
    mapped = {
        int(line.split()[4])
        for line in (proc / "maps").read_text().splitlines()
        if "nbparallel-frame" in line
    }
    return opened, mapped
