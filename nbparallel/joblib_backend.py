"""joblib's tasks on nbparallel's session pool: `joblib.parallel_config(backend="nbparallel")`.

Data flow::

    joblib.Parallel --submit(BatchedCalls)--> NbParallelBackend --Submitter.submit--> pool
        ^                                        |   (one nbparallel call per joblib call,
        +---- callback(future) <-- done ---------+    on at most n_jobs workers)

Each joblib `Parallel` call is one nbparallel call (`calls.Submitter`), and each batch joblib
makes is one of its tasks. The call's function is `run_batch` bound to the function of joblib's
first task (for `Parallel(...)(delayed(f)(x) ...)`, `f`): serialized once per joblib call, by
value with dill if the notebook defined it, and kept by the workers; a batch carries only its
tasks' arguments (and the function of any task that has another one). One call, so a fast worker
has its next batch queued behind the running one, and one cancel stops them all; everything else
(warm workers, errors as the user's own type, Stop, workers that never outlive the kernel) is the
pool's own. In the worker a batch runs with BLAS/OpenMP threads limited as loky limits them
(`thread_limits`) and nested joblib calls sequential. One progress bar per joblib call counts
joblib's tasks, within a batch too (the worker reports each task done through its slot), and
shows the total once joblib knows it.

Only imported where joblib is installed (`nbparallel/__init__.py` registers it then).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import joblib
from joblib._parallel_backends import (
    AutoBatchingMixin,
    FallbackToBackend,
    ParallelBackendBase,
    SequentialBackend,
    ThreadingBackend,
)

from . import calls, errors, serialize, slots, thread_limits
from .progressbar import Progress

NAME = "nbparallel"
_ITEM_NOTE = "nbparallel: raised in worker pid"  # errors.item_note's start: says "item 0" here
RAMP_GROWTH = 16  # joblib's auto-batching grows a batch at most 2x per completed batch
SLICE_TASKS = 1024  # at most this many tasks taken from the user's generator at once


def grown_batch_size(size: int, seconds: float, ideal_seconds: float, n_jobs: int) -> int:
    """The next batch size after batches of `size` tasks took `seconds` each, less than
    `ideal_seconds`: joblib's aim (twice what fits in `ideal_seconds`, against oscillation),
    reached in steps of at most RAMP_GROWTH times rather than joblib's doubling, and never
    above SLICE_TASKS // n_jobs.

    Each step costs a round trip to a worker, and on a warm pool tiny tasks come back within a
    millisecond: at 2x a step, 10,000 of them took 13 steps and 65 batches. A batch's time
    includes its trip and its wait behind the worker's running batch, so the aim errs small;
    RAMP_GROWTH bounds a straggler made of tasks slower than the first ones were.

    The bound: joblib takes n_jobs batches' worth of the generator at once, in the thread that
    receives results, under its lock. Aiming at 0.2 s batches (for loky's per-batch cost; ours
    is about 0.2 ms), it took 8,192 tiny tasks at once: 20 ms of the user's `delayed(f)(x)`
    with no batch sent and both workers idle. 1,024 at once keep a slice near 2 ms, and the
    workers busy while the next one is made (`benchmarks/joblib_backend.py`).
    """
    aim = 2 * int(size * ideal_seconds / seconds)
    return max(min(RAMP_GROWTH * size, aim, SLICE_TASKS // max(n_jobs, 1)), 1)


def register(make_default: bool | None = None) -> None:
    """Register the backend with joblib (harmless twice); `make_default` True or False also
    makes it joblib's default backend, or gives the default back to loky."""
    joblib.register_parallel_backend(NAME, NbParallelBackend)
    if make_default is not None:
        from joblib import parallel as joblib_parallel

        if make_default:
            joblib_parallel.DEFAULT_BACKEND = NAME
        elif joblib_parallel.DEFAULT_BACKEND == NAME:
            joblib_parallel.DEFAULT_BACKEND = "loky"


def run_batch(
    function: Any, nesting_level: int, limits: dict[str, int], tasks: list[Any], first: int
) -> list[Any]:
    """In a worker: run a batch of joblib tasks, (func, args, kwargs) each, func None for the
    call's `function`; a failing task's exception names it (`first` is the first one's index).

    BLAS/OpenMP threads are limited to `limits` meanwhile, and nested joblib calls run
    sequentially (as joblib's own batches run them): the pool already has a worker per CPU.
    """
    nested = SequentialBackend(nesting_level=nesting_level)
    with thread_limits.limited(limits), joblib.parallel_config(backend=nested, n_jobs=None):
        results = []
        for offset, (func, args, kwargs) in enumerate(tasks):
            slots.report_items_done(offset)
            task = function if func is None else func
            try:
                results.append(task(*args, **kwargs))
            except Exception as error:
                if hasattr(error, "add_note"):
                    error.add_note(errors.joblib_task_note(os.getpid(), first + offset, task, args))
                raise
        return results


