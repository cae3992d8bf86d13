"""One library on one workload, in a fresh process, as a notebook user would write it.

    python benchmarks/bench_one.py LIBRARY WORKLOAD REPEATS

Prints one JSON line: {"times": [...seconds...], "peak_mb": ..., "extra": {...}} or {"error": "..."}.
Functions live in this script's __main__, like cell-defined functions; lambdas are used where the
library can send them. Driven by run.py, which gives every run its own process and a time limit.
"""

from __future__ import annotations

STARTED = __import__("time").perf_counter()  # before any library is imported: for the cold start

import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

WORKERS = 2


# --- the work, defined in __main__ as in a notebook -----------------------------------------


def inc(x):
    return x + 1


def spin(_):
    """About 0.1 s of pure-Python work (0.09 s on the machine of results/)."""
    total = 0
    for i in range(4_000_000):
        total += i
    return total


def slice_sum(part):
    return float(part.sum())


def global_slice_sum(index):
    step = len(BIG) // 8
    return float(BIG[index * step : (index + 1) * step].sum())


def make_lookup(table):
    def lookup(key):
        return table[key % len(table)]

    return lookup


def megabyte(_):
    import numpy

    return numpy.ones(131_072)  # 1 MiB of float64


BIG = None  # the notebook global of workload 6, assigned after the pool started


# MPIRE's three benchmark shapes (its README; github.com/sybrenjansen/multiprocessing_benchmarks),
# scaled to 2 cores. Each task gets its worker's state: the image, the counter, the model.


def process_image(image, image_filter):
    """Numerical computation: the same image through each filter."""
    import scipy.signal

    return scipy.signal.convolve2d(image, image_filter)[::5, ::5]


class StreamingPrefixCount:
    """Stateful computation: each worker counts word prefixes over the documents it gets."""

    def __init__(self):
        from collections import defaultdict

        self.prefix_count = defaultdict(int)

    def add_document(self, document):
        """Count the document's prefixes; those that just became popular (seen 4 times) in this
        worker: over a call, their union is the union of every worker's popular prefixes."""
        popular = set()
        for word in document:
            for i in range(1, len(word)):
                prefix = word[:i]
                self.prefix_count[prefix] += 1
                if self.prefix_count[prefix] == 4:
                    popular.add(prefix)
        return popular


def add_document(counter, document):
    return counter.add_document(document)


class Model:
    """Expensive initialization: a trained scikit-learn network, loaded from a file."""

    def __init__(self, path):
        import pickle

        from sklearn.datasets import load_digits

        with open(path, "rb") as file:
            self.model = pickle.load(file)
        self.x_test = load_digits().data / 16.0

    def evaluate_next_batch(self, index):
        return self.model.predict_proba(self.x_test) + index


def evaluate_next_batch(model, index):
    return model.evaluate_next_batch(index)


def identity(value):
    return value


WORKER_STATE = None  # set in each worker by the initializer of stdlib-like pools


def set_worker_state(factory):
    global WORKER_STATE
    WORKER_STATE = factory()


def with_worker_state(task, item):
    return task(WORKER_STATE, item)


def set_mpire_state(factory, worker_state):
    worker_state["state"] = factory()


def with_mpire_state(task, worker_state, item):
    return task(worker_state["state"], item)


# --- the libraries, each used the way its documentation shows -------------------------------


