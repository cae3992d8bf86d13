"""nbparallel's error classes and every message a user reads.

Our own errors share the base `NbParallelError` and also subclass the builtin that fits, so
`except TypeError:` catches a bad option just as it would catch one from the standard library.
Exceptions raised by the user's function are never wrapped: they come back as their own type.
"""

from __future__ import annotations

import reprlib

_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60
_short.maxlist = 4
_short.maxdict = 4


def short_repr(obj: object) -> str:
    """A repr short enough for an error message, whatever the object."""
    try:
        return _short.repr(obj)
    except Exception:  # a broken __repr__ must not hide the real error
        return f"<{type(obj).__name__} object>"


def type_name(obj: object) -> str:
    cls = type(obj)
    module = cls.__module__
    return (
        cls.__qualname__ if module in ("builtins", "__main__") else f"{module}.{cls.__qualname__}"
    )


class NbParallelError(Exception):
    """Base class of the errors nbparallel itself raises."""


class OptionError(NbParallelError, ValueError):
    """An option has a value nbparallel cannot use."""


class UnsendableError(NbParallelError, TypeError):
    """The function, something it captures, or an item cannot be copied to a worker."""


class ResultError(NbParallelError, TypeError):
    """A worker computed a result (or raised an exception) that cannot be sent back."""


class WorkerDiedError(NbParallelError, RuntimeError):
    """A worker process ended while it was running a task."""


class TaskTimeoutError(NbParallelError, TimeoutError):
    """An item ran longer than the call's `timeout`; its worker was stopped."""


class TaskExitError(NbParallelError, RuntimeError):
    """A task raised SystemExit (or another exit-like exception) in its worker."""


class ClusterStartError(NbParallelError, RuntimeError):
    """A process of the local dask cluster did not start: it exited, or did not answer in time."""


