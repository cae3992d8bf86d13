"""The progress widget as a frontend sees it (state from the kernel's widget messages), the
text bar, in-task progress, and maps that run in the background."""

from __future__ import annotations

import dataclasses
import os
import signal
import time

import pytest

import nbparallel

from .kernel import Kernel, Reply

SLOW = '''
import os, time, nbparallel
from nbparallel import parallel

def wait_for(path, deadline=60):
    """Stand-in for real work: runs until the test creates `path`."""
    end = time.monotonic() + deadline
    while not os.path.exists(path) and time.monotonic() < end:
        time.sleep(0.01)

def halfway_then_wait(x, path):
    nbparallel.progress(1, 2)
    wait_for(path)
    return x * 10
'''


@dataclasses.dataclass
class Bar:
    """The parts of one progress widget, as live widget states."""

    bar: dict
    numbers: dict
    workers: dict | None

    @property
    def name(self) -> str:
        return self.bar["description"]

    @property
    def text(self) -> str:
        return self.numbers["value"]


def bar_of(kernel: Kernel, reply: Reply | str) -> Bar:
    """The progress widget a cell showed (or the one with this model id)."""
    (model_id,) = [reply] if isinstance(reply, str) else reply.widget_views
    tree = kernel.widget_tree(model_id)
    htmls = [state for state in tree if state["_model_name"] == "HTMLModel"]
    bar = next(state for state in tree if state["_model_name"] == "FloatProgressModel")
    return Bar(bar, htmls[0], htmls[1] if len(htmls) > 1 else None)


@pytest.fixture(scope="module")
def nb(tmp_path_factory):
    """A kernel with progress bars on (the default), and the helpers of SLOW."""
    started = Kernel(tmp_path_factory.mktemp("progress-kernel"))
    started.ok(SLOW)
    yield started
    started.ok("parallel.shutdown()")
    started.shutdown()


@pytest.fixture(scope="module")
def nb_workers(nb) -> int:
    """How many workers a call in the `nb` kernel uses by default (CPUs, or NBPARALLEL_WORKERS)."""
    return nb.value("parallel.options.worker_count")


@pytest.fixture
def marker(tmp_path):
    """A file path the tasks wait for; creating it lets them finish. Created after the test in
    any case, so that a failed test leaves no task waiting in the kernel for the next ones."""
    path = tmp_path / "go"
    yield path
    path.touch()


pytestmark = pytest.mark.kernel


def test_a_map_shows_one_widget_that_ends_green_with_its_numbers(nb):
    reply = nb.ok("def square(x):\n    return x * x\nresult = parallel.map(square, range(20))")
    assert len(reply.widget_views) == 1
    bar = bar_of(nb, reply)
    assert bar.name == "square"
    assert (bar.bar["value"], bar.bar["max"], bar.bar["bar_style"]) == (20.0, 20.0, "success")
    assert (
        bar.text.startswith("20/20 items · ") and "elapsed" in bar.text and "error" not in bar.text
    )
    # What nbval compares: the text form at display time, the same on every run.
    assert reply.results == ["square: 0/20 items · 00:00 elapsed"]


def test_the_saved_text_of_a_bar_is_the_calls_start_however_long_sending_took(nb):
    """A call whose first chunk takes seconds to send (a pool still booting on a loaded machine;
    here an item slow to pickle) keeps the same text form: what nbval compares."""
    reply = nb.ok(
        "import time\n"
        "class SlowToSend:\n"
        "    def __reduce__(self):\n"
        "        time.sleep(1.5)\n"
        "        return (int, (3,))\n"
        "sent = parallel.map(lambda x: x * 2, [SlowToSend()])"
    )
    assert reply.results == ["<lambda>: 0/1 items · 00:00 elapsed"]
    assert nb.value("sent") == [6]


def test_what_the_cell_printed_shows_before_the_bar_and_what_the_workers_print_after(nb):
    # The bar is displayed without ipykernel's flush of the streams (the cell's output is
    # flushed when the call begins): the order a reader sees must not change.
    nb.ok("parallel.map(abs, range(4))")  # workers ready: ipykernel's own flush (0.2 s) is later
    reply = nb.ok(
        "print('before the call')\n"
        "out = parallel.map(lambda x: print('item', x), range(2))\n"
        "print('after the call')"
    )
    kinds = [kind for kind, _ in reply.outputs]
    assert kinds.count("display") == 1, reply.outputs
    bar = kinds.index("display")
    before = "".join(text for kind, text in reply.outputs[:bar])
    after = "".join(text for kind, text in reply.outputs[bar + 1 :])
    assert before == "before the call\n"
    assert sorted(after.splitlines()) == ["after the call", "item 0", "item 1"]
    assert after.endswith("after the call\n")