class Library:
    can_lambda = True

    def map(self, func, items, chunksize=None):
        raise NotImplementedError

    def map_with_state(self, factory, task, items, calls):
        """`calls` maps of `task(state, item)`, after every worker made its `state = factory()`
        once, as the library's documentation shows (a pool initializer here: a new pool)."""
        import functools

        pool = self.pool_with_initializer(set_worker_state, (factory,))
        try:
            func = functools.partial(with_worker_state, task)
            return [
                list(pool.map(func, items, chunksize=self.state_chunksize(items)))
                for _ in range(calls)
            ]
        finally:
            pool.shutdown() if hasattr(pool, "shutdown") else pool.terminate()

    def state_chunksize(self, items):
        return max(1, -(-len(items) // (WORKERS * 4)))

    def close(self):
        pass


class NbParallel(Library):
    def __init__(self, progress=False):
        from nbparallel import parallel

        self.parallel = parallel
        parallel.configure(workers=WORKERS, progress=progress)

    def map(self, func, items, chunksize=None):
        return self.parallel.map(func, items, chunksize=chunksize)

    def map_with_state(self, factory, task, items, calls):
        """The README's way: an every-worker cell makes the state once in each worker of the
        running pool; later tasks there use the name it defined."""
        self.parallel.run_on_every_worker("per_worker = factory()", {"factory": factory})
        return [self.parallel.map(lambda item: task(per_worker, item), items) for _ in range(calls)]  # noqa: F821

    def tiny_call_seconds(self, progress):
        """Workload 3 once, with the text bar (this is a script) on or off."""
        started = time.perf_counter()
        self.parallel.map(lambda x: x + 1, range(200_000), progress=progress)
        return time.perf_counter() - started

    def close(self):
        self.parallel.shutdown()


class NbParallelInKernel(Library):
    """nbparallel in a real IPython kernel, started through jupyter_client as JupyterLab starts
    one, where progress is a widget. Times are measured inside the kernel; widget updates are
    counted from the kernel's messages, as a frontend receives them."""

    def __init__(self):
        import tempfile
        from pathlib import Path

        root = Path(__file__).resolve().parent.parent
        sys.path.insert(0, str(root))
        from tests.kernel import Kernel  # the repository's own real-kernel helper

        self.directory = Path(tempfile.mkdtemp(prefix="nbparallel-bench-"))  # kernel spec, cwd
        self.kernel = Kernel(self.directory)
        self.kernel.ok(f"from nbparallel import parallel\nparallel.configure(workers={WORKERS})")

    def tiny_call_seconds(self, progress):
        reply = self.kernel.ok(
            "import time as _t\n_s = _t.perf_counter()\n"
            f"parallel.map(lambda x: x + 1, range(200_000), progress={progress})\n"
            "print(_t.perf_counter() - _s)",
            timeout=120,
        )
        return float(reply.stdout.split()[-1])

    def close(self):
        import shutil

        self.kernel.ok("parallel.shutdown()")
        self.kernel.shutdown()
        shutil.rmtree(self.directory, ignore_errors=True)


class Stdlib(Library):
    can_lambda = False

    def __init__(self):
        import multiprocessing

        self.pool = multiprocessing.Pool(WORKERS)

    def map(self, func, items, chunksize=None):
        return self.pool.map(func, items, chunksize)

    def close(self):
        self.pool.terminate()

    def pool_with_initializer(self, initializer, initargs):
        import multiprocessing

        return multiprocessing.Pool(WORKERS, initializer, initargs)


class StdlibSpawn(Stdlib):
    def __init__(self):
        import multiprocessing

        self.pool = multiprocessing.get_context("spawn").Pool(WORKERS)

    def pool_with_initializer(self, initializer, initargs):
        import multiprocessing

        return multiprocessing.get_context("spawn").Pool(WORKERS, initializer, initargs)


class Serial(Library):
    """No parallelism: the baseline for speedups and memory."""

    def map(self, func, items, chunksize=None):
        return list(map(func, items))

    def map_with_state(self, factory, task, items, calls):
        state = factory()
        return [[task(state, item) for item in items] for _ in range(calls)]


class Multiprocess(Stdlib):
    can_lambda = True

    def __init__(self):
        import multiprocess

        self.pool = multiprocess.Pool(WORKERS)

    def pool_with_initializer(self, initializer, initargs):
        import multiprocess

        return multiprocess.Pool(WORKERS, initializer, initargs)


class Futures(Library):
    can_lambda = False

    def __init__(self):
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(WORKERS)

    def map(self, func, items, chunksize=None):
        """The executor has no automatic chunking: given the stdlib Pool's rule, as a user who
        reads its docs would (its default, one item per task, was 700x slower on tiny tasks)."""
        if chunksize is None:
            items = list(items)
            chunksize = max(1, -(-len(items) // (WORKERS * 4)))
        return list(self.pool.map(func, items, chunksize=chunksize))

    def close(self):
        self.pool.shutdown()

    def pool_with_initializer(self, initializer, initargs):
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(WORKERS, initializer=initializer, initargs=initargs)


class Joblib(Library):
    def __init__(self):
        from joblib import Parallel, delayed

        self.delayed = delayed
        self.pool = Parallel(n_jobs=WORKERS)

    def map(self, func, items, chunksize=None):
        return self.pool(self.delayed(func)(item) for item in items)


class Mpire(Library):
    def __init__(self):
        from mpire import WorkerPool

        self.pool = WorkerPool(n_jobs=WORKERS, use_dill=True, keep_alive=True)

    def map(self, func, items, chunksize=None):
        return self.pool.map(func, list(items), chunk_size=chunksize, progress_bar=False)

    def close(self):
        self.pool.terminate()

    def map_with_state(self, factory, task, items, calls):
        """MPIRE's way (its benchmarks): a pool whose workers keep a worker_state that its
        worker_init fills, kept alive across the calls."""
        import functools

        from mpire import WorkerPool
        from mpire.utils import make_single_arguments  # or MPIRE unpacks an item into arguments

        items = make_single_arguments(items, generator=False)
        with WorkerPool(WORKERS, use_dill=True, use_worker_state=True, keep_alive=True) as pool:
            return [
                pool.map(
                    functools.partial(with_mpire_state, task),
                    items,
                    worker_init=functools.partial(set_mpire_state, factory),
                    progress_bar=False,
                )
                for _ in range(calls)
            ]


class MpirePerMap(Mpire):
    """A fresh MPIRE pool per map, as its README shows (`with WorkerPool(...) as pool`): forked
    at each call, so the workers see the notebook's globals as they are now. A kept pool
    (`keep_alive=True`, the `mpire` row) keeps the globals of the moment it forked: stale."""

    def __init__(self):
        from mpire import WorkerPool

        self.pool_class = WorkerPool

    def map(self, func, items, chunksize=None):
        with self.pool_class(n_jobs=WORKERS, use_dill=True) as pool:
            return pool.map(func, list(items), chunk_size=chunksize, progress_bar=False)

    def close(self):
        pass


class Pathos(Library):
    def __init__(self):
        from pathos.pools import ProcessPool

        self.pool = ProcessPool(nodes=WORKERS)

    def map(self, func, items, chunksize=None):
        return (
            self.pool.map(func, items, chunksize=chunksize)
            if chunksize
            else self.pool.map(func, items)
        )

    def close(self):
        self.pool.close()
        self.pool.join()
        self.pool.clear()


class Dask(Library):
    def __init__(self):
        from distributed import Client, LocalCluster

        self.cluster = LocalCluster(n_workers=WORKERS, threads_per_worker=1, dashboard_address=None)
        self.client = Client(self.cluster)

    def map(self, func, items, chunksize=None):
        return self.client.gather(self.client.map(func, list(items), pure=False))

    def close(self):
        self.client.close()
        self.cluster.close()


LIBRARIES = {
    "serial": Serial,
    "nbparallel": NbParallel,
    "stdlib": Stdlib,
    "stdlib-spawn": StdlibSpawn,
    "multiprocess": Multiprocess,
    "futures": Futures,
    "joblib": Joblib,
    "mpire": Mpire,
    "mpire-per-map": MpirePerMap,
    "pathos": Pathos,
    "dask": Dask,
    "nbparallel+progress": lambda: NbParallel(progress=True),
    "nbparallel-kernel": NbParallelInKernel,
}


# --- the workloads --------------------------------------------------------------------------


def timed(call, repeats):
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def alternated(first, second, repeats):
    """Seconds `first` and `second` say they took, run in turn, so both see the same load on a
    shared machine."""
    pairs = [(first(), second()) for _ in range(repeats)]
    return [a for a, _ in pairs], [b for _, b in pairs]


def stopwatch(call):
    """`call`, made to return how long it took."""
    return lambda: timed(call, 1)[0]


def workload(name, lib, repeats):
    """Times of `repeats` runs after a warm-up (the pool is started before timing), and extras."""
    global BIG
    import numpy

    extra = {}
    if name == "cold":
        result = lib.map(inc, range(10))
        assert result == list(range(1, 11)), result
        return [time.perf_counter() - STARTED], extra
    if name == "warm-small":
        func = (lambda x: x + 1) if lib.can_lambda else inc
        lib.map(func, range(10))
        return timed(lambda: lib.map(func, range(10)), repeats), extra
    if name in ("tiny-tasks", "tiny-tasks-list"):
        func = (lambda x: x + 1) if lib.can_lambda else inc
        lib.map(func, range(1000))
        items = range(200_000) if name == "tiny-tasks" else list(range(200_000))
        times = timed(lambda: lib.map(func, items), repeats)
        assert lib.map(func, items)[-1] == 200_000
        return times, extra
    if (
        name == "progress-overhead"
    ):  # on and off alternately, in one process: median of paired ratios
        lib.tiny_call_seconds(progress=False)
        lib.tiny_call_seconds(progress=True)
        updates_before = getattr(getattr(lib, "kernel", None), "widget_updates", 0)
        off, on = alternated(
            lambda: lib.tiny_call_seconds(progress=False),
            lambda: lib.tiny_call_seconds(progress=True),
            repeats,
        )
        extra["off_s"] = statistics.median(off)
        # Each call against the one run just before it, which saw the same load: a ratio of the
        # two medians moved by 3% between runs of 100 pairs, more than the cost being measured.
        extra["on_over_off"] = statistics.median(a / b for a, b in zip(on, off, strict=True))
        if hasattr(lib, "kernel"):
            extra["widget_updates_per_call"] = (
                lib.kernel.widget_updates - updates_before
            ) / repeats
        return on, extra
    if name == "cpu-bound":
        lib.map(spin, range(WORKERS))
        serial, times = alternated(
            stopwatch(lambda: [spin(i) for i in range(16)]),
            stopwatch(lambda: lib.map(spin, range(16), chunksize=1)),
            repeats,
        )
        extra["serial_s"] = statistics.median(serial)
        extra["speedup"] = extra["serial_s"] / statistics.median(times)
        return times, extra
    if name == "big-numpy-arg":
        array = numpy.ones(50_000_000)  # 400 MB
        parts = numpy.array_split(array, 8)
        lib.map(inc, range(2))
        times = timed(lambda: lib.map(slice_sum, parts, chunksize=1), repeats)
        assert sum(lib.map(slice_sum, parts, chunksize=1)) == 50_000_000
        return times, extra
    if name == "big-global":
        # times: calls with the array unchanged. Extras: the first call after it is assigned
        # (in a pool that has not used NumPy yet), calls after one element changed in place,
        # and the first call over a new array in a pool that has.
        lib.map(inc, range(2))  # the pool starts before the global exists, as in a notebook
        BIG = numpy.ones(50_000_000)

        def checked_call(expected):
            started = time.perf_counter()
            total = sum(lib.map(global_slice_sum, range(8), chunksize=1))
            seconds = time.perf_counter() - started
            if total != expected:
                raise AssertionError(f"wrong result {total}: the workers saw a stale global")
            return seconds

        extra["first_call_s"] = checked_call(50_000_000)
        times = [checked_call(50_000_000) for _ in range(repeats)]
        changed = []
        for n in range(1, 4):
            BIG[n] = 2.0
            changed.append(checked_call(50_000_000 + n))
        extra["changed_call_s"] = statistics.median(changed)
        BIG = numpy.full(50_000_000, 2.0)
        extra["new_array_call_s"] = checked_call(100_000_000)
        return times, extra
    if name == "heavy-closure":
        lib.map(inc, range(2))
        table = {f"key-{i}": i for i in range(600_000)}  # about 50 MB
        lookup = make_lookup(list(table.values()))
        started = time.perf_counter()
        first = lib.map(lookup, range(1000))
        extra["first_call_s"] = time.perf_counter() - started
        assert first[999] == 999
        return timed(lambda: lib.map(lookup, range(1000)), repeats), extra
    if name == "big-results":
        lib.map(inc, range(2))
        return timed(lambda: lib.map(megabyte, range(1000)), repeats), extra
    if name.startswith("mpire-"):
        times = mpire_shape(name, lib, repeats)
        extra["first_s"] = times[0]  # spawned workers import the task's libraries here
        return times, extra
    if name == "imap-million":
        import psutil

        parallel = lib.parallel
        before = psutil.Process().memory_info().rss
        peak = before
        started = time.perf_counter()
        for n, _result in enumerate(parallel.imap(inc, range(1_000_000))):
            if n % 100_000 == 0:
                peak = max(peak, psutil.Process().memory_info().rss)
        extra["parent_rss_growth_mb"] = (peak - before) / 2**20
        return [time.perf_counter() - started], extra
    raise SystemExit(f"unknown workload {name}")


def mpire_shape(name, lib, repeats):
    """Times of `repeats` runs of one of MPIRE's benchmarks: each run sets up every worker's
    state, then maps (several times for the model, which is loaded once per worker)."""
    import functools
    import pickle
    import tempfile

    import numpy

    lib.map(inc, range(2))  # the pool is running, as in a notebook
    random = numpy.random.default_rng(42)
    if name == "mpire-numerical":
        image = numpy.zeros((1000, 1000))
        items = [random.normal(size=(4, 4)) for _ in range(WORKERS * 6)]
        factory, task, calls = functools.partial(identity, image), process_image, 1
        # MPIRE concatenates array results into one array; the others give a list of arrays.
        check = lambda results: numpy.asarray(results[0]).size == len(items) * 201 * 201  # noqa: E731
    elif name == "mpire-stateful":
        # Unbalanced documents of random 8-byte words, as MPIRE's benchmark makes them.
        data = random.bytes(400 * 1000 * 8)
        items, at = [], 0
        for index in range(400):
            words = 1000 + (500 if index % 2 == 0 else -500)
            items.append([data[at + 8 * w : at + 8 * w + 8] for w in range(words)])
            at = (at + 8 * words) % (len(data) - 8 * 1500)
        factory, task, calls = StreamingPrefixCount, add_document, 1
        check = lambda results: len(set().union(*results[0])) > 0  # noqa: E731
    else:
        from sklearn.datasets import load_digits
        from sklearn.neural_network import MLPClassifier

        digits = load_digits()
        model = MLPClassifier(hidden_layer_sizes=(256,), max_iter=50, random_state=42)
        model.fit(digits.data / 16.0, digits.target)
        path = os.path.join(tempfile.mkdtemp(prefix="nbparallel-bench-"), "model.pickle")
        with open(path, "wb") as file:
            pickle.dump(model, file)
        items = list(range(10))
        factory, task, calls = functools.partial(Model, path), evaluate_next_batch, 5
        # MPIRE concatenates array results into one array; the others give a list of arrays.
        rows = len(items) * len(digits.data)
        check = lambda results: numpy.asarray(results[-1]).reshape(-1, 10).shape[0] == rows  # noqa: E731
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        results = lib.map_with_state(factory, task, items, calls)
        times.append(time.perf_counter() - started)
        if not check(results):
            raise AssertionError(f"wrong results in {name}")
    return times


def tree_rss_mb():
    import psutil

    total = 0
    for pid in _tree_pids():
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def shmem_mb():
    """The machine's shared memory in use (Linux /proc/meminfo), 0 elsewhere."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("Shmem:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _tree_pids():
    """This process and its descendants. Sampled every 20 ms during a workload, so it must be
    cheap: psutil finds children by reading every process of the machine (0.9 ms here, with the
    GIL held, which cut nbparallel's CPU-bound speedup by about 0.15 over 4 runs); Linux lists
    each thread's children in the tree's own /proc files (0.16 ms)."""
    if not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"):
        import psutil

        return [os.getpid(), *(child.pid for child in psutil.Process().children(recursive=True))]
    pids, todo = [], [os.getpid()]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as children:
                    todo.extend(int(child) for child in children.read().split())
        except OSError:  # it exited meanwhile
            pass
    return pids


def main():
    library, name, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
    peak = [0.0]
    shmem_start = shmem_mb()
    shmem_peak = [shmem_start]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.02):
            peak[0] = max(peak[0], tree_rss_mb())
            shmem_peak[0] = max(shmem_peak[0], shmem_mb())

    threading.Thread(target=sample, daemon=True).start()
    try:
        lib = LIBRARIES[library]()
        times, extra = workload(name, lib, repeats)
        lib.close()
        out = {
            "times": times,
            "median": statistics.median(times),
            "peak_mb": peak[0],
            # Shared memory of the whole machine (not in any RSS until mapped): its growth
            # during the run, where a library's shared copies of data live.
            "shmem_growth_mb": shmem_peak[0] - shmem_start,
            "extra": extra,
        }
    except BaseException as error:  # a library that cannot run a workload is shown failing
        traceback.print_exc()  # on stderr, for whoever runs this file by hand
        out = {"error": f"{type(error).__name__}: {error}"[:300]}
    stop.set()
    print(json.dumps(out), flush=True)
    os._exit(0)  # do not wait for pools that will not close


if __name__ == "__main__":
    main()
