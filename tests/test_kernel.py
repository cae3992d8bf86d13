"""Notebook life in a real kernel: the extension, the magics, and workers that follow the kernel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from nbparallel import lifecycle, parallel
from nbparallel.backends import launcher

from .conftest import wait_until
from .kernel import Kernel

pytestmark = pytest.mark.kernel


@pytest.fixture
def kernel(tmp_path):
    started = Kernel(tmp_path)
    yield started
    started.shutdown()


@pytest.fixture(scope="module")
def shared_kernel(tmp_path_factory):
    """One kernel for the tests that leave it usable, with the extension loaded."""
    started = Kernel(tmp_path_factory.mktemp("kernel"))
    started.ok("%load_ext nbparallel\nparallel.configure(progress=False)")
    yield started
    started.shutdown()


def alive(processes) -> set:
    return {p for p in processes if lifecycle.is_running(p)}


# --- the extension and the magics ---------------------------------------------------------


def test_load_ext_twice_is_harmless_and_unload_removes_everything(kernel):
    first = kernel.ok(
        "%load_ext nbparallel\n%load_ext nbparallel\n%reload_ext nbparallel\nprint(type(parallel).__name__)"
    )
    assert first.stdout.splitlines()[-1] == "Parallel"
    assert kernel.value("parallel.map(abs, range(-4, 4), progress=False)") == [
        4,
        3,
        2,
        1,
        0,
        1,
        2,
        3,
    ]
    workers = kernel.workers()
    assert workers
    kernel.ok("%unload_ext nbparallel")
    assert kernel.run("parallel").ename == "NameError"
    assert kernel.run("%%parallel for x in [1]\nx").ename == "UsageError"
    wait_until(lambda: not alive(workers), timeout=5)


def test_cell_magic_maps_the_body_and_binds_results_in_input_order(shared_kernel, tmp_path):
    files = []
    for n in range(6):
        path = tmp_path / f"f{n}.txt"
        path.write_text("x" * n)
        files.append(str(path))
    shared_kernel.ok(f"files = {files!r}")
    shared_kernel.ok("%%parallel for path in files -> sizes\ntext = open(path).read()\nlen(text)")
    assert shared_kernel.value("sizes") == [0, 1, 2, 3, 4, 5]
    assert shared_kernel.run("text").ename == "NameError"  # assignments stay in the workers


def test_cell_magic_options_tuple_targets_and_shown_results(shared_kernel):
    shared_kernel.ok("scale = 10")
    shown = shared_kernel.ok(
        "%%parallel for a, b in [(1, 2), (3, 4)] --workers 1 --chunksize 1\n(a + b) * scale"
    )
    assert shown.results == ["[30, 70]"]
    shared_kernel.ok("import threading")
    threaded = shared_kernel.ok(
        "%%parallel for n in [1, 2] --backend threads\nthreading.current_thread().name"
    )
    assert "nbparallel-thread" in threaded.results[0]
    shared_kernel.ok("%%parallel for n in range(20) -> out --unordered --no-progress\nn * n")
    assert sorted(shared_kernel.value("out")) == [n * n for n in range(20)]


def test_cell_magic_error_is_the_users_exception_with_the_cell_line(shared_kernel):
    reply = shared_kernel.run(
        "%%parallel for word in ['1', 'two'] -> numbers\nvalue = int(word)\nvalue"
    )
    assert reply.ename == "ValueError"
    traceback = shared_kernel.ok(
        "import traceback\ntry:\n    parallel.map(int, ['x'])\nexcept ValueError as e:\n    print(e.__notes__)"
    )
    assert "item 0: 'x'" in traceback.stdout


@pytest.mark.parametrize(
    "line, message",
    [
        ("%%parallel", "for NAME in ITERABLE"),
        ("%%parallel path in files", "for NAME in ITERABLE"),
        ("%%parallel for 1 in files", "cannot be assigned"),
        ("%%parallel for x in [1] -> 2bad", "must be a variable name"),
        ("%%parallel for x in [1] --workers 0", "workers=0 is not valid"),
        ("%%parallel for x in [1] --speed 3", "unrecognized arguments"),
        (
            "%%parallel for x in [1] --backend spark",
            "unknown backend 'spark'; the backends are: processes, threads, dask",
        ),
        (
            "%%parallel for x in [1] --background --unordered",
            "--background collects results in input order",
        ),
        (
            "%%parallel --every-worker --insights --workers 3",
            "recording and showing nothing: drop --workers, --insights",
        ),
    ],
)
def test_malformed_magic_line_raises_usage_error_saying_what_to_write(shared_kernel, line, message):
    reply = shared_kernel.run(f"{line}\nx")
    assert reply.ename == "UsageError", (reply.ename, reply.evalue)
    assert message in reply.evalue


def test_magic_help_shows_the_syntax(shared_kernel):
    reply = shared_kernel.ok("%%parallel?")
    assert "%%parallel for NAME in ITERABLE [-> RESULT]" in reply.payload_text
    assert "--every-worker" in reply.payload_text


def test_every_worker_cell_defines_names_for_later_tasks_and_new_workers_replay_it(
    shared_kernel, tmp_path
):
    count = shared_kernel.value("parallel.options.worker_count")
    shared_kernel.ok("base = 21")
    reply = shared_kernel.ok(
        "%%parallel --every-worker\nimport math as worker_math\nsecret = base * 2"
    )
    assert reply.stdout.strip() == f"ran on {count} workers"
    assert shared_kernel.run("secret").ename == "NameError"  # it ran in the workers only
    assert shared_kernel.value("parallel.map(lambda x: secret + x, range(4), chunksize=1)") == [
        42,
        43,
        44,
        45,
    ]
    before = {pid for pid, _ in shared_kernel.workers()}
    assert (
        shared_kernel.run("import os\nparallel.map(lambda x: os._exit(1), [0])").ename
        == "WorkerDiedError"
    )
    # Each item waits until every worker has one, so every worker runs one: the replacement too.
    arrived = tmp_path / "arrived"
    arrived.mkdir()
    shared_kernel.ok(
        "import time\n"
        "def where(x):\n"
        f"    arrived = {str(arrived)!r}\n"
        "    open(os.path.join(arrived, str(os.getpid())), 'w').close()\n"
        "    end = time.monotonic() + 30\n"
        f"    while len(os.listdir(arrived)) < {count} and time.monotonic() < end:\n"
        "        time.sleep(0.01)\n"
        "    return os.getpid(), secret, worker_math.pi > 3"
    )
    seen = shared_kernel.value(f"sorted(set(parallel.map(where, range({count}), chunksize=1)))")
    pids = {pid for pid, _, _ in seen}
    assert len(pids) == count and pids - before, "a replacement worker ran tasks"
    assert all(value == 42 and has_import for _, value, has_import in seen)


def test_line_magic_status_workers_restart_shutdown(shared_kernel):
    count = shared_kernel.value("parallel.options.worker_count")
    shared_kernel.ok("parallel.map(abs, range(4))")
    status = shared_kernel.ok("%parallel").results[0]
    assert f"nbparallel: {count} workers" in status and "idle" in status and "MiB" in status
    shared_kernel.ok("%parallel workers 1")
    wait_until(lambda: len(shared_kernel.workers()) == 1)
    before = shared_kernel.workers()
    assert shared_kernel.ok("%parallel restart").stdout.strip() == "nbparallel: workers restarted"
    wait_until(lambda: shared_kernel.workers() and not (shared_kernel.workers() & before))
    assert shared_kernel.ok("%parallel shutdown").stdout.strip() == "nbparallel: workers stopped"
    wait_until(lambda: not shared_kernel.workers(), timeout=5)
    assert shared_kernel.run("%parallel frobnicate").ename == "UsageError"
    shared_kernel.ok(f"%parallel workers {count}")  # as it was, for the tests after this one


def test_print_inside_a_task_shows_in_the_cell_in_order_per_worker(shared_kernel):
    reply = shared_kernel.ok(
        "import os\n_ = parallel.map(lambda x: print(os.getpid(), x), range(40), chunksize=2)"
    )
    lines = [line.split() for line in reply.stdout.splitlines()]
    assert sorted(int(x) for _, x in lines) == list(range(40))
    by_worker: dict[str, list[int]] = {}
    for pid, x in lines:
        by_worker.setdefault(pid, []).append(int(x))
    assert all(items == sorted(items) for items in by_worker.values())


def test_rerunning_a_cell_never_adds_processes(kernel):
    cell = (
        "from nbparallel import parallel\nparallel.map(lambda x: x * 2, range(100), progress=False)"
    )
    kernel.ok(cell)
    after_first = kernel.workers()
    for _ in range(5):
        kernel.ok(cell)
    assert kernel.workers() == after_first


# --- the pool follows the kernel ----------------------------------------------------------

START_MARKERS = """
import os, time
from pathlib import Path
from nbparallel import parallel
marks = Path({directory!r})
def slow(n, busy="busy"):
    (marks / f"start-{{n}}-{{time.time():.3f}}").touch()
    if n < {fast}:
        return n
    if busy == "holding-the-gil":
        return sum(range(10**12))  # one C call of hours that never lets another thread run
    end = time.time() + 120
    while time.time() < end:   # a busy task: burns CPU until stopped
        if busy == "printing":
            print("still working on", n)
    return n
