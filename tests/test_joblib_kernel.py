"""scikit-learn on the joblib backend in a real kernel: workers follow the kernel, Stop stops the
fit, and the progress widget counts joblib's tasks."""

from __future__ import annotations

import os
import signal
import time

import pytest

pytest.importorskip("joblib")
pytest.importorskip("sklearn")

from nbparallel import lifecycle  # noqa: E402

from .conftest import wait_until  # noqa: E402
from .kernel import Kernel  # noqa: E402
from .test_progress import bar_of  # noqa: E402

pytestmark = pytest.mark.kernel

# A notebook-defined estimator (it goes to the workers by value): each fit leaves a marker file,
# then runs until `go-<c>` exists (or `seconds` pass): a fit of hours, or one the test releases.
SETUP = """
import os, pathlib, tempfile, time
from nbparallel import parallel
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import make_classification
from sklearn.model_selection import GridSearchCV

parallel.configure(joblib=True, progress={progress})
X, y = make_classification(n_samples=40, random_state=0)
marks = pathlib.Path({directory!r})

class Slow(ClassifierMixin, BaseEstimator):
    def __init__(self, c=0, seconds=0.0):
        self.c, self.seconds = c, seconds

    def fit(self, X, y):
        tempfile.mkstemp(dir=marks, prefix="start-")
        end = time.time() + self.seconds
        while time.time() < end and not (marks / f"go-{{self.c}}").exists():
            pass  # busy, as real fitting is
        self.classes_ = sorted(set(y))
        return self

    def predict(self, X):
        return [self.classes_[0]] * len(X)

def search(seconds):
    return GridSearchCV(Slow(seconds=seconds), {{"c": list(range(12))}}, cv=2, n_jobs=-1)
"""


def started(directory) -> int:
    return len(list(directory.glob("start-*")))


@pytest.fixture
def kernel(tmp_path):
    started_kernel = Kernel(tmp_path / "kernel")
    yield started_kernel
    started_kernel.shutdown()


def alive(processes) -> set:
    return {p for p in processes if lifecycle.is_running(p)}


def test_sigkill_during_grid_search_fit_leaves_no_worker_after_2s(kernel, tmp_path):
    kernel.ok(SETUP.format(directory=str(tmp_path), progress=False))
    kernel.send("search(seconds=120).fit(X, y)")
    wait_until(lambda: started(tmp_path) >= 2, timeout=30)  # both workers are fitting
    workers = kernel.workers()
    assert len(workers) == 2
    os.kill(kernel.pid, signal.SIGKILL)
    wait_until(lambda: not alive(workers), timeout=2.0)


def test_stop_during_grid_search_fit_raises_at_once_and_the_next_fit_runs(kernel, tmp_path):
    """KeyboardInterrupt reaches the cell within 1 s of Stop. The reply comes after IPython has
    formatted the traceback, through scikit-learn's and joblib's big files: 0.5-2 s more on a
    loaded machine (measured: under 1 s with %xmode Minimal), which is IPython's, not ours."""
    kernel.ok(SETUP.format(directory=str(tmp_path), progress=False))
    msg_id = kernel.send(
        "try:\n"
        "    search(seconds=120).fit(X, y)\n"
        "except KeyboardInterrupt:\n"
        "    interrupted_in_the_cell = time.time()\n"
        "    raise"
    )
    wait_until(lambda: started(tmp_path) >= 2, timeout=30)
    busy = kernel.workers()
    interrupted_at = time.time()
    kernel.manager.interrupt_kernel()
    reply = kernel.reply(msg_id, timeout=10)
    assert reply.ename == "KeyboardInterrupt"
    assert time.time() - interrupted_at < 5.0
    assert kernel.value("interrupted_in_the_cell") - interrupted_at < 1.0
    wait_until(lambda: not alive(busy), timeout=2.0)  # the busy fits were stopped
    count = started(tmp_path)
    next_fit = time.monotonic()
    assert kernel.value("search(seconds=0).fit(X, y).best_params_") == {"c": 0}
    assert time.monotonic() - next_fit < 5.0
    assert started(tmp_path) >= count + 24  # this fit's 24 tasks ran; the stopped ones did not