def test_failed_items_are_counted_and_the_bar_ends_red(nb):
    reply = nb.ok("out = parallel.map(lambda x: 1 / (x % 5), range(20), errors='return')")
    bar = bar_of(nb, reply)
    assert bar.bar["bar_style"] == "danger"
    assert bar.bar["value"] == 20.0
    assert bar.text.startswith("20/20 items") and "4 errors" in bar.text

    reply = nb.run("parallel.map(lambda x: 1 / (x - 7), range(20), chunksize=1)")
    assert reply.ename == "ZeroDivisionError"
    bar = bar_of(nb, reply)
    assert bar.bar["bar_style"] == "danger" and "1 error" in bar.text


def test_a_map_whose_items_cannot_be_sent_still_shows_its_bar_ending_red(nb):
    # The bar is shown once the first chunks are sent; here sending them fails.
    reply = nb.run("import threading\nparallel.map(abs, [1, threading.Lock()])")
    assert reply.ename == "UnsendableError"
    bar = bar_of(nb, reply)
    assert bar.bar["bar_style"] == "danger" and "1 error" in bar.text


def test_unknown_length_shows_a_count_without_a_total(nb):
    reply = nb.ok("out = parallel.map(abs, (n for n in range(30)))")
    bar = bar_of(nb, reply)
    assert bar.text.startswith("30 items · ")
    assert "/" not in bar.text.split("·")[0]
    assert bar.bar["value"] == bar.bar["max"] and bar.bar["bar_style"] == "success"


@pytest.mark.parametrize("backend", ["processes", "threads", "dask"])
def test_progress_reported_inside_tasks_moves_the_bar_before_any_item_ends(nb, marker, backend):
    reply = nb.ok(
        f"handle = parallel.map_async(lambda x: halfway_then_wait(x, {str(marker)!r}), [1, 2], "
        f"backend={backend!r}, workers=2)"
    )
    bar = bar_of(nb, reply)
    # Both items said they are half done; neither has ended: one item's worth of progress.
    nb.read_until(lambda: bar.bar["value"] == 1.0)
    assert nb.value("handle.done()") is False
    marker.touch()
    nb.read_until(lambda: bar.bar["bar_style"] == "success")
    assert bar.bar["value"] == 2.0
    assert nb.value("handle.result()") == [10, 20]
    nb.ok("parallel.shutdown()")  # the threads or the dask cluster this test started


def test_a_bar_opens_only_its_own_three_widgets_and_survives_close_all(nb):
    def models_opened_by(code: str) -> tuple[Reply, list[str]]:
        before = set(nb.widgets)
        reply = nb.ok(code)
        return reply, sorted(nb.widgets[m]["_model_name"] for m in set(nb.widgets) - before)

    nb.ok("parallel.map(abs, range(4))")
    # Layouts and styles are shared by every bar: a short call costs the frontend three models.
    _, opened = models_opened_by("parallel.map(abs, range(4))")
    assert opened == ["BoxModel", "FloatProgressModel", "HTMLModel"]
    # After Widget.close_all() the shared ones are gone: the next bar makes them again, and draws.
    nb.ok("import ipywidgets\nipywidgets.Widget.close_all()")
    reply, opened = models_opened_by("parallel.map(abs, range(4))")
    assert opened.count("LayoutModel") == 3 and "ProgressStyleModel" in opened
    bar = bar_of(nb, reply)
    assert bar.bar["bar_style"] == "success" and bar.text.startswith("4/4 items")
    assert bar.bar["layout"].removeprefix("IPY_MODEL_") in nb.widgets


def test_200000_tiny_items_send_a_bounded_number_of_widget_updates(nb):
    nb.ok("parallel.map(abs, range(8))")  # workers started: time the map alone
    before = nb.widget_updates
    started = time.monotonic()
    reply = nb.ok("out = parallel.map(lambda x: x + 1, range(200_000))\nassert out[-1] == 200_000")
    elapsed = time.monotonic() - started
    updates = nb.widget_updates - before
    # At most 10 redraws a second (and one at the start), each changing at most the bar and its
    # line of numbers, plus the final state (bar, numbers, colour): never one per item or chunk.
    assert updates <= 2 * (elapsed / 0.1 + 2) + 3, (updates, elapsed)
    bar = bar_of(nb, reply)
    assert bar.bar["value"] == 200_000 and bar.bar["bar_style"] == "success"


def test_interrupt_leaves_the_bar_in_its_stopped_state(nb, nb_workers, marker):
    known = set(nb.widgets)
    msg_id = nb.send(
        f"parallel.map(lambda x: halfway_then_wait(x, {str(marker)!r}), range(6), chunksize=1)"
    )

    def started() -> str | None:
        """The new progress widget, once every worker is half-way through an item."""
        for model_id, state in list(nb.widgets.items()):
            if model_id not in known and state["_model_name"] == "BoxModel":
                if bar_of(nb, model_id).bar["value"] >= min(nb_workers, 6) / 2:
                    return model_id
        return None

    box = nb.read_until(started)
    nb.manager.interrupt_kernel()
    reply = nb.reply(msg_id)
    assert reply.ename == "KeyboardInterrupt"
    bar = bar_of(nb, box)
    assert bar.bar["bar_style"] == "warning"
    assert "stopped" in bar.text and bar.text.startswith("0/6 items")
    assert nb.value("parallel.map(abs, [-1, -2], progress=False)") == [1, 2]


