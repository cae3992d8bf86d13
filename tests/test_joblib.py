"""The joblib backend in this process: joblib's backend contract, scikit-learn, n_jobs, fallbacks."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time

import pytest

joblib = pytest.importorskip("joblib")

from joblib import Parallel, delayed  # noqa: E402

from nbparallel import OptionError, TaskExitError, parallel  # noqa: E402
from nbparallel.joblib_backend import NbParallelBackend, grown_batch_size  # noqa: E402
from nbparallel.thread_limits import ENVIRONMENT  # noqa: E402

from .conftest import ROOT, run_script  # noqa: E402

pytestmark = pytest.mark.usefixtures("quiet_progress")


def script_ran(code: str, tmp_path) -> subprocess.CompletedProcess[str]:
    """`code` run as a script; it must have exited 0."""
    done = run_script(code, tmp_path)
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture
def on_nbparallel():
    with joblib.parallel_config(backend="nbparallel"):
        yield


def pool_pids() -> set[int]:
    return {w.pid for w in parallel.status().workers}


def test_ordered_results_come_from_the_pool_workers_with_a_lambda_that_captures(on_nbparallel):
    """A lambda capturing a local goes by value (dill); the tasks run in the session's workers."""
    factor = 3
    results = Parallel(n_jobs=-1)(
        delayed(lambda x: (x * factor, os.getpid()))(x) for x in range(50)
    )
    assert [value for value, _ in results] == [x * 3 for x in range(50)]
    assert {pid for _, pid in results} <= pool_pids()
    assert os.getpid() not in {pid for _, pid in results}


def test_a_value_changed_between_two_joblib_calls_is_seen_by_the_next(on_nbparallel):
    """The function goes by value once per joblib call (not per batch), and anew for the next."""
    box = [1]
    add = lambda x: x + box[0]  # noqa: E731
    assert Parallel(n_jobs=2)(delayed(add)(x) for x in range(300)) == [x + 1 for x in range(300)]
    box[0] = 100
    assert Parallel(n_jobs=2)(delayed(add)(x) for x in range(300)) == [x + 100 for x in range(300)]


def test_the_older_parallel_backend_spelling_runs_on_the_pool():
    with joblib.parallel_backend("nbparallel"):
        pids = set(Parallel(n_jobs=2, batch_size=1)(delayed(os.getpid)() for _ in range(6)))
    assert pids <= pool_pids() and os.getpid() not in pids


def test_workers_are_the_same_warm_workers_as_parallel_map(on_nbparallel):
    map_pids = set(parallel.map(lambda _: os.getpid(), range(8), chunksize=1))
    joblib_pids = set(Parallel(n_jobs=-1, batch_size=1)(delayed(os.getpid)() for _ in range(8)))
    assert joblib_pids <= pool_pids() and map_pids <= pool_pids()


@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
def test_generator_returns(on_nbparallel, return_as):
    out = Parallel(n_jobs=2, return_as=return_as)(delayed(abs)(-x) for x in range(100))
    assert not isinstance(out, list)
    results = list(out)
    assert (results if return_as == "generator" else sorted(results)) == list(range(100))


def test_leaving_a_generator_early_stops_the_call_and_the_pool_stays_usable(on_nbparallel):
    out = Parallel(n_jobs=2, return_as="generator", batch_size=1)(
        delayed(lambda x: x if x < 2 else time.sleep(60))(x) for x in range(8)
    )
    started = time.monotonic()
    with pytest.warns(UserWarning):  # joblib's own: tasks were cancelled
        for result in out:
            if result == 1:
                break
        del out
    assert time.monotonic() - started < 10
    assert Parallel(n_jobs=2)(delayed(abs)(-x) for x in range(4)) == [0, 1, 2, 3]


