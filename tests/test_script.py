"""Code from a real `__main__` (a script with no guard): what a notebook cell defines behaves the same."""

from __future__ import annotations

import json

import pytest

from .conftest import run_script


def run_json(code: str, tmp_path):
    result = run_script(code, tmp_path)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1]), result


def test_script_without_main_guard_runs_lambdas_closures_and_helpers(tmp_path):
    out, result = run_json(
        """
        import json
        from nbparallel import parallel
        parallel.configure(progress=False)

        offset = 100
        def helper(x):
            return x + offset
        def make_scaler(k):
            return lambda x: helper(x) * k

        out = {
            "lambda": parallel.map(lambda x: helper(x), range(3)),
            "closure": parallel.map(make_scaler(2), range(3)),
        }
        print(json.dumps(out))
        """,
        tmp_path,
    )
    assert out == {"lambda": [100, 101, 102], "closure": [200, 202, 204]}
    assert "bootstrapping" not in result.stderr


def test_workers_see_globals_as_they_are_now(tmp_path):
    out, _ = run_json(
        """
        import json
        from nbparallel import parallel
        parallel.configure(progress=False)

        weight = 1
        def score(x):
            return x * weight
        first = parallel.map(score, range(4))
        weight = 10                      # a later cell changes a global
        second = parallel.map(score, range(4))
        def late(x):                      # defined after the pool started
            return -x
        third = parallel.map(late, range(4))
        print(json.dumps([first, second, third]))
        """,
        tmp_path,
    )
    assert out == [[0, 1, 2, 3], [0, 10, 20, 30], [0, -1, -2, -3]]


def test_notebook_classes_and_exceptions_keep_their_identity(tmp_path):
    out, _ = run_json(
        """
        import json
        from dataclasses import dataclass
        from nbparallel import parallel
        parallel.configure(progress=False)

        @dataclass
        class Point:
            x: int
            y: int

        class BadPoint(ValueError):
            pass

        def flip(p):
            if p.x < 0:
                raise BadPoint(f"negative x in {p}")
            return Point(p.y, p.x), isinstance(p, Point)

        results = parallel.map(flip, [Point(1, 2), Point(3, 4)])
        try:
            parallel.map(flip, [Point(-1, 0)])
            caught = "nothing"
        except BadPoint as error:
            caught = str(error)
        print(json.dumps({
            "values": [[p.x, p.y] for p, _ in results],
            "isinstance_in_worker": [inside for _, inside in results],
            "isinstance_in_main": all(isinstance(p, Point) for p, _ in results),
            "caught": caught,
        }))
        """,
        tmp_path,
    )
    assert out == {
        "values": [[2, 1], [4, 3]],
        "isinstance_in_worker": [True, True],
        "isinstance_in_main": True,
        "caught": "negative x in Point(x=-1, y=0)",
    }


def test_remote_traceback_shows_the_scripts_source_line(tmp_path):
    result = run_script(
        """
        from nbparallel import parallel
        def parse(text):
            return int(text)   # the failing line
        parallel.map(parse, ["1", "two"], progress=False)
        """,
        tmp_path,
    )
    assert result.returncode == 1
    assert "return int(text)   # the failing line" in result.stderr
    assert "ValueError: invalid literal for int() with base 10: 'two'" in result.stderr
    assert "item 1: 'two'" in result.stderr


def test_progress_text_goes_to_stderr_with_the_total(tmp_path):
    result = run_script(
        """
        from nbparallel import parallel
        print(sum(parallel.map(lambda x: x, range(50))))
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1225"
    assert "50/50" in result.stderr


def test_interpreter_exit_leaves_no_worker_behind(tmp_path):
    out, _ = run_json(
        """
        import json
        from nbparallel import parallel
        pids = [w.pid for w in (parallel.map(lambda x: x, range(4), progress=False) and parallel.status().workers)]
        print(json.dumps(pids))
        """,
        tmp_path,
    )
    import psutil

    from .conftest import wait_until

    assert out
    wait_until(
        lambda: (
            not any(
                psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                for pid in out
            )
        )
    )


def test_submodules_the_function_reaches_through_a_package_are_imported_in_workers(tmp_path):
    """`import urllib.request` then `urllib.request.quote(...)`: the worker must import the
    submodule too, not only the package (found by the I/O benchmark)."""
    out, _ = run_json(
        """
        import json
        import urllib.request
        import xml.dom.minidom
        from nbparallel import parallel

        def use(text):
            return urllib.request.quote(text), xml.dom.minidom.parseString("<a/>").documentElement.tagName

        print(json.dumps(parallel.map(use, ["a b"], progress=False)))
        """,
        tmp_path,
    )
    assert out == [["a%20b", "a"]]


def test_a_function_that_uses_parallel_itself_can_be_sent_again_and_again(tmp_path):
    """`parallel` goes by reference: in a worker it is the worker's own session (serial there)."""
    out, _ = run_json(
        """
        import json, os
        from nbparallel import parallel
        parallel.configure(progress=False)

        def plus_one(x):
            return x + 1
        def total(n):
            return sum(parallel.map(plus_one, range(n))), os.getpid()
        first = parallel.map(total, [3, 4])
        second = parallel.map(total, [3, 4])
        handle = parallel.map_async(plus_one, [1])
        try:
            parallel.map(lambda x: handle, [1])
            refused = ""
        except TypeError as error:
            refused = str(error)
        handle.result()
        print(json.dumps([first, second, os.getpid(), refused]))
        """,
        tmp_path,
    )
    first, second, notebook_pid, refused = out
    assert [s for s, _ in first] == [s for s, _ in second] == [6, 10]
    assert notebook_pid not in {pid for _, pid in first + second}
    assert "captures 'handle' (nbparallel.background.MapHandle)" in refused
    assert "handle.result()" in refused


@pytest.mark.slow
def test_imap_over_large_results_holds_a_fixed_budget_not_hundreds_of_them(tmp_path):
    """600 results of 4 MB consumed one at a time: the caller's memory grows by far less than
    the 2.4 GB they add up to (chunk sizes follow the bytes results take)."""
    out, _ = run_json(
        """
        import json, resource
        import numpy as np
        from nbparallel import parallel
        parallel.configure(progress=False)

        def make(n):
            return np.full(2**19, n, dtype=np.float64)  # 4 MB
        parallel.map(abs, range(4))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        total = 0.0
        for array in parallel.imap(make, range(600)):
            total += array[0]
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(json.dumps([total, grown]))
        """,
        tmp_path,
    )
    total, grown_mb = out
    assert total == sum(range(600))
    assert grown_mb < 250, f"the caller grew by {grown_mb:.0f} MB"


def test_functions_that_call_library_functions_imported_by_name_are_sent(tmp_path):
    """scikit-learn's public functions are wrappers (validate_params) that reach each other:
    dill looked through all their globals in turn, minutes or a RecursionError, though they go
    by reference. The same code ran under loky."""
    pytest.importorskip("sklearn")
    code = """
        from nbparallel import parallel
        from sklearn.datasets import make_classification
        from sklearn.model_selection import cross_val_score
        from sklearn.tree import DecisionTreeClassifier

        X, y = make_classification(n_samples=60, random_state=0)

        def score(depth):
            model = DecisionTreeClassifier(max_depth=depth, random_state=0)
            return round(float(cross_val_score(model, X, y, cv=2).mean()), 6)

        print(parallel.map(score, [1, 2], progress=False) == [score(1), score(2)])
        print(parallel.map(lambda n: make_classification(n_samples=n)[0].shape, [10], progress=False))
    """
    done = run_script(code, tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["True", "[(10, 20)]"]
