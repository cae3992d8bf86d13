"""What differs between Python versions and platforms: each difference proven on this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from nbparallel import Parallel

from .conftest import ROOT


def run_strict(code: str, tmp_path, env: dict[str, str] | None = None):
    """Run `code` as a script under `python -X dev -W error` (unraisable exceptions, resource
    warnings and buffer errors at exit are all printed there)."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


@pytest.mark.parametrize("backend", ["processes", "threads"])
def test_nothing_is_printed_at_exit_after_failing_calls(tmp_path, backend):
    """A failing map, then a failing submit left uncaught: the interpreter prints the user's
    traceback and nothing else at exit (no BytesIO buffer still exported by a kept frame)."""
    result = run_strict(
        f"""
        from nbparallel import parallel
        parallel.configure(progress=False, backend={backend!r})
        def inverse(x):
            return 1 / x
        try:
            parallel.map(inverse, [1, 0, 2])
        except ZeroDivisionError:
            pass
        assert parallel.submit(inverse, 2).result() == 0.5
        parallel.submit(inverse, 0).result()
        """,
        tmp_path,
    )
    assert result.returncode == 1 and "ZeroDivisionError: division by zero" in result.stderr
    assert "Exception ignored" not in result.stderr, result.stderr
    assert "BufferError" not in result.stderr, result.stderr


# The ways large data can take, as each platform gets them (see "Every platform" in the README).
PLATFORM_WAYS = {
    "linux": {},
    "no-cross-memory": {"NBPARALLEL_NO_CROSS_MEMORY": "1"},
    "macos": {"NBPARALLEL_NO_CROSS_MEMORY": "1", "NBPARALLEL_NO_MEMFD": "1"},
    "no-fd-passing": {"NBPARALLEL_NO_CROSS_MEMORY": "1", "NBPARALLEL_NO_SHARED_FILES": "1"},
}


@pytest.mark.parametrize("way", list(PLATFORM_WAYS))
def test_large_items_captures_and_results_arrive_intact_whichever_way_they_take(tmp_path, way):
    """Big items, a big captured array and big results: correct with each platform's way (on
    Linux every way is taken by switching the others off), and each takes the way it should:
    lent items only where workers may read the notebook's memory, memfd only where it is on,
    shared files only where descriptors can be passed; nothing printed at exit."""
    pytest.importorskip("numpy")
    result = run_strict(
        """
        import json, os
        import numpy as np
        counts = {"memfd": 0, "shared": 0, "lent": 0, "received_shared": 0}
        real_memfd = getattr(os, "memfd_create", None)
        if real_memfd is not None:
            def counting_memfd(*args):
                counts["memfd"] += 1
                return real_memfd(*args)
            os.memfd_create = counting_memfd

        from nbparallel import parallel, transport
        def count(name, function):
            def counted(*args, **kwargs):
                counts[name] += 1
                return function(*args, **kwargs)
            return counted
        transport.SharedFrame.__init__ = count("shared", transport.SharedFrame.__init__)
        transport.LentFrame.__init__ = count("lent", transport.LentFrame.__init__)
        transport._receive_shared = count("received_shared", transport._receive_shared)
        parallel.configure(progress=False, workers=2)

        table = np.arange(2_000_000, dtype=np.float64)  # 16 MB, captured: shared with every worker
        def scaled(item):
            return item * 2 + table[:len(item)]          # a 12 MB result
        items = [np.full(1_500_000, float(k)) for k in range(4)]  # 12 MB each
        results = parallel.map(scaled, items)
        ok = all(np.array_equal(r, i * 2 + table[: len(i)]) for r, i in zip(results, items))
        print(json.dumps({"ok": ok, **counts}))
        """,
        tmp_path,
        env=PLATFORM_WAYS[way],
    )
    assert result.returncode == 0, result.stderr
    assert not result.stderr.strip(), result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["ok"]
    env = PLATFORM_WAYS[way]
    from nbparallel import crossmemory

    lending = "NBPARALLEL_NO_CROSS_MEMORY" not in env and crossmemory.allow_children_to_read()
    files = "NBPARALLEL_NO_SHARED_FILES" not in env
    assert (out["lent"] > 0) == lending, out
    assert (out["shared"] > 0) == files, out
    assert (out["received_shared"] > 0) == files, out  # the results came back in shared files
    assert (out["memfd"] > 0) == (files and "NBPARALLEL_NO_MEMFD" not in env), out


@pytest.mark.parametrize(
    "gil, expected",
    [(None, "processes"), (True, "processes"), (False, "threads")],
    ids=["before-3.13", "gil-on", "free-threaded"],
)
def test_the_default_backend_is_threads_exactly_where_the_gil_is_off(monkeypatch, gil, expected):
    """sys._is_gil_enabled() False (a free-threaded build): a new session runs on threads of
    this process; elsewhere on worker processes; backend= overrides the choice either way."""
    if gil is None:
        monkeypatch.delattr(sys, "_is_gil_enabled", raising=False)
    else:
        monkeypatch.setattr(sys, "_is_gil_enabled", lambda: gil, raising=False)
    own = Parallel()
    own.configure(progress=False, workers=2)
    try:
        assert own.options.backend == expected
        pids = set(own.map(lambda _: os.getpid(), range(4), chunksize=1))
        assert (pids == {os.getpid()}) == (expected == "threads")
        other = "processes" if expected == "threads" else "threads"
        pids = set(own.map(lambda _: os.getpid(), range(4), chunksize=1, backend=other))
        assert (pids == {os.getpid()}) == (other == "threads")
    finally:
        own.shutdown()


def test_dev_finds_an_interpreter_by_version_and_says_none_for_one_the_machine_lacks():
    """`dev.py find-python X.Y` (what CI uses to skip a missing Python): an interpreter that
    really is X.Y where there is one, None where there is not."""
    sys.path.insert(0, str(ROOT))
    try:
        import dev
    finally:
        sys.path.remove(str(ROOT))
    assert dev.find_python("2.1") is None
    # On PATH or in pyenv, if anywhere.
    found = dev.find_python("{}.{}".format(*sys.version_info[:2]))
    if found is not None:
        said = subprocess.run(
            [found, "-c", "import sys; print(sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        assert said.strip() == str(sys.version_info[:2])