def test_the_users_exception_type_comes_back_naming_the_joblib_task(on_nbparallel):
    def check(x):
        if x == 37:
            raise KeyError(f"no row {x}")
        return x

    with pytest.raises(KeyError, match="no row 37") as caught:
        Parallel(n_jobs=2)(delayed(check)(x) for x in range(100))
    notes = getattr(caught.value, "__notes__", [])
    if sys.version_info >= (3, 11):
        assert any("joblib task 37: check(37)" in note for note in notes), notes
        assert not any("item 0" in note for note in notes), notes
    assert caught.value.__cause__ is not None  # the worker's traceback


def test_an_error_aborts_the_rest_at_once_and_the_pool_stays_usable(on_nbparallel):
    """Task 0 fails at once while the others would sleep 60 s: running ones are stopped."""
    started = time.monotonic()
    with pytest.raises(ZeroDivisionError):
        Parallel(n_jobs=2, batch_size=1)(
            delayed(lambda x: 1 / 0 if x == 0 else time.sleep(60))(x) for x in range(10)
        )
    assert time.monotonic() - started < 10
    assert Parallel(n_jobs=2)(delayed(abs)(-x) for x in range(4)) == [0, 1, 2, 3]


def test_timeout_raises_timeout_error_and_stops_the_task(on_nbparallel):
    started = time.monotonic()
    with pytest.raises(multiprocessing.TimeoutError):  # joblib's own, as on loky
        Parallel(n_jobs=2, timeout=0.5)(delayed(time.sleep)(60) for _ in range(4))
    assert time.monotonic() - started < 10
    assert Parallel(n_jobs=2)(delayed(abs)(-x) for x in range(4)) == [0, 1, 2, 3]


def test_auto_batching_sends_tiny_tasks_in_batches(on_nbparallel):
    call = Parallel(n_jobs=2)
    assert call(delayed(abs)(-x) for x in range(5000)) == list(range(5000))
    assert call.n_dispatched_batches < 500


def test_tiny_tasks_reach_their_batch_size_in_few_batches(on_nbparallel):
    """joblib's own ramp doubles a batch per completed batch: 10,000 tiny tasks made 61-65
    batches, each a round trip. Ours grows up to 16x a step, to at most 512 here."""
    offset = 1
    add_offset = lambda x: x + offset  # noqa: E731 - one function for every task, as users write
    call = Parallel(n_jobs=2)
    call(delayed(add_offset)(x) for x in range(100))  # the workers are warm
    assert call(delayed(add_offset)(x) for x in range(10_000)) == [x + 1 for x in range(10_000)]
    assert call.n_dispatched_batches < 57


def test_the_batch_size_joblib_is_given_grows_16_times_after_a_fast_batch(on_nbparallel):
    """joblib asks the backend for each batch's size after telling it how long batches took."""
    backend = NbParallelBackend()
    backend.configure(n_jobs=2, parallel=Parallel(n_jobs=2))
    assert backend.compute_batch_size() == 1  # nothing measured yet: joblib's first size
    backend.batch_completed(1, 0.001)
    assert backend.compute_batch_size() == 16  # joblib's own ramp: 2
    backend.batch_completed(1, 0.001)  # a batch of the old size does not count for the new
    assert backend.compute_batch_size() == 16
    backend.batch_completed(16, 0.004)
    assert backend.compute_batch_size() == 256
    backend.batch_completed(256, 0.002)
    assert backend.compute_batch_size() == 512  # 1,024 tasks at most from the generator at once
    backend.batch_completed(512, 0.004)
    assert backend.compute_batch_size() == 512
    backend.batch_completed(512, 20.0)  # too slow (smoothed: 4.0 s): joblib's own shrinking
    assert backend.compute_batch_size() == 50


