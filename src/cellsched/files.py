"""Reading a file a user named (a spec, a cluster config, a key, the client config).

Only a regular file is read, a symbolic link to one included: a directory, a named pipe, a
device or a socket is one line naming it. A named pipe would block the read until something
wrote to it, and ``/dev/zero`` never ends; so the file is opened without blocking, checked
again on the open descriptor (it may have been swapped since it was looked at), and read no
further than the limit the caller gives. Standard library only: the thin client uses it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cellsched.errors import BadInput, NotFound, one_line

_CHUNK = 1 << 16


def kind_of(mode: int) -> str | None:
    """What a file that is not a regular file is, in words (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _refuse(where: str, mode: int) -> BadInput:
    kind = kind_of(mode)
    if kind == "a directory":
        return BadInput(f"{where}: is a directory, not a file")
    return BadInput(f"{where}: is {kind}, not a regular file")


def read_bytes(path: Path, limit: int, where: str | None = None) -> bytes:
    """The bytes of the regular file at ``path`` (a symbolic link to one is followed), at
    most ``limit`` of them; else one line starting with ``where`` (the path by default):
    :class:`NotFound` if there is no such file, :class:`BadInput` if it is a directory, a
    named pipe, a device or a socket, larger than ``limit``, or cannot be read. Never
    blocks on a named pipe and never reads past ``limit``."""
    where = one_line(str(path) if where is None else where)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotFound(f"{where}: no such file") from None
    except OSError as e:
        raise BadInput(f"{where}: cannot read: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(where, st.st_mode)
    if st.st_size > limit:
        raise BadInput(f"{where}: {st.st_size:,} bytes is too large (limit {limit:,})")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise NotFound(f"{where}: no such file") from None
    except OSError as e:
        raise BadInput(f"{where}: cannot read: {e.strerror}") from None
    try:
        st = os.fstat(fd)  # the file opened, which may not be the one looked at
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(where, st.st_mode)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(_CHUNK, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise BadInput(f"{where}: cannot read: {e.strerror}") from None
    finally:
        os.close(fd)
    if size > limit:  # it grew since it was looked at
        raise BadInput(f"{where}: more than {limit:,} bytes is too large (limit {limit:,})")
    return b"".join(chunks)


def check_writable(path: Path, where: str | None = None) -> None:
    """BadInput (one line starting with ``where``) unless ``path`` can be written: an
    existing regular file that may be written, or a name not yet taken in a directory that
    may be written. Checked before anything else is done, so that a command that would
    write the file does nothing at all when it could not."""
    where = one_line(str(path) if where is None else where)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            raise BadInput(f"{where}: is a symbolic link to nothing; remove it") from None
        parent = path.parent
        if not parent.is_dir():
            raise BadInput(f"{where}: no such directory {one_line(str(parent))}") from None
        if not os.access(parent, os.W_OK | os.X_OK):
            raise BadInput(f"{where}: cannot write: the directory {one_line(str(parent))} is not writable") from None
        return
    except OSError as e:
        raise BadInput(f"{where}: cannot write: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(where, st.st_mode)
    if not os.access(path, os.W_OK):
        raise BadInput(f"{where}: cannot write: permission denied")
