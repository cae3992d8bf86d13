"""Shared fixtures: every test is bounded (pytest-timeout) and leaves no child process behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
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


def run_script(code: str, tmp_path: Path, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run `code` as a real `__main__` script (no guard) in a fresh interpreter."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=timeout,
        cwd=tmp_path, env=env, **kwargs,
    )
