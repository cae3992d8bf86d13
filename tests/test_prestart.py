"""The pool starts before the first call in a kernel, and only there; workers import only what
runs tasks."""

from __future__ import annotations

import json

import pytest

from nbparallel import lifecycle

from .conftest import run_script, wait_until
from .kernel import Kernel

WAIT_SECONDS = 30  # booting takes a fraction of a second; this much means it did not happen


@pytest.fixture
def kernel(tmp_path):
    started = Kernel(tmp_path)
    yield started
    started.shutdown()


def alive(processes) -> set:
    return {p for p in processes if lifecycle.is_running(p)}


def load_and_wait(kernel: Kernel) -> set:
    """`%load_ext nbparallel` and no call: the workers that then appear by themselves."""
    kernel.ok("%load_ext nbparallel")
    return wait_until(kernel.workers, timeout=WAIT_SECONDS)


def exactly(kernel: Kernel, count: int):
    """The kernel's workers if there are `count` of them now, else None (for wait_until)."""
    workers = kernel.workers()
    return workers if len(workers) == count else None


@pytest.mark.kernel
def test_load_ext_starts_the_workers_and_the_first_cell_runs_on_those_same_workers(kernel):
    prestarted = load_and_wait(kernel)
    kernel.ok("import os\nparallel.configure(progress=False)")
    kernel.ok("%%parallel for n in range(20) -> pids --chunksize 1\nos.getpid()")
    pids = set(kernel.value("pids"))
    assert pids and pids <= {pid for pid, _ in prestarted}
    assert kernel.workers() == prestarted  # none replaced, none added


@pytest.mark.kernel
def test_importing_nbparallel_in_a_kernel_starts_the_workers(kernel):
    kernel.ok("import nbparallel")
    assert wait_until(kernel.workers, timeout=WAIT_SECONDS)


@pytest.mark.kernel
@pytest.mark.parametrize("same_cell", [True, False], ids=["same-cell", "next-cell"])
def test_configure_right_after_load_sets_the_number_of_workers(kernel, same_cell):
    wanted = kernel.value("__import__('os').cpu_count() + 1")  # never the default count
    load, configure = "%load_ext nbparallel", f"parallel.configure(workers={wanted})"
    if same_cell:
        kernel.ok(f"{load}\n{configure}")
    else:
        kernel.ok(load)
        kernel.ok(configure)
    workers = wait_until(lambda: exactly(kernel, wanted), timeout=WAIT_SECONDS)
    kernel.ok("import os")
    pids = kernel.value(f"parallel.map(lambda _: os.getpid(), range({4 * wanted}), chunksize=1)")
    assert set(pids) <= {pid for pid, _ in workers}
    kernel.ok("parallel.configure(workers=1)")
    wait_until(lambda: exactly(kernel, 1), timeout=WAIT_SECONDS)


@pytest.mark.kernel
def test_choosing_another_backend_right_after_load_stops_the_prestarted_workers(kernel):
    prestarted = load_and_wait(kernel)
    kernel.ok("parallel.configure(backend='threads', progress=False)")
    wait_until(lambda: not alive(prestarted), timeout=10)
    kernel.ok("import threading")
    names = kernel.value("parallel.map(lambda _: threading.current_thread().name, range(4))")
    assert all(name.startswith("nbparallel-thread") for name in names)
    assert kernel.workers() == set()


@pytest.mark.kernel
def test_load_ext_imports_the_call_machinery_in_the_background(kernel):
    """The first cell that maps does not pay for importing dill and the call machinery (about
    0.1 s): `%load_ext` has them imported while the user writes it."""
    kernel.ok("%load_ext nbparallel\nimport sys")
    wanted = "{'dill', 'nbparallel.calls', 'nbparallel.widget'} <= set(sys.modules)"
    assert wait_until(lambda: kernel.value(wanted), timeout=WAIT_SECONDS)


@pytest.mark.kernel
def test_unload_ext_stops_the_prestarted_workers(kernel):
    prestarted = load_and_wait(kernel)
    kernel.ok("%unload_ext nbparallel")
    wait_until(lambda: not alive(prestarted), timeout=10)


@pytest.mark.kernel
def test_prestarted_workers_are_recorded_and_go_with_the_kernel(kernel):
    prestarted = load_and_wait(kernel)

    def recorded() -> set:
        found = set()
        for path in lifecycle.state_dir().glob(f"{kernel.pid}-*.json"):
            found.update(tuple(worker) for worker in json.loads(path.read_text())["workers"])
        return found

    assert wait_until(lambda: recorded() == prestarted, timeout=10)
    kernel.manager.restart_kernel(now=True)
    wait_until(lambda: not alive(prestarted), timeout=5)


