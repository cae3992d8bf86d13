"""What differs between Python versions and platforms: each difference proven on this machine."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

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