class NbParallelBackend(AutoBatchingMixin, ParallelBackendBase):
    """A joblib backend whose batches run on `nbparallel.parallel`'s pool."""

    supports_retrieve_callback = True  # hence generators and timeout= too (joblib's own checks)
    supports_inner_max_num_threads = True  # parallel_config(inner_max_num_threads=N)
    supports_sharedmem = False
    uses_threads = False
    default_n_jobs = 1  # joblib's meaning of n_jobs=None: one task at a time, unless configured
    _effective_batch_size: int  # AutoBatchingMixin's: the batch size it gives joblib
    _smoothed_batch_duration: float  # and how long batches of that size took (0: not yet known)

    def __init__(self, nesting_level: int | None = None, **kwargs: Any) -> None:
        super().__init__(nesting_level=nesting_level, **kwargs)
        self._lock = threading.Lock()
        self._jobs = 1  # workers a call may use at once (joblib's n_jobs, at most the pool's)
        self._submitter: calls.Submitter | None = None  # the joblib call's one nbparallel call
        self._function: Any = None  # the call's function: tasks that have it do not carry it
        self._limits: dict[str, int] = {}  # threads per API inside a task (thread_limits)
        self._progress: Progress | None = None
        self._retrieving = False  # joblib waits for results: it dispatched what it had
        self._failed = 0
        self._redrawing = threading.Event()

    # --- how many workers -------------------------------------------------------------------

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """joblib's n_jobs on the session pool: -1 is every worker, -2 all but one, a positive
        number at most the pool's size (the pool is never resized for joblib)."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None or calls.in_worker():
            return 1  # in a worker, the pool already uses every CPU
        size = _session().options.worker_count
        return max(size + 1 + n_jobs, 1) if n_jobs < 0 else min(n_jobs, size)

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_kwargs: Any,
    ) -> int:
        if prefer == "threads" or require == "sharedmem":
            raise FallbackToBackend(ThreadingBackend(nesting_level=self.nesting_level))
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self.parallel = parallel
        self._jobs = n_jobs
        # Threads in one process share the libraries: limits are for worker processes only.
        self._limits = (
            {}
            if _session().options.backend == "thread"
            else thread_limits.per_task(
                n_jobs, joblib.cpu_count(), self.inner_max_num_threads, os.environ
            )
        )
        return n_jobs

    def compute_batch_size(self) -> int:
        """joblib's auto batch size (AutoBatchingMixin), grown faster (`grown_batch_size`); the
        first batches, and a batch too slow, go joblib's own way."""
        size, seconds = self._effective_batch_size, self._smoothed_batch_duration
        if not 0 < seconds < self.MIN_IDEAL_BATCH_DURATION:
            return int(super().compute_batch_size())
        grown = grown_batch_size(size, seconds, self.MIN_IDEAL_BATCH_DURATION, self._jobs)
        if grown != size:  # a new size: its duration is measured afresh, as joblib does
            self._effective_batch_size = grown
            self._smoothed_batch_duration = self._DEFAULT_SMOOTHED_BATCH_DURATION
            if self.parallel.verbose >= 10:  # joblib's own line for it
                self.parallel._print(
                    f"Batch computation too fast ({seconds}s.) Setting batch_size={grown}."
                )
        return grown

    def get_nested_backend(self) -> tuple[Any, int | None]:
        return SequentialBackend(nesting_level=(self.nesting_level or 0) + 1), None

    # --- one joblib call --------------------------------------------------------------------

    def start_call(self) -> None:
        """A joblib Parallel call starts: its progress bar (the total, if joblib knows it), and a
        thread that redraws it (joblib's own loop never calls us while it waits)."""
        session = _session()
        options = session.options
        with self._lock:
            self._failed = 0
            self._function, self._retrieving = None, False
            self._progress = progress = Progress(
                getattr(self.parallel, "n_tasks", None),
                options.progress,
                "joblib",
                running=self._running_tasks,
                workers=(lambda: session.status().workers) if options.show_workers else None,
            )
            progress.show()  # now: joblib sends its tasks through `submit` after this
        if progress.redraw_seconds is not None:
            self._redrawing = threading.Event()
            threading.Thread(
                target=self._redraw,
                args=(progress, self._redrawing),
                name="nbparallel-joblib-bar",
                daemon=True,
            ).start()

    @contextlib.contextmanager
    def retrieval_context(self) -> Iterator[None]:
        """joblib waits for results from here on: it has dispatched what it could so far."""
        self._retrieving = True
        yield

    def _running_tasks(self) -> float:
        submitter = self._submitter
        return submitter.running_items() if submitter is not None else 0.0

    def _learn_total(self, progress: Progress) -> None:
        """A generator's length is known once joblib has dispatched it all (under self._lock)."""
        parallel = self.parallel
        if progress.total is None and self._retrieving and not getattr(parallel, "_iterating", 1):
            progress.learn_total(parallel.n_dispatched_tasks)

    def _redraw(self, progress: Progress, stopped: threading.Event) -> None:
        while not stopped.wait(progress.redraw_seconds or 0.1):
            with self._lock:
                if self._progress is not progress:
                    return
                self._learn_total(progress)
                progress.redraw()

    def stop_call(self) -> None:
        with self._lock:
            progress, self._progress = self._progress, None
            submitter, self._submitter = self._submitter, None
        if submitter is not None:
            submitter.close()
        self._redrawing.set()
        if progress is None:
            return
        if not getattr(self.parallel, "_exception", False):
            with self._lock:
                self._learn_total(progress)
            progress.close("done")
        else:
            progress.close("failed" if self._failed else "stopped")

    def submit(self, func: Any, callback: Any = None) -> Future[Any]:
        """Run a batch (joblib's `BatchedCalls`) on the pool; `callback(future)` when it ends."""
        # joblib counts a batch as dispatched just before submitting it: where its tasks start.
        first = max(getattr(self.parallel, "n_dispatched_tasks", len(func)) - len(func), 0)
        try:
            submitter, function = self._call_for(func.items[0][0])
            tasks = [(None if f is function else f, args, kwargs) for f, args, kwargs in func.items]
            future = submitter.submit(tasks, first)
        except Exception as error:  # something that cannot be sent: joblib hears it as the outcome
            future = Future()
            future.set_exception(error)
        size = len(func)
        future.add_done_callback(lambda done: self._finished(done, size, callback))
        return future

    def _call_for(self, function: Any) -> tuple[calls.Submitter, Any]:
        """The joblib call's one nbparallel call, made on first use, with the function of that
        first task: sent (and checked, like a map's function) once for the whole joblib call."""
        with self._lock:
            if self._submitter is None:
                runner = functools.partial(
                    run_batch, function, (self.nesting_level or 0) + 1, self._limits
                )
                runner.__qualname__ = serialize.function_name(function)  # type: ignore[attr-defined]
                self._submitter = _session().submitter(runner, self._jobs)
                self._function = function
            return self._submitter, self._function

    def _finished(self, future: Future[Any], size: int, callback: Any) -> None:
        """A batch ended (on the pool's thread): count it on the bar, tell joblib."""
        failed = not future.cancelled() and future.exception() is not None
        with self._lock:
            self._failed += failed
            # A batch cancelled (joblib's timeout, an error elsewhere, a Stop) did not finish.
            if self._progress is not None and not future.cancelled():
                self._learn_total(self._progress)
                self._progress.advance(size, 1 if failed else 0)
        if callback is not None:
            callback(future)

    def retrieve_result_callback(self, future: Future[Any]) -> list[Any]:
        """The batch's results, or the task's own exception (named by its joblib task index)."""
        try:
            return future.result()
        except Exception as error:
            notes = getattr(error, "__notes__", None)
            if notes and any(errors.JOBLIB_TASK in note for note in notes):
                # The pool's own note says "item 0" (the batch); the worker's names the task.
                kept = [n for n in notes if not n.startswith(_ITEM_NOTE) or errors.JOBLIB_TASK in n]
                setattr(error, "__notes__", kept)  # noqa: B010 (mypy's 3.10 target has no notes)
            raise

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """After a failure, an interrupt or a timeout: queued batches never start and running
        ones are stopped (their workers replaced; the pool stays usable either way)."""
        with self._lock:
            submitter, self._submitter = self._submitter, None
        if submitter is not None:
            submitter.cancel()

    def terminate(self) -> None:
        with self._lock:
            submitter, self._submitter = self._submitter, None
        if submitter is not None:
            submitter.close()
        self.reset_batch_stats()

    def __reduce__(self) -> tuple[Any, ...]:
        return NbParallelBackend, ()


def _session() -> Any:
    from . import parallel

    return parallel


register()  # on import: see nbparallel._register_joblib_backend
