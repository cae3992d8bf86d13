"""The folder of worker records, private to the user: where it is, whether it can be trusted, and
reading and writing files in it without following links.

The sweep kills what the records list, so whoever can write a record can make it kill any of our
processes (pids and creation times are public). A folder is trusted only if it is a real folder
(not a link), ours, and not writable by anyone else; each record read must be a regular file of
ours too. Read and search bits for others are accepted: they reveal pids that /proc shows anyway,
and refusing them would end the sweep for every folder an earlier nbparallel made under umask 022.
Where the platform allows, every file is opened relative to the folder's descriptor, so the folder
checked is the folder used, even if its path is swapped afterwards.
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
import warnings
from pathlib import Path

from . import errors

_POSIX = hasattr(os, "getuid")  # False on Windows: no owners or modes to check there
_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)
_BINARY = getattr(os, "O_BINARY", 0)  # Windows (os.open never lets children inherit: PEP 446)
_USE_DIR_FD = (
    hasattr(os, "O_DIRECTORY")
    and {os.open, os.unlink, os.rename} <= os.supports_dir_fd  # os.replace is os.rename's sibling
    and os.listdir in os.supports_fd
)
_READ_LIMIT = 1 << 20  # a record lists a few workers: anything larger is not one
_warned: set[str] = set()


def my_uid() -> int:
    """The owner of the files this process creates (the effective uid), -1 where there is none."""
    return os.geteuid() if _POSIX else -1


def default_location() -> Path:
    """The user's runtime folder (`$XDG_RUNTIME_DIR`) if it is private, else the temp folder.

    On Windows: under the user's own local app data (the temp folder is per-user there too)."""
    if not _POSIX:
        local = os.environ.get("LOCALAPPDATA")
        return Path(local or tempfile.gettempdir()) / "nbparallel"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        try:
            if problem(os.lstat(runtime), strict=True) is None:
                return Path(runtime) / "nbparallel"
        except OSError:
            pass
    return Path(tempfile.gettempdir()) / f"nbparallel-{os.getuid()}"


def problem(status: os.stat_result, strict: bool = False) -> str | None:
    """Why a folder with this `lstat`/`fstat` result cannot hold records, or None if it can.

    `strict` also refuses read and search access for others (the runtime folder's own rule)."""
    if stat.S_ISLNK(status.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(status.st_mode):
        return "is not a folder"
    if not _POSIX:
        return None
    if status.st_uid != my_uid():
        return f"belongs to user id {status.st_uid}, not to you (user id {my_uid()})"
    mode = stat.S_IMODE(status.st_mode)
    if mode & (0o077 if strict else 0o022):
        return f"can be {'used' if strict else 'changed'} by other users (mode {mode:o})"
    return None


class PrivateFolder:
    """A folder that passed the checks, opened; its files are read and written by name."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self._fd = fd  # None where the platform cannot open files relative to a folder

    def __enter__(self) -> PrivateFolder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _where(self, name: str) -> str:
        return name if self._fd is not None else str(self.path / name)

    def names(self) -> list[str]:
        return os.listdir(self._fd if self._fd is not None else self.path)

    def read(self, name: str) -> bytes | None:
        """The content of file `name`, or None if it is gone, a link, not a regular file, or
        not ours (a file someone else put here is never trusted)."""
        flags = os.O_RDONLY | _NO_FOLLOW | getattr(os, "O_NONBLOCK", 0) | _BINARY
        try:
            fd = os.open(self._where(name), flags, dir_fd=self._fd)
        except OSError:
            return None
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode) or (_POSIX and status.st_uid != my_uid()):
                return None
            data = b""
            while len(data) <= _READ_LIMIT and (chunk := os.read(fd, 1 << 16)):
                data += chunk
            return data if len(data) <= _READ_LIMIT else None
        except OSError:
            return None
        finally:
            os.close(fd)

    def write(self, name: str, data: bytes) -> None:
        """Replace file `name` with `data` at once. The temporary file gets a random name and
        is created exclusively: anything already there (a planted link, say) makes this fail
        with FileExistsError instead of being written through."""
        temporary = f".{name}.{os.getpid()}.{secrets.token_hex(8)}.tmp"  # not *.json: never swept
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NO_FOLLOW | _BINARY
        fd = os.open(self._where(temporary), flags, 0o600, dir_fd=self._fd)
        try:
            with open(fd, "wb", closefd=False) as file:
                file.write(data)
        except BaseException:
            self.remove(temporary)
            raise
        finally:
            os.close(fd)
        os.replace(
            self._where(temporary), self._where(name), src_dir_fd=self._fd, dst_dir_fd=self._fd
        )

    def remove(self, name: str) -> None:
        try:
            os.unlink(self._where(name), dir_fd=self._fd)
        except FileNotFoundError:
            pass


def open_folder(path: Path, create: bool) -> PrivateFolder | None:
    """The folder at `path`, checked and opened; None if it is missing (and not `create`d) or
    cannot be trusted, which is said once per path in a warning."""
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    try:
        found = problem(os.lstat(path))
    except FileNotFoundError:
        return None
    fd = None
    if found is None and _USE_DIR_FD:
        try:  # the check above was on the path; this one is on the folder we will use
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _NO_FOLLOW)
            found = problem(os.fstat(fd))
        except OSError as error:
            found = f"could not be opened as a folder ({error.strerror})"
    if found is None:
        return PrivateFolder(path, fd)
    if fd is not None:
        os.close(fd)
    if str(path) not in _warned:
        _warned.add(str(path))
        warnings.warn(
            errors.unsafe_record_folder(str(path), found), errors.UnsafeFolderWarning, stacklevel=3
        )
    return None