@pytest.mark.kernel
def test_nbparallel_prestart_0_turns_it_off(kernel_off):
    kernel_off.ok("import nbparallel\n%load_ext nbparallel")
    kernel_off.ok("from nbparallel.backends import launcher\nlauncher.run(lambda: None)")
    assert kernel_off.value("len(parallel.status().workers)") == 0
    assert kernel_off.workers() == set()


@pytest.fixture
def kernel_off(tmp_path, monkeypatch):
    monkeypatch.setenv("NBPARALLEL_PRESTART", "0")  # the kernel inherits it
    started = Kernel(tmp_path)
    yield started
    started.shutdown()


@pytest.mark.kernel
def test_a_worker_imports_neither_ipython_nor_widgets_nor_the_front_end(kernel):
    kernel.ok("%load_ext nbparallel\nparallel.configure(progress=False)\nimport sys")
    heavy = ["IPython", "ipywidgets", "tqdm", "nbparallel.api", "nbparallel.calls"]
    assert kernel.value("{'IPython', 'nbparallel.api'} <= set(sys.modules)")  # the kernel's
    imported = kernel.value(
        f"parallel.map(lambda _: [m for m in {heavy!r} if m in sys.modules], range(4))"
    )
    assert imported == [[]] * 4


def test_a_script_that_imports_nbparallel_starts_no_process(tmp_path):
    result = run_script(
        """
        import threading
        import psutil
        import nbparallel
        from nbparallel import parallel
        threads = [t.name for t in threading.enumerate() if t.name.startswith("nbparallel")]
        print(threads, psutil.Process().children(), len(parallel.status().workers))
        print(parallel.map(abs, [-1, -2], progress=False))
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[] [] 0", "[1, 2]"]


def test_importing_nbparallel_in_a_script_imports_none_of_the_heavy_modules(tmp_path):
    """`from nbparallel import parallel` in a plain script costs a few ms: dill, psutil, tqdm,
    ipywidgets and IPython are imported only once a call needs them."""
    result = run_script(
        """
        import sys
        from nbparallel import parallel
        heavy = ["dill", "psutil", "tqdm", "ipywidgets", "IPython", "nbparallel.calls"]
        print([m for m in heavy if m in sys.modules])
        print(parallel.map(lambda x: -x, [1, 2], progress=False))
        print([m for m in ["dill", "nbparallel.calls"] if m in sys.modules])
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "[-1, -2]", "['dill', 'nbparallel.calls']"]


def test_a_scripts_first_call_launches_its_workers_before_importing_dill(tmp_path):
    """The workers boot while the first call imports its machinery, not after: when each
    worker interpreter is started, dill is not imported yet in the script's process."""
    result = run_script(
        """
        import subprocess, sys
        launched = []
        original = subprocess.Popen.__init__
        def recording(self, *args, **kwargs):
            launched.append("dill" in sys.modules)
            original(self, *args, **kwargs)
        subprocess.Popen.__init__ = recording

        from nbparallel import parallel
        parallel.configure(workers=2, progress=False)
        print(parallel.map(lambda x: x * 10, range(3)), launched)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[0, 10, 20] [False, False]"]


@pytest.mark.parametrize("workers", [1, 3])
def test_a_configure_after_import_sizes_the_scripts_first_pool(tmp_path, workers):
    result = run_script(
        f"""
        import os
        from nbparallel import parallel
        parallel.configure(workers={workers}, progress=False)
        pids = set(parallel.map(lambda _: os.getpid(), range(12), chunksize=1))
        print(len(parallel.status().workers), pids <= {{w.pid for w in parallel.status().workers}})
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(workers), "True"]


def test_a_script_on_threads_or_with_bad_input_starts_no_process(tmp_path):
    """The first call starts worker processes only for its own backend, and only for input it
    will run: a TypeError for a non-callable or a non-iterable comes before any worker starts."""
    result = run_script(
        """
        import psutil
        from nbparallel import parallel
        parallel.configure(progress=False)
        for func, items in [(abs, 5), (5, [1]), (abs, None)]:
            try:
                parallel.map(func, items)
            except TypeError as error:
                print(type(error).__name__, psutil.Process().children())
        parallel.configure(backend="threads")
        print(parallel.map(abs, [-1, -2]), psutil.Process().children())
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["TypeError []"] * 3 + ["[1, 2] []"]