def test_a_batch_grows_to_joblibs_aim_by_at_most_16_times_a_step_within_1024_per_slice():
    ideal = NbParallelBackend.MIN_IDEAL_BATCH_DURATION
    assert grown_batch_size(1, 0.001, ideal, 2) == 16  # aim 400: 16x at most
    assert grown_batch_size(16, 0.004, ideal, 2) == 256  # aim 1,600: 16x at most
    assert grown_batch_size(64, 0.1, ideal, 2) == 256  # aim reached: twice what fits in 0.2 s
    assert grown_batch_size(1, 0.05, ideal, 2) == 8  # 50 ms tasks: 8 per batch, not 16
    assert grown_batch_size(1, 0.199, ideal, 2) == 2
    assert grown_batch_size(256, 0.001, ideal, 2) == 512  # joblib slices n_jobs batches at once
    assert grown_batch_size(256, 0.001, ideal, 8) == 128
    assert grown_batch_size(1, 0.001, ideal, 2048) == 1


def test_n_jobs_maps_to_the_session_pool_and_never_resizes_it(on_nbparallel):
    size = parallel.options.worker_count
    backend = NbParallelBackend()
    assert backend.effective_n_jobs(-1) == size
    assert backend.effective_n_jobs(-2) == max(size - 1, 1)
    assert backend.effective_n_jobs(10 * size) == size
    assert backend.effective_n_jobs(None) == 1
    with pytest.raises(ValueError):
        backend.effective_n_jobs(0)
    Parallel(n_jobs=10 * size)(delayed(abs)(x) for x in range(20))
    assert len(parallel.status().workers) == size


def test_n_jobs_below_the_pool_size_runs_at_most_n_jobs_tasks_at_once(on_nbparallel):
    """n_jobs=2 on a pool of 3: never more than two tasks overlap, and the pool keeps 3 workers."""
    previous = parallel.options.workers
    parallel.configure(workers=3)
    try:
        spans = Parallel(n_jobs=2, batch_size=1)(
            delayed(lambda _: (time.monotonic(), time.sleep(0.2), time.monotonic()))(x)
            for x in range(6)
        )
        assert len(parallel.status().workers) == 3
    finally:
        parallel.configure(workers=previous or parallel.options.worker_count)
    moments = [start for start, _, _ in spans]
    overlap = max(sum(s <= m < e for s, _, e in spans) for m in moments)
    assert overlap <= 2


def test_n_jobs_1_and_none_run_in_this_process(on_nbparallel):
    assert Parallel(n_jobs=1)(delayed(os.getpid)() for _ in range(3)) == [os.getpid()] * 3
    assert Parallel()(delayed(os.getpid)() for _ in range(3)) == [os.getpid()] * 3


@pytest.mark.parametrize("hint", [{"prefer": "threads"}, {"require": "sharedmem"}])
def test_threads_hints_fall_back_to_joblibs_threading_backend(on_nbparallel, hint):
    """Shared memory: tasks run in this process and see (and change) its objects."""
    seen: list[int] = []
    Parallel(n_jobs=2, **hint)(delayed(seen.append)(os.getpid()) for _ in range(4))
    assert seen == [os.getpid()] * 4


def test_nested_joblib_calls_run_sequentially_in_the_worker(on_nbparallel):
    """A task that itself uses Parallel(n_jobs=-1) starts no process: inner tasks run in its worker."""

    def outer(x):
        inner = Parallel(n_jobs=-1)(delayed(os.getpid)() for _ in range(4))
        return os.getpid(), set(inner)

    for pid, inner in Parallel(n_jobs=2)(delayed(outer)(x) for x in range(4)):
        assert inner == {pid} and pid in pool_pids()


def test_configure_joblib_makes_it_the_default_backend_and_false_gives_it_back():
    try:
        parallel.configure(joblib=True)
        assert set(Parallel(n_jobs=2)(delayed(os.getpid)() for _ in range(6))) <= pool_pids()
    finally:
        parallel.configure(joblib=False)
    assert joblib.parallel.DEFAULT_BACKEND == "loky"
    with pytest.raises(OptionError):
        parallel.configure(joblib="yes")
    with pytest.raises(TypeError, match="parallel.configure"):
        parallel.map(abs, [1], joblib=True)