class UnsafeFolderWarning(UserWarning):
    """The folder of worker records could be written by someone else: nbparallel does not use it."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, chained as its `__cause__`."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


# What to do instead, for each kind of object that must not be copied into a worker.
_ADVICE = {
    "lock": "each worker would get its own unlocked copy, so it would protect nothing. "
    "Return values from the function and combine them in the notebook instead",
    "file": "each worker would reopen it (a file open for writing would be truncated). "
    "Pass the path and open the file inside the function",
    "connection": "it cannot be copied to another process. Open the connection inside the "
    "function (or once per worker), not in the notebook",
    "generator": "a generator cannot be copied. Pass its values as the items to map over, or "
    "make it a list first",
    "thread": "threads and processes cannot be copied to another process. Start them inside "
    "the function if each task needs one",
    "call handle": "a running call lives in the notebook. Wait for its results there "
    "(`handle.result()`) and pass or capture the results instead",
}


def unsendable_capture(func_name: str, path: str, obj: object, kind: str) -> UnsendableError:
    return UnsendableError(
        f"cannot send {func_name!r} to the workers: it captures {path!r} "
        f"({type_name(obj)}), and {_ADVICE[kind]}."
    )


def unpicklable_capture(
    func_name: str, path: str, obj: object, error: BaseException
) -> UnsendableError:
    return UnsendableError(
        f"cannot send {func_name!r} to the workers: it captures {path!r} ({type_name(obj)}), "
        f"which cannot be serialized ({type(error).__name__}: {error}). Create it inside the "
        f"function instead of capturing it."
    )


def unpicklable_function(func_name: str, error: BaseException) -> UnsendableError:
    return UnsendableError(
        f"cannot send {func_name!r} to the workers: it cannot be serialized "
        f"({type(error).__name__}: {error})."
    )


def unpicklable_item(position: int, item: object, error: BaseException) -> UnsendableError:
    return UnsendableError(
        f"cannot send item {position} ({short_repr(item)}) to the workers: "
        f"{type(error).__name__}: {error}. Pass something that can be copied (a path, a number, "
        f"plain data) and build the object inside the function."
    )


def unsendable_result(func_name: str, position: int, item_repr: str, detail: str) -> ResultError:
    return ResultError(
        f"{func_name!r} ran on item {position} ({item_repr}) but its result cannot be "
        f"sent back: {detail}. Return plain data (numbers, strings, lists, dicts, arrays)."
    )


def unloadable_exception(func_name: str, position: int, item_repr: str, detail: str) -> ResultError:
    return ResultError(
        f"{func_name!r} raised an exception on item {position} ({item_repr}) that cannot be sent "
        f"back, so it cannot be re-raised as its own type: {detail}. Its traceback follows."
    )


def missing_module(func_name: str, module: str) -> ModuleNotFoundError:
    return ModuleNotFoundError(
        f"the workers cannot import {module!r}, which {func_name!r} needs. Install it in the "
        f"kernel's environment, or import it inside the function.",
        name=module,
    )


def item_note(position: int, item_repr: str, pid: int) -> str:
    return f"nbparallel: raised in worker pid {pid} on item {position}: {item_repr}"


JOBLIB_TASK = "on joblib task"


def joblib_task_note(pid: int, index: int, func: object, args: tuple[object, ...]) -> str:
    name = getattr(func, "__name__", None) or type(func).__name__
    shown = ", ".join(short_repr(arg) for arg in args[:3]) + (", ..." if len(args) > 3 else "")
    return f"nbparallel: raised in worker pid {pid} {JOBLIB_TASK} {index}: {name}({shown})"


def joblib_missing() -> OptionError:
    return OptionError(
        'joblib=True needs joblib, which is not installed: pip install "nbparallel[joblib]".'
    )


def pandas_missing() -> ModuleNotFoundError:
    return ModuleNotFoundError(
        "to_dataframe() needs pandas, which is not installed: pip install pandas", name="pandas"
    )


def no_insights() -> LookupError:
    return LookupError(
        "no call has recorded insights yet: run one with insights=True (or after "
        "parallel.configure(insights=True), or %%parallel ... --insights), then ask again. "
        "Maps and their variants record; submit, joblib's calls and every-worker setup do not."
    )


def _running(position: int | None, item_repr: str | None) -> str:
    if position is None:
        return "before it started an item (while loading the function or the items)"
    return f"while running item {position} ({item_repr})"


def worker_died(
    pid: int, returncode: int | None, position: int | None, item_repr: str | None
) -> WorkerDiedError:
    if returncode is None:
        how = "closed its connection"
    elif returncode < 0:
        how = f"was killed by signal {-returncode}"
    else:
        how = f"exited with code {returncode}"
    likely = {
        -9: "It was killed with SIGKILL: often the out-of-memory killer; check memory use.",
        -11: "A segmentation fault: a crash in C code (an extension module) run by the task.",
        -6: "It aborted: a crash in C code (an extension module) run by the task.",
    }.get(returncode or 0, "The function may call os._exit(), or crash the interpreter.")
    return WorkerDiedError(
        f"worker pid {pid} {how} {_running(position, item_repr)}. {likely} "
        f"The worker has been replaced; the pool is usable. (retries=N runs such items again.)"
    )


def timed_out(
    func_name: str, pid: int, timeout: float, position: int | None, item_repr: str | None
) -> TaskTimeoutError:
    return TaskTimeoutError(
        f"{func_name!r} ran longer than timeout={timeout:g} s {_running(position, item_repr)}; "
        f"its worker (pid {pid}) was stopped and replaced. Raise the timeout, or use "
        f'errors="return" or "skip" to let the other items go on.'
    )


def task_exited(func_name: str, position: int, item_repr: str, detail: str) -> TaskExitError:
    interrupt = "A KeyboardInterrupt raised by a task fails only it; to stop a call, use Stop."
    leaving = "sys.exit() in a task ends only that task; return a value or raise an exception."
    advice = interrupt if detail.startswith("KeyboardInterrupt") else leaving
    return TaskExitError(
        f"{func_name!r} tried to end its worker on item {position} ({item_repr}): "
        f"{detail.rstrip(': ')}. {advice}"
    )


def load_note(pid: int) -> str:
    return f"nbparallel: raised in worker pid {pid} while rebuilding the function or the items sent to it"


def unloadable_results(
    func_name: str, position: int, size: int, error: BaseException
) -> ResultError:
    return ResultError(
        f"{func_name!r} ran on items {position} to {position + size - 1}, but their results could not "
        f"be rebuilt here: {type(error).__name__}: {error}. Return plain data instead."
    )


def bad_option(name: str, value: object, expected: str) -> OptionError:
    return OptionError(f"{name}={value!r} is not valid: {name} must be {expected}.")


def bad_workers_variable(name: str, value: str) -> OptionError:
    return OptionError(
        f"the environment variable {name}={value!r} is not valid: it must be a positive whole "
        f"number (how many workers a call uses by default). Set it to one, unset it, or give "
        f"workers= to the call or to parallel.configure()."
    )


def unknown_option(name: str, known: list[str]) -> TypeError:
    return TypeError(f"unknown option {name!r}; the options are: {', '.join(known)}.")


def timeout_needs_processes(backend: str) -> OptionError:
    return OptionError(
        f"timeout= needs the processes backend: a task on {backend} cannot be stopped once it "
        f'runs. Use backend="processes", or check the time inside the function.'
    )


def dask_missing(module: str = "distributed") -> ModuleNotFoundError:
    return ModuleNotFoundError(
        f"the dask backend needs the {module} package, which is not installed. Install it with: "
        'pip install "nbparallel[dask]"',
        name=module,
    )


def dask_cluster_silent(role: str, pid: int, awaited: str, seconds: float) -> ClusterStartError:
    return ClusterStartError(
        f"the dask {role} nbparallel started (pid {pid}) did not {awaited} within {seconds:g} s, "
        f"and was stopped. The machine may be overloaded: run the call again, or start a "
        f"cluster yourself and pass its address: parallel.configure(backend='dask', address=...)."
    )


def dask_cluster_exited(
    role: str, pid: int, awaited: str, returncode: int | None
) -> ClusterStartError:
    return ClusterStartError(
        f"the dask {role} nbparallel started (pid {pid}) exited (code {returncode}) before it "
        f"could {awaited}. What it printed went to the kernel's stderr (the Jupyter server's log)."
    )


def dask_task_lost(
    func_name: str, position: int, size: int, error: BaseException
) -> WorkerDiedError:
    return WorkerDiedError(
        f"the dask cluster lost the task running {func_name!r} on items {position} to "
        f"{position + size - 1}: {type(error).__name__}: {error}. A worker may have died (memory?); "
        f"the cluster replaces it."
    )


def session_option(name: str) -> TypeError:
    return TypeError(
        f"{name} applies to the pool, not to one call: set it with parallel.configure({name}=...)."
    )


def not_callable(obj: object) -> TypeError:
    return TypeError(
        f"parallel.map needs a function to call on each item, got {type_name(obj)} "
        f"({short_repr(obj)}). Pass the function first: parallel.map(func, items)."
    )


def not_iterable(obj: object) -> TypeError:
    return TypeError(
        f"parallel.map needs an iterable of items, got {type_name(obj)} ({short_repr(obj)}). "
        f"Pass a list, range, generator or other iterable: parallel.map(func, items)."
    )


def not_a_tuple(position: int, item: object) -> TypeError:
    return TypeError(
        f"starmap needs each item to be a tuple of arguments; item {position} is "
        f"{type_name(item)} ({short_repr(item)}). Use parallel.map for single arguments."
    )


def nested_setup() -> NbParallelError:
    return NbParallelError(
        "%%parallel --every-worker cannot run inside a task: it sets up the pool's workers, "
        "and a task runs in one of them. Run it in the notebook."
    )


def worker_never_ready(pid: int, seconds: float) -> WorkerDiedError:
    return WorkerDiedError(
        f"worker process {pid} did not say it was ready within {seconds:.0f} s of starting, and "
        "was stopped (is the machine out of memory, or is an import on its start-up path hanging?). "
        "Run the call again; if it happens again, run `python -c 'import nbparallel'` to see why."
    )


def pool_restarted() -> NbParallelError:
    return NbParallelError(
        "the pool was restarted while this task was running; run the call again."
    )


def pool_shut_down() -> NbParallelError:
    return NbParallelError("the pool was shut down while this call was running.")


def cancel_unanswered(name: str, seconds: float) -> NbParallelError:
    return NbParallelError(
        f"map_async of {name} did not stop within {seconds:.0f} s of cancel(): it is waiting for "
        "the next item of its input (a generator that blocks?), which cannot be interrupted. It "
        "stops as soon as that item arrives; make the input finite or non-blocking to cancel at once."
    )


def unsafe_record_folder(path: str, problem: str) -> str:
    return (
        f"nbparallel: not using {path!r} for its worker records: it {problem}. Whoever can "
        "write there can make nbparallel stop any of your processes, so workers left behind "
        "by a dead kernel are not stopped while this lasts. Set NBPARALLEL_STATE_DIR to a "
        "folder only you can write to, or remove this one (ask an administrator if it is "
        "not yours)."
    )


def launcher_stuck(seconds: float) -> NbParallelError:
    return NbParallelError(
        f"could not start a worker process: the nbparallel-launcher thread did not answer within "
        f"{seconds:.0f} s (is the system out of memory or of processes?). Try the call again, or "
        "restart the kernel."
    )
