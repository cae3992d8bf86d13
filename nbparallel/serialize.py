"""The only place objects are turned into bytes and back (what a function captures is `captures`).

The rule fits on a line: code defined in the notebook (or a script's `__main__`), and local
functions and lambdas, go by value with dill; everything else goes by reference with the fast C
pickler. The function of a call is serialized once (`dump_function`); items and results go in
chunks through `dumps`/`loads`.

A class defined in the notebook travels by value too, but on arrival it is first looked up by
name in the receiver's main namespace (the notebook in the parent, the function's globals in a
worker), so `isinstance(result, MyClass)` holds in the notebook and inside the function.

dill (15-40 ms to import) is imported on first use, not with this module: a script's first call
launches its workers first, and they boot while dill imports here.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import importlib
import io
import linecache
import os
import pickle
import sys
import threading
import types
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import captures, errors

if TYPE_CHECKING:
    import dill

PROTOCOL = 5
_MAIN = "__main__"
_BIG_CONTAINER = 1_000  # captured containers larger than this are pickled by the C pickler
_OUT_OF_BAND_ABOVE = 2**20  # a captured buffer (an array's data) above this travels as a frame

# In a worker: the globals of the function being run, which stand in for the notebook.
_receiver_namespace: dict[str, Any] | None = None


def set_receiver_namespace(namespace: dict[str, Any] | None) -> None:
    """Tell `loads` where notebook-defined classes are to be found in this process."""
    global _receiver_namespace
    _receiver_namespace = namespace


def resolve_by_name(qualname: str, payload: bytes) -> Any:
    """Rebuild a notebook class or function: the receiver's own one if it has it, else by value."""
    namespace = _receiver_namespace
    if namespace is None:
        main = sys.modules.get(_MAIN)
        namespace = vars(main) if main is not None else {}
    found: Any = namespace.get(qualname.split(".")[0])
    for part in qualname.split(".")[1:]:
        found = getattr(found, part, None)
    if found is not None and getattr(found, "__qualname__", None) == qualname:
        return found
    return _dill().loads(payload)


@functools.cache
def _dill() -> Any:
    import dill
    import dill.detect

    captures.send_only_read_globals(dill.detect)
    return dill


def import_dill() -> None:
    """Import dill now: a worker does, once it has said it is ready, while its first task is
    still on its way (it needs dill to rebuild the task's function)."""
    _dill()


def by_value(obj: Any) -> tuple[Any, ...] | None:
    """How notebook-defined code travels (a reduction through dill), or None for anything else."""
    if not captures.needs_value(obj):
        return None
    dill = _dill()
    payload = dill.dumps(obj, protocol=PROTOCOL, recurse=True)
    if "<" in obj.__qualname__:
        return dill.loads, (payload,)
    return resolve_by_name, (obj.__qualname__, payload)


class _Pickler(pickle.Pickler):
    """The C pickler, handing notebook-defined code to dill."""

    def reducer_override(self, obj: Any) -> Any:
        reduction = by_value(obj)
        return NotImplemented if reduction is None else reduction


def dumps(obj: object) -> bytes:
    """Serialize items or results (fast for plain data; notebook code goes by value)."""
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=PROTOCOL).dump(obj)
    return buffer.getvalue()


def loads(data: bytes) -> Any:
    return pickle.loads(data)


def dumps_frames(obj: object) -> list[Any]:
    """Serialize into frames: the pickle, then the raw data of large buffers (NumPy arrays...)
    out of band (pickle protocol 5), so that nothing big is copied into the pickle."""
    buffers: list[pickle.PickleBuffer] = []
    head = io.BytesIO()
    _Pickler(head, protocol=PROTOCOL, buffer_callback=buffers.append).dump(obj)
    # getvalue(), not getbuffer(): it hands over the BytesIO's own bytes without a copy, and
    # exports nothing. A view would keep the BytesIO exported for as long as the frames live;
    # frames kept by a traceback are collected at exit, and the BytesIO's close then fails
    # ("Exception ignored ... BufferError: Existing exports of data").
    return [head.getvalue(), *(buffer.raw() for buffer in buffers)]


def loads_frames(frames: list[Any]) -> Any:
    return pickle.loads(frames[0], buffers=frames[1:])


