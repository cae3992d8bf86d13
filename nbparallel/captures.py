"""What a function takes along when it is sent: the objects it captures (closures, globals it
reads, defaults, and what those reach), which of them cannot be copied to another process, and
the notebook cells and submodules its code needs in a worker.
"""

from __future__ import annotations

import builtins
import dis
import functools
import io
import linecache
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

_MAIN = "__main__"
# Bounds of the search for unsendable captures: deep enough for real notebooks, cheap for big data.
_MAX_DEPTH = 6
_MAX_OBJECTS = 10_000
_MAX_CONTAINER = 1_000


def is_notebook_code(obj: object) -> bool:
    return getattr(obj, "__module__", None) == _MAIN


def needs_value(obj: object) -> bool:
    """True for functions and classes that a worker cannot import by name."""
    if not isinstance(obj, (type, types.FunctionType)):
        return False
    return is_notebook_code(obj) or "<" in getattr(obj, "__qualname__", "<")


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


@functools.lru_cache(maxsize=1024)  # read on every call of a function: disassemble it once
def global_names(code: types.CodeType) -> frozenset[str]:
    """Names the code reads as globals (not attribute names, which share co_names)."""
    return frozenset(
        {
            ins.argval
            for c in _code_objects(code)
            for ins in dis.get_instructions(c)
            if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME")
        }
    )


def send_only_read_globals(detect: Any) -> None:
    """Make dill (its `detect` module) take along, for a function sent by value with
    recurse=True, the globals its code reads, and no more.

    dill's own `globalvars` also descends into every function those globals name, a library's
    included, though a library function goes by reference (its globals are never sent), and
    guards no cycle: scikit-learn's `validate_params` wrappers, which reach each other, took it
    minutes, or ended in a RecursionError, for `lambda d: make_classification(d)`. A notebook
    function among the globals goes by value in turn, with the globals it reads itself."""
    original = detect.globalvars

    def read_globals(func: Any, recurse: bool = True, builtin: bool = False) -> dict[str, Any]:
        if not (recurse and isinstance(func, types.FunctionType)):
            return dict(original(func, recurse, builtin))
        found = {}
        for name in global_names(func.__code__):  # not a copy of the notebook's whole namespace
            if name in func.__globals__:
                found[name] = func.__globals__[name]
            elif builtin and hasattr(builtins, name):
                found[name] = getattr(builtins, name)
        return found

    detect.globalvars = read_globals


def _direct_captures(obj: object) -> Iterator[tuple[str, object]]:
    """(name, value) pairs that would be copied along with `obj` by value."""
    if isinstance(obj, types.FunctionType):
        code = obj.__code__
        for name, cell in zip(code.co_freevars, obj.__closure__ or (), strict=False):
            try:
                yield name, cell.cell_contents
            except ValueError:  # an empty cell: the variable is not assigned yet
                continue
        for name in sorted(global_names(code)):
            if name in obj.__globals__:
                yield name, obj.__globals__[name]
        for index, value in enumerate(obj.__defaults__ or ()):
            yield f"default #{index}", value
        for name, value in (obj.__kwdefaults__ or {}).items():
            yield f"default {name}", value
    elif isinstance(obj, types.MethodType):
        yield "self", obj.__self__
        yield from _direct_captures(obj.__func__)
    elif isinstance(obj, functools.partial):
        yield "func", obj.func
        for index, value in enumerate(obj.args):
            yield f"args[{index}]", value
        yield from obj.keywords.items()
    elif isinstance(obj, dict):
        yield from ((f"[{key!r}]", value) for key, value in list(obj.items())[:_MAX_CONTAINER])
    elif isinstance(obj, (list, tuple, set, frozenset)):
        yield from ((f"[{index}]", value) for index, value in enumerate(list(obj)[:_MAX_CONTAINER]))
    elif is_notebook_code(type(obj)) and hasattr(obj, "__dict__"):
        yield from ((f".{key}", value) for key, value in vars(obj).items())


def _join(path: str, name: str) -> str:
    if not path:
        return name
    return path + name if name[0] in "[." else f"{path} -> {name}"


def captured_objects(func: Callable[..., Any]) -> Iterator[tuple[str, object]]:
    """Every object sent along with `func`, with a readable path such as `helper -> cfg['db']`.

    Follows notebook functions, methods, partials, containers and notebook-class instances; stops
    at modules and installed code (they go by reference), and at a bounded size.
    """
    seen: set[int] = set()
    stack: list[tuple[str, object, int]] = [("", func, 0)]
    while stack and len(seen) < _MAX_OBJECTS:
        path, obj, depth = stack.pop()
        if id(obj) in seen or isinstance(obj, types.ModuleType):
            continue
        seen.add(id(obj))
        if path:
            yield path, obj
        if depth >= _MAX_DEPTH:
            continue
        if isinstance(obj, types.FunctionType) and path and not needs_value(obj):
            continue  # installed code goes by reference: what it uses is not sent
        children = list(_direct_captures(obj))
        for name, value in reversed(children):
            stack.append((_join(path, name), value, depth + 1))


@functools.cache
def _unsendable_types() -> dict[str, tuple[type, ...]]:
    import socket
    import sqlite3
    import subprocess
    import threading

    lock_types = (
        type(threading.Lock()),
        type(threading.RLock()),
        threading.Condition,
        threading.Semaphore,
        threading.Event,
        threading.Barrier,
    )
    return {
        "lock": lock_types,
        "connection": (socket.socket, sqlite3.Connection, sqlite3.Cursor),
        "generator": (types.GeneratorType, types.AsyncGeneratorType, types.CoroutineType),
        "thread": (threading.Thread, subprocess.Popen),
    }


def unsendable_kind(obj: object) -> str | None:
    """Which kind of process-bound object `obj` is ("lock", "file", ...), or None if it can go."""
    if isinstance(obj, io.IOBase) and not isinstance(obj, (io.BytesIO, io.StringIO)):
        return "file"
    for kind, kinds in _unsendable_types().items():
        if isinstance(obj, kinds):
            return kind
    if type(obj).__module__ == "nbparallel.background":  # a MapHandle (importing it would cycle)
        return "call handle"
    return None


def submodules_used(functions: list[types.FunctionType]) -> list[str]:
    """Submodules the functions reach through a package they use (`urllib.request.urlopen` after
    `import urllib.request`): a module goes by reference, and importing the package alone in a
    worker would not import them."""
    needed: set[str] = set()
    for function in functions:
        names = {name for code in _code_objects(function.__code__) for name in code.co_names}
        packages = [
            v.__name__ for v in function.__globals__.values() if isinstance(v, types.ModuleType)
        ]
        while packages:  # xml -> xml.dom -> xml.dom.minidom
            package = packages.pop()
            for name in names:
                submodule = f"{package}.{name}"
                if submodule in sys.modules and submodule not in needed:
                    needed.add(submodule)
                    packages.append(submodule)
    return sorted(needed)


def notebook_sources(functions: list[types.FunctionType]) -> dict[str, Any]:
    """linecache entries of notebook cells the functions' code comes from, for worker tracebacks."""
    sources = {}
    for function in functions:
        filename = function.__code__.co_filename
        entry = linecache.cache.get(filename)
        # An entry with no modification time is not backed by a file: a cell or exec'd code.
        if entry is not None and len(entry) == 4 and entry[1] is None:
            sources[filename] = entry
    return sources