def test_configure_joblib_works_as_a_scripts_first_line_before_joblib_is_imported(tmp_path):
    code = (
        "from nbparallel import parallel\n"
        "parallel.configure(joblib=True, progress=False)\n"
        "from joblib import Parallel, delayed\n"
        "import os\n"
        "pids = set(Parallel(n_jobs=2)(delayed(lambda x: os.getpid())(x) for x in range(20)))\n"
        "print(os.getpid() not in pids and pids <= {w.pid for w in parallel.status().workers})\n"
    )
    assert script_ran(code, tmp_path).stdout.splitlines() == ["True"]


def test_joblib_inside_a_map_task_runs_in_that_worker_and_starts_no_processes(tmp_path):
    """As a parallel.map inside a task does: loky's processes, children of a worker, outlived
    the kernel by minutes."""
    code = (
        "import os, psutil\n"
        "from joblib import Parallel, delayed\n"
        "from nbparallel import parallel\n"
        "def inner(x):\n"
        "    pids = set(Parallel(n_jobs=2)(delayed(os.getpid)() for _ in range(4)))\n"
        "    threads = Parallel(n_jobs=2, prefer='threads')(delayed(abs)(-i) for i in range(2))\n"
        "    return pids == {os.getpid()}, threads, psutil.Process().children(recursive=True)\n"
        "print(parallel.map(inner, range(2), progress=False))\n"
    )
    lines = script_ran(code, tmp_path).stdout.splitlines()
    assert lines == ["[(True, [0, 1], []), (True, [0, 1], [])]"]


def test_after_a_timeout_the_bar_counts_only_the_tasks_that_finished(tmp_path):
    code = (
        "import time\n"
        "from joblib import Parallel, delayed, parallel_config\n"
        "from nbparallel import parallel\n"
        "def nap(x):\n"
        "    time.sleep(30 if x == 1 else 0.01)\n"
        "with parallel_config(backend='nbparallel'):\n"
        "    try:\n"
        "        Parallel(n_jobs=2, timeout=1, batch_size=1)(delayed(nap)(x) for x in range(10))\n"
        "    except Exception as error:\n"
        "        print(type(error).__name__)\n"
    )
    done = script_ran(code, tmp_path)
    assert done.stdout.splitlines() == ["TimeoutError"]
    ending = done.stderr.replace("\r", "\n").strip().splitlines()[-1]
    assert ending.startswith("joblib (stopped):") and " 9/10 " in ending, ending


