"""Set-up and the two jobs of this repository, on a machine with only Python 3 and pip.

    python3 dev.py demo    run notebooks/quickstart.ipynb end to end in a real kernel
    python3 dev.py test    run the whole test suite (unit, real-kernel and notebook tests)

Each first makes `.venv` beside this file and installs nbparallel with its test extra into it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
TEST_COMMAND = ["-m", "pytest", "--nbval", "--nbval-current-env", "tests", "notebooks"]


def venv_python() -> Path:
    scripts = "Scripts" if os.name == "nt" else "bin"
    return VENV / scripts / ("python.exe" if os.name == "nt" else "python")


def install() -> Path:
    """Create the virtual environment (once) and install this package into it."""
    python = venv_python()
    if not python.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-e",
            f"{ROOT}[test]",
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
    if job not in ("demo", "test"):
        print(__doc__)
        return 2
    python = install()
    if job == "demo":
        command = [
            str(python),
            str(ROOT / "dev.py"),
            "_run-notebook",
            str(ROOT / "notebooks" / "quickstart.ipynb"),
        ]
    else:
        command = [str(python), *TEST_COMMAND, *argv[2:]]
    return subprocess.run(command, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv))