def dump_chunk(items: Sequence[Any], first_position: int) -> list[Any]:
    """Serialize a chunk of items into frames; a failure names the first item that cannot be sent."""
    try:
        return dumps_frames(items)
    except (Exception, SystemExit):  # SystemExit: a hostile __reduce__ must not end the caller
        for offset, item in enumerate(items):
            try:
                dumps(item)
            except (Exception, SystemExit) as error:
                raise errors.unpicklable_item(first_position + offset, item, error) from error
        raise


@functools.cache
def _function_pickler() -> type[dill.Pickler]:
    """The pickler of functions, made on first use (dill is imported then)."""

    class FunctionPickler(_dill().Pickler):  # type: ignore[misc]
        """dill, sending modules by name, arrays out of band, and big plain containers through
        the C pickler.

        dill's pickler is written in Python: a captured table of a million entries would take it
        seconds, on every call. The C pickler (with dill for notebook code inside) takes a fraction.
        """

        def reducer_override(self, obj: Any) -> Any:
            if (
                isinstance(obj, types.ModuleType)
                and obj.__name__ != _MAIN
                and obj.__spec__ is not None
            ):
                # By name, as workers import it. dill would copy the dict of a module outside
                # site-packages (the user's own helpers.py, an editable install), locks and all.
                return importlib.import_module, (obj.__name__,)
            if type(obj).__name__ == "ndarray" and type(obj).__module__ == "numpy":
                # NumPy's own reduction hands its data to the pickler as a buffer, which can
                # travel out of band; dill's (kept for subclasses) copies it into the pickle.
                return obj.__reduce_ex__(PROTOCOL)
            if type(obj) in (list, dict, set, tuple) and len(obj) > _BIG_CONTAINER:
                try:
                    return loads, (dumps(obj),)
                except Exception:
                    return NotImplemented
            return NotImplemented

    return FunctionPickler


@dataclasses.dataclass(frozen=True)
class FunctionPayload:
    """A call's function, serialized once; workers cache it by digest."""

    name: str
    # The pickle, then the raw data of large arrays it captures, pickled out of band (so that
    # they can be shared with workers instead of copied through the socket).
    frames: list[Any]
    digest: bytes
    # For each frame, a key equal only for frames of the same bytes (None: not known), so that
    # the pool shares a frame sent again unchanged (an array not changed since) without a copy.
    frame_keys: tuple[bytes | None, ...] = ()


def function_name(func: Callable[..., Any]) -> str:
    """Its own name; a partial's, if one was given (the joblib backend names its batch runner
    after the user's function), else that of the function it wraps."""
    name = getattr(func, "__qualname__", None)
    if name:
        return str(name)
    if isinstance(func, functools.partial):
        return function_name(func.func)
    return type(func).__qualname__


def dump_function(func: Callable[..., Any]) -> FunctionPayload:
    """Serialize `func` and what it captures, after checking that all of it can be copied.

    Raises:
        UnsendableError: `func` or a variable it captures cannot be sent; the message names it.
    """
    name = function_name(func)
    captured = list(captures.captured_objects(func))
    for path, obj in captured:
        kind = captures.unsendable_kind(obj)
        if kind:
            raise errors.unsendable_capture(name, path, obj, kind)
    key = _unchanging_key(func, captured)
    with _payloads_lock:
        if key is not None and key in _payloads:
            _payloads.move_to_end(key)
            return _payloads[key]
    payload = _dump_function(func, name, captured)
    if key is not None:
        with _payloads_lock:
            _payloads[key] = payload
            while len(_payloads) > _PAYLOADS_KEPT:
                _payloads.popitem(last=False)
    return payload


# Payloads of functions that capture only values that cannot change in place (numbers, strings,
# other functions by identity...): the same function over the same values need not go through
# dill again. Anything mutable captured (a list, a dict, an array) and the function is re-serialized.
_payloads: collections.OrderedDict[tuple[Any, ...], FunctionPayload] = collections.OrderedDict()
_payloads_lock = threading.Lock()
_PAYLOADS_KEPT = 64
_ATOMS = (int, str, bytes, bool, type(None))
_BY_IDENTITY = (types.FunctionType, types.BuiltinFunctionType, types.CodeType)