def test_without_joblib_nothing_fails_to_import_and_configure_says_what_to_install(tmp_path):
    code = (
        "import sys; sys.modules['joblib'] = None\n"
        "import nbparallel\n"
        "print(nbparallel.parallel.map(abs, [-1, -2], progress=False))\n"
        "try:\n    nbparallel.parallel.configure(joblib=True)\n"
        "except nbparallel.OptionError as e:\n    print(e)\n"
    )
    done = run_script(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "[1, 2]"
    assert 'pip install "nbparallel[joblib]"' in done.stdout


@pytest.mark.parametrize("joblib_first", [False, True], ids=["nbparallel-first", "joblib-first"])
def test_the_backend_is_there_whichever_is_imported_first_and_nbparallel_does_not_import_joblib(
    joblib_first, tmp_path
):
    """`import nbparallel` alone does not import joblib (0.1 s and NumPy at every start); the
    backend is registered the moment joblib is imported, before or after nbparallel."""
    first, second = ("joblib", "nbparallel") if joblib_first else ("nbparallel", "joblib")
    code = (
        f"import sys\nimport {first}\n"
        "print('joblib' in sys.modules)\n"
        f"import {second}\n"
        "from joblib import Parallel, delayed, parallel_config\n"
        "with parallel_config(backend='nbparallel'):\n"
        "    print(Parallel(n_jobs=2)(delayed(abs)(-n) for n in range(3)))\n"
    )
    done = run_script(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str(joblib_first), "[0, 1, 2]"]


# --- scikit-learn: the same scores as loky ------------------------------------------------

SKLEARN_RUNS = """
import json, sys
import joblib
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.svm import SVC

X, y = make_classification(n_samples=300, n_features=10, random_state=0)
with joblib.parallel_config(backend=sys.argv[1]):
    cv = cross_val_score(RandomForestClassifier(n_estimators=20, random_state=0), X, y, cv=4, n_jobs=-1)
    grid = GridSearchCV(SVC(), {"C": [0.1, 1, 10], "gamma": ["scale", 0.01]}, cv=3, n_jobs=-1)
    grid.fit(X, y)
print(json.dumps({"cv": list(cv), "grid": list(grid.cv_results_["mean_test_score"]),
                  "best": grid.best_params_}))
"""


def sklearn_scores(backend: str) -> dict:
    """The scores, computed in a fresh interpreter (loky's workers and helper outlive a test)."""
    pytest.importorskip("sklearn")
    import json

    done = subprocess.run(
        [sys.executable, "-c", "import nbparallel\n" + SKLEARN_RUNS, backend],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_cross_val_score_and_grid_search_give_the_same_scores_as_loky():
    expected, got = sklearn_scores("loky"), sklearn_scores("nbparallel")
    assert got == expected
    assert len(got["cv"]) == 4 and len(got["grid"]) == 6


# --- threads inside a task: limited as loky limits them, only inside joblib calls ----------

numpy = pytest.importorskip("numpy")


def library_threads(_=None) -> dict[str, set[int]]:
    """In a worker: the thread counts of its BLAS and OpenMP libraries, by API."""
    import threadpoolctl

    numpy.ones(2)  # a function that uses NumPy (its OpenBLAS is loaded with it)
    counts: dict[str, set[int]] = {}
    for library in threadpoolctl.threadpool_info():
        counts.setdefault(library["user_api"], set()).add(library["num_threads"])
    return counts


def test_blas_and_openmp_threads_in_a_task_are_cpus_over_n_jobs_and_unchanged_outside(
    on_nbparallel,
):
    """Two joblib tasks at once each get cpu_count // 2 threads, as under loky; a plain map
    task on the same workers, before and after, sees the workers' own limit."""
    pytest.importorskip("threadpoolctl")
    if parallel.options.worker_count < 2:
        pytest.skip("needs a pool of 2 workers to run 2 joblib tasks at once")
    apis = {"blas", "openmp"} - {
        api for api, names in ENVIRONMENT.items() if any(name in os.environ for name in names)
    }
    before = parallel.map(library_threads, range(4), chunksize=1)
    inside = Parallel(n_jobs=2, batch_size=1)(delayed(library_threads)(x) for x in range(4))
    after = parallel.map(library_threads, range(4), chunksize=1)
    expected = max(joblib.cpu_count() // 2, 1)
    for counts in inside:
        assert {api: counts[api] for api in apis if api in counts} == {
            api: {expected} for api in apis if api in counts
        }
    assert any(apis & counts.keys() for counts in inside)  # NumPy brings OpenBLAS at least
    assert after == before


def test_inner_max_num_threads_sets_the_limit_inside_tasks():
    pytest.importorskip("threadpoolctl")
    with joblib.parallel_config(backend="nbparallel", inner_max_num_threads=3):
        inside = Parallel(n_jobs=2)(delayed(library_threads)(x) for x in range(2))
    for counts in inside:
        assert all(threads == {3} for threads in counts.values()), counts


def leaves_on_three(x):
    if x == 3:
        sys.exit(3)
    return x


def test_an_error_about_a_whole_batch_names_the_users_function(on_nbparallel):
    """A task that ends its worker is told about its batch: named after the function joblib
    ran, not the backend's batch runner."""
    with pytest.raises(TaskExitError, match="^'leaves_on_three' tried to end its worker"):
        Parallel(n_jobs=2)(delayed(leaves_on_three)(x) for x in range(6))