"""


def started(directory) -> dict[int, float]:
    found = {}
    for path in directory.glob("start-*"):
        _, n, when = path.name.split("-", 2)
        found[int(n)] = float(when)
    return found


def end_kernel(kernel, how: str) -> None:
    """End the kernel as Jupyter does (restart, shutdown) or as a crash does (SIGKILL)."""
    if how == "restart-now":
        kernel.manager.restart_kernel(now=True)
    elif how == "restart-graceful":
        kernel.manager.restart_kernel(now=False)
    elif how == "shutdown":
        kernel.manager.shutdown_kernel(now=False)
    else:
        os.kill(kernel.pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["restart-now", "restart-graceful", "shutdown", "sigkill"])
@pytest.mark.parametrize("busy", ["idle", "busy", "printing", "holding-the-gil"])
def test_workers_are_gone_within_2s_when_the_kernel_goes(kernel, tmp_path, how, busy):
    """Idle, busy, busy printing (output must not keep a worker alive), or stuck in one C call
    that holds the GIL (the worker's reader thread never runs, so it cannot see the EOF)."""
    kernel.ok(START_MARKERS.format(directory=str(tmp_path), fast=0))
    kernel.ok("parallel.map(abs, range(4), progress=False)")
    count = kernel.value("parallel.options.worker_count")
    workers = kernel.workers()
    assert len(workers) == count
    if busy != "idle":
        kernel.send(
            f"parallel.map(lambda n: slow(n, {busy!r}), range(50), chunksize=1, progress=False)"
        )
        wait_until(lambda: len(started(tmp_path)) >= count)  # every worker is in an item
    gone_at = time.time()
    end_kernel(kernel, how)
    wait_until(lambda: not alive(workers), timeout=2.0)
    if busy != "idle":
        # No queued task of the dead kernel's map started after the kernel went.
        assert max(started(tmp_path).values()) < gone_at + 0.5


STARTERS = {  # the pool starts, so its workers are started, on a thread that then ends
    "map_async": "handle = parallel.map_async(where, range(8), chunksize=1)\n"
    "pids = set(handle.result(30))\nstarter = handle._thread",
    "a thread of the user's": "pids = set()\nstarter = threading.Thread(target=lambda: "
    "pids.update(parallel.map(where, range(8), chunksize=1)))\n"
    "starter.start()\nstarter.join(30)",
}


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sees the thread end in /proc")
@pytest.mark.parametrize("starter", list(STARTERS))
def test_workers_live_on_when_the_thread_that_started_them_ends(kernel, starter):
    """Linux sends the parent-death signal when the *thread* that started a process ends: the
    workers must die with the kernel, not with whichever of its threads started them."""
    kernel.ok(
        "import os, threading, time\nfrom nbparallel import parallel\n"
        "parallel.configure(workers=2, progress=False)\ndef where(_):\n"
        "    time.sleep(0.05)  # long enough for both workers to take tasks\n    return os.getpid()"
    )
    kernel.ok(STARTERS[starter])
    # join() returns a moment before the thread is gone, and the signal is sent once it is.
    kernel.ok(
        "deadline = time.monotonic() + 10\n"
        "while os.path.exists(f'/proc/self/task/{starter.native_id}'):\n"
        "    assert time.monotonic() < deadline, 'the thread did not end'\n    time.sleep(0.01)"
    )
    started_there = set(kernel.value("sorted(pids)"))
    workers = kernel.workers()
    assert len(started_there) == 2 and {pid for pid, _ in workers} == started_there
    assert set(kernel.value("parallel.map(where, range(8), chunksize=1)")) == started_there
    assert alive(workers) == workers


@pytest.mark.slow
@pytest.mark.parametrize("how", ["shutdown", "restart-graceful"])
def test_a_kernel_asked_to_exit_stops_its_pool_and_exits_by_itself(kernel, tmp_path, how):
    """ipykernel ends the kernel's child processes on its way out. A pool still running would
    replace each worker it ends, the kernel would miss jupyter_client's deadline and be killed:
    no atexit handler would run, and the pool's worker record would stay behind."""
    ran = tmp_path / "atexit-ran"
    kernel.ok(
        f"import atexit, pathlib\natexit.register(pathlib.Path({str(ran)!r}).touch)\n"
        "from nbparallel import parallel\nparallel.map(abs, range(4), progress=False)"
    )
    process = kernel.manager.provisioner.process  # type: ignore[union-attr]
    assert list(lifecycle.state_dir().glob(f"{process.pid}-*.json"))  # the pool's record
    end_kernel(kernel, how)
    assert process.wait(10) == 0  # not killed by jupyter_client (-SIGTERM, -SIGKILL)
    assert ran.exists()
    assert not list(lifecycle.state_dir().glob(f"{process.pid}-*.json"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "how, busy",
    [
        ("restart-now", "busy"),
        ("shutdown", "busy"),
        ("sigkill", "busy"),
        ("sigkill", "holding-the-gil"),
    ],
)
def test_the_local_dask_cluster_is_gone_within_2s_when_the_kernel_goes(kernel, tmp_path, how, busy):
    """Its scheduler and workers are not in the kernel's process group (so that Stop spares
    them): they go because each holds a pipe only the kernel can keep open, and, on Linux, asked
    to be killed with the kernel (a task holding the GIL keeps the pipe's thread from running)."""
    kernel.ok(START_MARKERS.format(directory=str(tmp_path), fast=0))
    kernel.ok(
        "parallel.configure(backend='dask', workers=2, progress=False)\nparallel.map(abs, [1])"
    )
    cluster = {
        lifecycle.identify(p.pid) for p in psutil.Process(kernel.pid).children(recursive=True)
    } - {None}
    assert len(cluster) == 3  # a scheduler and two workers
    kernel.send(f"parallel.map(lambda n: slow(n, {busy!r}), range(4), chunksize=1)")
    wait_until(lambda: len(started(tmp_path)) >= 2)  # both workers are busy
    end_kernel(kernel, how)
    wait_until(lambda: not alive(cluster), timeout=2.0)


def test_interrupt_stops_the_call_at_once_and_the_next_map_runs(kernel, tmp_path):
    """The map raises KeyboardInterrupt within 1 s of Stop, timed in the kernel (time.monotonic
    is one clock for every process): the cell's reply then waits for IPython's traceback too,
    which shares the CPUs with the replacement workers booting."""
    kernel.ok(START_MARKERS.format(directory=str(tmp_path), fast=4))
    kernel.ok("parallel.configure(progress=False)\nparallel.map(abs, range(4))")
    count = kernel.value("parallel.options.worker_count")
    msg_id = kernel.send(
        "try:\n    results = parallel.map(slow, range(40), chunksize=1)\n"
        "except KeyboardInterrupt:\n    raised_at = time.monotonic()\n    raise"
    )
    wait_until(lambda: len(started(tmp_path)) >= 4 + count)  # the 4 fast items, then one per worker
    busy = kernel.workers()
    interrupted_at = time.monotonic()
    kernel.manager.interrupt_kernel()
    reply = kernel.reply(msg_id, timeout=10)
    assert reply.ename == "KeyboardInterrupt"
    assert kernel.value("raised_at") - interrupted_at < 1.0
    wait_until(lambda: not alive(busy), timeout=2.0)  # busy workers stopped: no CPU burnt after
    count = len(started(tmp_path))
    next_map_started = time.monotonic()
    assert kernel.value("parallel.map(lambda x: x + 1, range(10))") == list(range(1, 11))
    assert time.monotonic() - next_map_started < 3.0
    assert len(started(tmp_path)) == count  # no queued task of the interrupted call started
    partial = kernel.value("{str(k): v for k, v in parallel.partial_results().items()}")
    assert partial == {"0": 0, "1": 1, "2": 2, "3": 3}


@pytest.mark.slow
def test_interrupt_leaves_the_dask_cluster_nbparallel_started_running(kernel, tmp_path):
    """The Stop button stops the cell's dask call, not the local cluster: the next call runs on it."""
    kernel.ok(START_MARKERS.format(directory=str(tmp_path), fast=0))
    kernel.ok(
        "parallel.configure(backend='dask', workers=2, progress=False)\nparallel.map(abs, [1])"
    )
    cluster = {
        lifecycle.identify(p.pid) for p in psutil.Process(kernel.pid).children(recursive=True)
    } - {None}
    # A dask task cannot be stopped once it runs: these end by themselves, 2 s after they start.
    kernel.ok(
        "def nap(n):\n    (marks / f'start-{n}-{time.time():.3f}').touch()\n    time.sleep(2)\n    return n"
    )
    msg_id = kernel.send("parallel.map(nap, range(4), chunksize=1)")
    wait_until(lambda: len(started(tmp_path)) >= 2)  # both dask workers are in a task
    kernel.manager.interrupt_kernel()
    assert kernel.reply(msg_id, timeout=10).ename == "KeyboardInterrupt"
    assert kernel.value("parallel.map(lambda x: x * 3, range(5))") == [0, 3, 6, 9, 12]
    assert cluster and all(lifecycle.is_running(process) for process in cluster)
    kernel.ok("parallel.shutdown()")


def test_interrupt_while_workers_boot_does_not_kill_them(kernel):
    """Workers started a moment before a Stop click survive it (they ignore SIGINT from birth)."""
    kernel.ok(
        "import os\nfrom nbparallel import parallel\nparallel.configure(progress=False)\nparallel.map(abs, [1])"
    )
    kernel.ok("parallel.restart()")
    booting = kernel.workers()
    for _ in range(3):
        kernel.manager.interrupt_kernel()
    pids = kernel.value("parallel.map(lambda _: os.getpid(), range(8), chunksize=1)")
    assert len(pids) == 8 and set(pids) <= {pid for pid, _ in booting}
    assert alive(booting) == booting


@pytest.mark.parametrize(
    "trigger, says",
    [
        ("%load_ext nbparallel", "stopped 1 worker process left behind by a kernel that is gone"),
        ("from nbparallel import parallel\nparallel.map(abs, [1], progress=False)", ""),
    ],
    ids=["load-ext", "pool-start"],
)
def test_extension_load_or_pool_start_stops_workers_left_by_dead_kernels(kernel, trigger, says):
    """Only processes whose pid *and* creation time match the record of a dead owner are
    stopped: not a reused pid, not the workers of a live pool in another process."""
    parallel.map(abs, range(4), progress=False)  # a live pool of this process, and its record
    launcher.run(lambda: None)  # after its own sweep, before the dead owner's record is written
    live_pool = {lifecycle.identify(w.pid) for w in parallel.status().workers}
    python = [sys.executable, "-c", "import time; time.sleep(120)"]
    owner = subprocess.Popen(python)
    orphan = subprocess.Popen(python)
    bystander = subprocess.Popen(python)
    try:
        owner_id = lifecycle.identify(owner.pid)
        owner.kill()
        owner.wait(10)
        orphan_id = lifecycle.identify(orphan.pid)
        bystander_id = lifecycle.identify(bystander.pid)
        record = {
            "owner": owner_id,
            "workers": [orphan_id, (bystander_id[0], bystander_id[1] - 1000.0)],
        }
        lifecycle.state_dir().mkdir(parents=True, exist_ok=True)
        (lifecycle.state_dir() / "dead-owner.json").write_text(json.dumps(record))
        assert says in kernel.ok(trigger).stdout
        kernel.ok("from nbparallel.backends import launcher\nlauncher.run(lambda: None)")  # swept
        assert orphan.wait(5) == -signal.SIGKILL
        assert bystander.poll() is None  # same pid, other creation time: never touched
        assert live_pool and alive(live_pool) == live_pool
        assert not (lifecycle.state_dir() / "dead-owner.json").exists()
    finally:
        for process in (orphan, bystander):
            process.kill()
            process.wait(10)