def _unchanging_key(func: Any, captured: list[tuple[str, object]]) -> tuple[Any, ...] | None:
    """A key equal for two calls only if they would serialize to the same bytes; None if unsure."""
    if not isinstance(func, types.FunctionType) or func.__dict__:
        return None
    parts: list[Any] = [func.__code__, func.__qualname__, func.__module__]
    for path, obj in captured:
        if type(obj) in _ATOMS:
            parts.append((path, type(obj), obj))
        elif type(obj) in (float, complex):
            parts.append((path, repr(obj)))  # -0.0 == 0.0, but they serialize differently
        elif isinstance(obj, _BY_IDENTITY) and not getattr(obj, "__dict__", None):
            parts.append((path, obj))
        else:
            return None
    return tuple(parts)


def _dump_function(
    func: Callable[..., Any], name: str, captured: list[tuple[str, object]]
) -> FunctionPayload:
    large: list[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        if buffer.raw().nbytes < _OUT_OF_BAND_ABOVE:
            return True  # in the pickle itself
        large.append(buffer.raw())
        return False

    try:
        buffer = io.BytesIO()
        pickler = _function_pickler()
        pickler(buffer, protocol=PROTOCOL, recurse=True, buffer_callback=out_of_band).dump(func)
        code = buffer.getvalue()
    except Exception as error:
        raise _explain_function_failure(func, name, error) from error
    functions = [
        obj for obj in [func, *(o for _, o in captured)] if isinstance(obj, types.FunctionType)
    ]
    data = pickle.dumps(
        (captures.notebook_sources(functions), captures.submodules_used(functions), code),
        protocol=PROTOCOL,
    )
    # The digest covers every byte a worker would receive: the pickle (which holds each
    # array's dtype, shape and order, and the objects of an object array) and the content of
    # the large buffers. Without a fast hash, a payload with large buffers gets a digest of its
    # own, so that a worker never takes it for another.
    import hashlib  # here, not at the top: workers never need it (its import costs them 3 ms)

    large_keys = [content_key(buffer) for buffer in large]
    digest_of = hashlib.blake2b(data, digest_size=15)
    if None in large_keys:
        digest_of.update(os.urandom(16))
    for key in large_keys:
        digest_of.update(key or b"")
    digest = (_LARGE if large else _SMALL) + digest_of.digest()
    return FunctionPayload(name, [data, *large], digest, (digest, *large_keys))


_SMALL, _LARGE = b"s", b"L"  # first byte of a payload's digest: does it hold large buffers?


@functools.cache
def _fast_hash() -> Callable[[Any], bytes] | None:
    """xxh3 (128 bits, about 25 GB/s here), or None where xxhash is not installed: the standard
    library's hashes are slower than copying the data (blake2b 0.8 GB/s, sha1 1.9 GB/s, against
    2.2 GB/s for writing it to shared memory), so there each call copies its large buffers."""
    try:
        import xxhash  # imported on first use: workers never need it
    except ImportError:
        return None
    return xxhash.xxh3_128_digest


def content_key(buffer: memoryview) -> bytes | None:
    """A key equal for two buffers only if they hold the same bytes (128 bits of xxh3: two
    different buffers share one by chance about once in 2**128); None without a fast hash."""
    hash_bytes = _fast_hash()
    if hash_bytes is None:
        return None
    return buffer.nbytes.to_bytes(8, "little") + hash_bytes(buffer)


def holds_large_data(digest: bytes) -> bool:
    """True for the digest of a payload with large buffers (of which a worker keeps the newest)."""
    return digest[:1] == _LARGE


def load_function(frames: list[Any]) -> Callable[..., Any]:
    """Rebuild a function in a worker, with the source lines of notebook cells for tracebacks."""
    sources, submodules, code = pickle.loads(frames[0])
    linecache.cache.update(sources)
    for module in submodules:
        importlib.import_module(module)
    return _dill().loads(code, buffers=frames[1:])


def _explain_function_failure(func: Callable[..., Any], name: str, error: Exception) -> Exception:
    for path, obj in captures.captured_objects(func):
        if path == name:
            continue
        try:
            _dill().dumps(obj, protocol=PROTOCOL, recurse=True)
        except Exception as capture_error:
            return errors.unpicklable_capture(name, path, obj, capture_error)
    return errors.unpicklable_function(name, error)
