"""The package as shipped: typed, and type-correct."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import nbparallel

PACKAGE = Path(nbparallel.__file__).parent


def test_package_ships_py_typed():
    assert (PACKAGE / "py.typed").is_file()


@pytest.mark.timeout(240)
def test_mypy_finds_no_errors_in_the_package():
    result = subprocess.run(
        [sys.executable, "-m", "mypy", str(PACKAGE)], capture_output=True, text=True, timeout=230,
        cwd=PACKAGE.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