def test_the_widget_counts_grid_search_tasks_as_they_finish(kernel, tmp_path):
    kernel.ok(SETUP.format(directory=str(tmp_path), progress=True))
    msg_id = kernel.send("fitted = search(seconds=60).fit(X, y)")
    bar = None

    def shown():
        nonlocal bar
        boxes = [m for m, state in kernel.widgets.items() if state.get("_model_name") == "BoxModel"]
        for model_id in boxes:
            if any(s["_model_name"] == "FloatProgressModel" for s in kernel.widget_tree(model_id)):
                bar = bar_of(kernel, model_id)
        return bar

    kernel.read_until(shown)
    assert bar.name == "joblib"
    seen = []
    for c in range(12):  # each candidate's two folds end when the test says so
        (tmp_path / f"go-{c}").touch()
        done = 2 * (c + 1)
        kernel.read_until(
            lambda done=done: bar.text.startswith((f"{done} items", f"{done}/24 items")), timeout=30
        )
        seen.append(bar.text.split(" ·")[0])
    # The generator's length (24 fits) shows once joblib has dispatched them all.
    assert [shown.split("/")[0].split(" ")[0] for shown in seen] == [
        str(2 * (c + 1)) for c in range(12)
    ]
    assert seen[-1] == "24/24 items"
    kernel.reply(msg_id)
    kernel.read_until(lambda: bar.bar["bar_style"] == "success")
    assert (bar.bar["value"], bar.bar["max"]) == (24.0, 24.0)


def test_the_bar_counts_tasks_within_a_batch_and_shows_a_generators_total(kernel, tmp_path):
    """Batches of 4 tasks: the bar moves by one as each task ends, before its batch does."""
    kernel.ok(
        "import pathlib, time\n"
        "from joblib import Parallel, delayed\n"
        "from nbparallel import parallel\n"
        "parallel.configure(joblib=True)\n"
        f"marks = pathlib.Path({str(tmp_path)!r})\n"
        "def wait(i):\n"
        "    while not (marks / f'go-{i}').exists():\n"
        "        time.sleep(0.005)\n"
        "    return i\n"
    )
    msg_id = kernel.send(
        "out = Parallel(n_jobs=2, batch_size=4, pre_dispatch='all')"
        "(delayed(wait)(i) for i in range(8))"
    )
    bar = None

    def shown():
        nonlocal bar
        for model_id, state in list(kernel.widgets.items()):
            if state.get("_model_name") == "BoxModel":
                tree = kernel.widget_tree(model_id)
                if any(s["_model_name"] == "FloatProgressModel" for s in tree):
                    bar = bar_of(kernel, model_id)
        return bar is not None and bar.bar["max"] == 8.0

    kernel.read_until(shown)  # the generator is used up at once (pre_dispatch="all"): 8 tasks
    (tmp_path / "go-0").touch()  # the first task of the first batch ends; three still wait
    kernel.read_until(
        lambda: bar.bar["value"] == 1.0 and bar.text.startswith("1/8 items"), timeout=30
    )
    (tmp_path / "go-4").touch()  # the first task of the second batch
    kernel.read_until(lambda: bar.bar["value"] == 2.0, timeout=30)
    for i in range(8):
        (tmp_path / f"go-{i}").touch()
    assert kernel.reply(msg_id).status == "ok"
    kernel.read_until(lambda: bar.bar["bar_style"] == "success")
    assert (bar.bar["value"], bar.bar["max"]) == (8.0, 8.0) and bar.text.startswith("8/8 items")


def test_a_joblib_call_over_a_list_shows_its_total_and_ends_green_or_red(kernel):
    kernel.ok("import joblib\nfrom joblib import Parallel, delayed\nimport nbparallel")
    reply = kernel.ok(
        "with joblib.parallel_config(backend='nbparallel'):\n"
        "    out = Parallel(n_jobs=2)([delayed(abs)(-x) for x in range(20)])"
    )
    bar = bar_of(kernel, reply)
    assert (bar.name, bar.bar["value"], bar.bar["max"]) == ("joblib", 20.0, 20.0)
    assert bar.bar["bar_style"] == "success" and bar.text.startswith("20/20 items")
    reply = kernel.run(
        "with joblib.parallel_config(backend='nbparallel'):\n"
        "    Parallel(n_jobs=2)([delayed(lambda x: 1 / (x - 7))(x) for x in range(20)])"
    )
    assert reply.ename == "ZeroDivisionError"
    bar = bar_of(kernel, reply)
    assert bar.bar["bar_style"] == "danger" and "1 error" in bar.text
