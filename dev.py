"""Set-up and the two jobs of this repository, on a machine with only Python 3 and pip.

    python3 dev.py demo    run notebooks/quickstart.ipynb end to end in a real kernel
    python3 dev.py test    run the whole test suite (unit, real-kernel and notebook tests)

Each first makes `.venv` beside this file and installs nbparallel with its test extra into it.

    python3 dev.py test --python 3.13 --fast    the fast subset, in `.venv-3.13`, on Python 3.13
    python3 dev.py find-python 3.13             where Python 3.13 is (exit 1 if this machine lacks it)

`--python X.Y` runs in `.venv-X.Y`, made with that interpreter (found as `pythonX.Y` on PATH or
in pyenv's versions folder). `--fast` runs FAST_SUBSET (everything but the browser test, the
notebooks and the slowest real-kernel tests) and installs the lighter `test-fast` extra.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
TEST_COMMAND = ["-m", "pytest", "--nbval", "--nbval-current-env", "tests", "notebooks"]
# The fast subset: every test but the browser's, the notebooks' and the slowest real-kernel tests
# (each kernel-exit and dask-cluster case starts kernels of its own: they are most of the suite's
# time and depend on the kernel, not on the Python version). See "Every Python" in the README.
OLDEST_PYTHON = (3, 10)  # requires-python in pyproject.toml
FAST_SUBSET = ["-m", "pytest", "tests", "-m", "not browser and not slow"]


def venv_python(where: Path = VENV) -> Path:
    scripts = "Scripts" if os.name == "nt" else "bin"
    return where / scripts / ("python.exe" if os.name == "nt" else "python")


def find_python(version: str) -> str | None:
    """An interpreter of `version` ("3.13"; "3.13t" for a free-threaded one) on this machine:
    `python3.13` on PATH, else the newest 3.13.N in pyenv's versions folder. Each candidate is
    run to check what it is (a pyenv shim for a version not selected only prints an error)."""
    free_threaded = version.endswith("t")
    number = version.removesuffix("t")
    candidates = [shutil.which(f"python{version}")]
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    versions = Path(pyenv_root) / "versions"
    if versions.is_dir():
        found = [
            d
            for d in versions.iterdir()
            if d.name.startswith(number + ".") and d.name.endswith("t") == free_threaded
        ]
        for folder in sorted(found, key=lambda d: _version_key(d.name), reverse=True):
            candidates.append(str(folder / "bin" / f"python{version}"))
            candidates.append(str(folder / "bin" / "python3"))
    check = (
        "import sys, sysconfig; print('%d.%d' % sys.version_info[:2]"
        " + ('t' if sysconfig.get_config_var('Py_GIL_DISABLED') else ''))"
    )
    for candidate in candidates:
        if not candidate or not os.access(candidate, os.X_OK):
            continue
        try:
            said = subprocess.run(
                [candidate, "-c", check], capture_output=True, text=True, timeout=30
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            continue
        if said == version:
            return candidate
    return None


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.removesuffix("t").split(".") if part.isdigit())


def install(where: Path = VENV, interpreter: str | None = None, extra: str = "test") -> Path:
    """Create the virtual environment (once, with `interpreter` if given, else this one) and
    install this package into it with `extra`."""
    python = venv_python(where)
    if not python.exists():
        print(f"creating {where}", flush=True)
        if interpreter is None:
            venv.EnvBuilder(with_pip=True).create(where)
        else:
            subprocess.run([interpreter, "-m", "venv", str(where)], check=True)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-e",
            f"{ROOT}[{extra}]",
        ],
        check=True,
    )
    return python


def run_notebook(path: str) -> None:
    """Execute a notebook in a fresh kernel and print what each cell showed (inside the venv)."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT / "notebooks")}},
    ).execute()
    for number, cell in enumerate(c for c in notebook.cells if c.cell_type == "code"):
        print(f"--- In [{number + 1}]: {cell.source.splitlines()[0] if cell.source else ''}")
        for output in cell.get("outputs", []):
            if output.output_type == "stream" and output.name == "stdout":
                print(output.text, end="")
            elif "data" in output and "text/plain" in output.data:
                print(output.data["text/plain"])
    print(f"{path}: all {number + 1} code cells ran without error")


def main(argv: list[str]) -> int:
    job = argv[1] if len(argv) > 1 else ""
    if job == "_run-notebook":
        run_notebook(argv[2])
        return 0
    if job == "find-python" and len(argv) == 3:
        found = find_python(argv[2])
        if found is None:
            print(
                f"no Python {argv[2]} on this machine (not on PATH, not in pyenv)", file=sys.stderr
            )
            return 1
        print(found)
        return 0
    if job not in ("demo", "test"):
        print(__doc__)
        return 2
    rest = argv[2:]
    where, interpreter, extra = VENV, None, "test"
    if "--python" in rest:
        at = rest.index("--python")
        version = rest[at + 1] if at + 1 < len(rest) else ""
        del rest[at : at + 2]
        if _version_key(version)[:2] < OLDEST_PYTHON:
            print(f"Python {version!r} is not supported: nbparallel needs 3.10 or later")
            return 2
        interpreter = find_python(version)
        if interpreter is None:
            print(f"no Python {version!r} on this machine (not on PATH, not in pyenv)")
            return 1
        where = ROOT / f".venv-{version}"
    fast = "--fast" in rest
    if fast:
        rest.remove("--fast")
        extra = "test-fast"
    python = install(where, interpreter, extra)
    if job == "demo":
        command = [
            str(python),
            str(ROOT / "dev.py"),
            "_run-notebook",
            str(ROOT / "notebooks" / "quickstart.ipynb"),
        ]
    else:
        command = [str(python), *(FAST_SUBSET if fast else TEST_COMMAND), *rest]
    return subprocess.run(command, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv))