def test_map_async_returns_at_once_keeps_updating_and_gives_its_results(nb, marker):
    reply = nb.ok(
        f"handle = parallel.map_async(lambda x: halfway_then_wait(x, {str(marker)!r}), range(4))\nhandle"
    )
    assert reply.results == [
        "<lambda>: 0/4 items · 00:00 elapsed",
        "<map_async of <lambda>: running>",
    ]
    bar = bar_of(nb, reply)
    # Other cells run meanwhile.
    assert nb.value("[handle.done(), 6 * 7]") == [False, 42]
    marker.touch()
    # The widget of the finished cell goes on to its end, with no cell running.
    nb.read_until(lambda: bar.bar["bar_style"] == "success")
    assert bar.text.startswith("4/4 items")
    assert nb.value("handle.result()") == [0, 10, 20, 30]
    assert nb.ok("handle").results == ["<map_async of <lambda>: done: 4 results>"]


def test_map_async_cancel_stops_the_work_and_the_pool_goes_on(nb, nb_workers, marker):
    nb.ok("parallel.map(abs, range(4), progress=False)")
    busy_before = set(nb.value("[w.pid for w in parallel.status().workers]"))
    reply = nb.ok(
        f"handle = parallel.map_async(lambda x: halfway_then_wait(x, {str(marker)!r}), "
        f"range({2 * nb_workers}), chunksize=1)"
    )
    bar = bar_of(nb, reply)
    nb.read_until(lambda: bar.bar["value"] >= nb_workers / 2)  # every worker is inside an item
    assert nb.value("handle.cancel()") is True
    assert bar.bar["bar_style"] == "warning" and "stopped" in bar.text
    reply = nb.run("handle.result()")
    assert reply.ename == "CancelledError"
    assert nb.value("[handle.cancelled(), handle.cancel()]") == [True, False]
    # The busy workers were stopped and replaced; the pool runs the next map.
    assert not busy_before & set(nb.value("[w.pid for w in parallel.status().workers]"))
    assert nb.value("parallel.map(abs, [-3], progress=False)") == [3]


def test_worker_row_shows_each_worker_and_one_that_died(nb, nb_workers, marker):
    nb.ok("parallel.map(abs, range(4), progress=False)")
    pids = nb.value("[w.pid for w in parallel.status().workers]")
    reply = nb.ok(
        f"handle = parallel.map_async(lambda x: halfway_then_wait(x, {str(marker)!r}), range({nb_workers}), "
        "chunksize=1, retries=1, show_workers=True)"
    )
    bar = bar_of(nb, reply)
    assert bar.workers is not None
    nb.read_until(
        lambda: all(f"{pid} busy" in bar.workers["value"] for pid in pids)
    )  # one item each
    os.kill(pids[0], signal.SIGKILL)
    marker.touch()
    nb.read_until(lambda: bar.bar["bar_style"] == "success")
    assert nb.value("handle.result()") == [x * 10 for x in range(nb_workers)]
    row = bar.workers["value"]
    assert 'data-state="exited"' in row and f"{pids[0]} exited" in row
    assert all(f"{pid} idle" in row for pid in pids[1:])
    replacement = nb.value("[w.pid for w in parallel.status().workers]")
    assert any(f"{pid} idle" in row for pid in replacement if pid not in pids)


def test_cell_magic_in_the_background_with_the_worker_row(nb, marker):
    nb.ok("%load_ext nbparallel")
    reply = nb.ok(
        f"%%parallel for n in range(4) -> handle --background --show-workers\nhalfway_then_wait(n, {str(marker)!r})"
    )
    bar = bar_of(nb, reply)
    assert bar.workers is not None
    assert nb.value("handle.done()") is False
    marker.touch()
    nb.read_until(lambda: bar.bar["bar_style"] == "success")
    assert nb.value("handle.result()") == [0, 10, 20, 30]


# --- outside a kernel -------------------------------------------------------------------


def test_progress_outside_a_task_does_nothing_and_checks_its_arguments():
    nbparallel.progress(3, 10)  # in the notebook itself: no call to report to
    with pytest.raises(TypeError, match="total must be a number, not str"):
        nbparallel.progress(1, "10")
    with pytest.raises(ValueError, match="total must be above 0, not 0"):
        nbparallel.progress(1, 0)


def test_text_bar_in_a_script_counts_errors_and_says_how_it_ended(tmp_path):
    from .conftest import run_script

    done = run_script(
        """
        from nbparallel import parallel
        parallel.map(lambda x: 1 / (x % 3), range(9), errors="skip")
        try:
            parallel.map(lambda x: 1 / 0, range(4))
        except ZeroDivisionError:
            print("raised")
    """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "raised" in done.stdout
    assert (
        "<lambda> (failed):" in done.stderr and "9/9" in done.stderr and "3 errors" in done.stderr
    )
