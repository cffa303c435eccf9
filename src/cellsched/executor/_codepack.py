"""Code snapshots: a deterministic, content-addressed archive of a project's code.

Standard library only, and no ``cellsched`` imports: this module is shipped as is to Ray
workers that have nothing but Ray (and Python) installed, where :func:`unpack` runs.

**What a snapshot holds.** Regular files (content and one bit of mode: executable or not)
and symbolic links (their target text) under one root, by relative ``/``-separated path.
Nothing else: no directories as such (an empty directory is not kept), no owners, no
times, no other permission bits. Sockets, FIFOs and devices are skipped. ``.git`` (file or
directory, at any depth) is never taken. A symlink is kept as a link when its target is
relative and stays inside the root; one that points outside it (or is absolute) is an
error, so that a snapshot never depends on files it does not hold.

**The digest** is the SHA-256 of the snapshot's *manifest*: the line ``cellsched-code/1``
and then, per entry in order of the UTF-8 bytes of its path, one line of compact JSON
``[path, kind, value]`` with kind ``"file"``, ``"exec"`` (value: the content's SHA-256) or
``"link"`` (value: the target). It depends on nothing but the content, so the same tree
gives the same digest on any host and Python version, whatever the archive's bytes.

**The archive** (the bytes stored and shipped) is a gzip'd POSIX tar of those entries in
manifest order, with mode 0644/0755 (links 0777), owner 0, no names, mtime 0.
:func:`check` and :func:`unpack` recompute the manifest from the archive and refuse it
unless the digest matches, before anything is written.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import itertools
import json
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

FORMAT = "cellsched-code/1"
MIB = 1024 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")


class PackError(ValueError):
    """A tree that cannot be snapshotted, or an archive that is not a valid snapshot.

    ``field`` says which spec field the problem belongs to (``dir``, ``max_mib``, ...), so
    a caller can name it; ``str(e)`` is one line for a person."""

    def __init__(self, message: str, field: str = "dir") -> None:
        super().__init__(message)
        self.field = field


class DigestMismatch(PackError):
    """The archive's content does not have the digest it was asked to have."""


@dataclass(frozen=True)
class Entry:
    """One file or link of a snapshot: ``kind`` is ``file``, ``exec`` or ``link``; ``data``
    is the content (the target's UTF-8 text for a link)."""

    path: str
    kind: str
    data: bytes

    def manifest_value(self) -> str:
        return self.data.decode("utf-8") if self.kind == "link" else hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class Packed:
    """A snapshot: its digest, archive bytes, number of entries and content bytes."""

    digest: str
    blob: bytes
    files: int
    content_bytes: int


# -- excludes -----------------------------------------------------------------------------


def _glob_regex(pattern: str) -> str:
    """gitignore glob → regex: ``*`` and ``?`` stop at ``/``, ``**`` crosses it."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == len(pattern):
            out.append("/.*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1:i + 2] in ("!", "]") else i + 1)
            if end < 0:
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1:end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        elif c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


class Excludes:
    """gitignore-style patterns: a pattern with a ``/`` before its end is anchored at the
    root, one without matches a name at any depth; a trailing ``/`` matches directories only;
    ``*``, ``?``, ``[...]`` and ``**`` as in git. Negation (``!``) is not supported."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self._rules: list[tuple[re.Pattern[str], bool]] = []
        for raw in patterns:
            p = raw.strip()
            if not p or p.startswith("#"):
                raise PackError(f"{raw!r} is not a pattern", "exclude")
            if p.startswith("!"):
                raise PackError(f"{raw!r}: negation ('!') is not supported", "exclude")
            dir_only = p.endswith("/")
            p = p.rstrip("/")
            if not p:
                raise PackError(f"{raw!r} is not a pattern", "exclude")
            anchored = "/" in p
            body = _glob_regex(p.lstrip("/"))
            regex = body if anchored else f"(?:.*/)?{body}"
            try:
                self._rules.append((re.compile(regex + r"\Z", re.DOTALL), dir_only))
            except re.error as e:
                raise PackError(f"{raw!r}: {e}", "exclude") from None

    def __call__(self, rel: str, is_dir: bool) -> bool:
        name = rel.rsplit("/", 1)[-1]
        if name == ".git":
            return True
        return any(rx.match(rel) and (is_dir or not dir_only) for rx, dir_only in self._rules)


# -- packing ------------------------------------------------------------------------------


def check_link(path: str, target: str) -> None:
    # A normalised relative target that stays inside lexically stays inside for real: the
    # link's own directory holds no link (nothing lies under a link), and every link met
    # further down obeys the same rule. "d/.." (with d -> .) would not, hence normalised.
    if (not target or "\x00" in target or target.startswith("/") or posixpath.normpath(target) != target
            or posixpath.normpath(posixpath.join(posixpath.dirname(path), target)).split("/")[0] == ".."):
        raise PackError(f"link {path} -> {target} points outside the code or is not a plain relative path "
                        "(exclude it, or copy the file in)")


def _check_path(path: str) -> None:
    parts = path.split("/")
    if not path or path.startswith("/") or "\x00" in path or any(p in ("", ".", "..") for p in parts):
        raise PackError(f"unsafe path in the archive: {path!r}")


def walk(root: str | os.PathLike[str], excludes: Sequence[str] = (), max_bytes: int = 100 * MIB) -> Iterator[Entry]:
    """The entries under ``root`` (not yet sorted), excludes applied, at most ``max_bytes``
    of file content in all (:class:`PackError` with field ``max_mib`` beyond)."""
    base = Path(root)
    if not base.is_dir():
        raise PackError(f"no such directory: {base}" if not base.exists() else f"not a directory: {base}")
    match = Excludes(excludes)
    total = 0
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            names = os.listdir(base / rel_dir if rel_dir else base)
        except OSError as e:
            raise PackError(f"cannot read {rel_dir or '.'}: {e.strerror}") from None
        for name in names:
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                raise PackError(f"{posixpath.join(rel_dir, name)!r}: file name is not UTF-8") from None
            rel = f"{rel_dir}/{name}" if rel_dir else name
            full = base / rel
            try:
                st = os.lstat(full)
            except OSError as e:  # gone while we looked, or unreadable
                raise PackError(f"cannot read {rel}: {e.strerror}") from None
            if stat.S_ISDIR(st.st_mode):
                if not match(rel, True):
                    stack.append(rel)
            elif match(rel, False):
                continue
            elif stat.S_ISLNK(st.st_mode):
                try:
                    target = os.readlink(full)
                except OSError as e:
                    raise PackError(f"cannot read {rel}: {e.strerror}") from None
                check_link(rel, target)
                yield Entry(rel, "link", target.encode("utf-8"))
            elif stat.S_ISREG(st.st_mode):
                data = b"" if total + st.st_size > max_bytes else _read(full, rel)  # never read past the cap
                total += max(len(data), st.st_size)  # it may have grown since the lstat
                if total > max_bytes:
                    raise PackError(f"the code is over {max_bytes / MIB:g} MiB (exclude more, or raise max_mib)",
                                    "max_mib")
                yield Entry(rel, "exec" if st.st_mode & stat.S_IXUSR else "file", data)


def _read(path: Path, rel: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise PackError(f"cannot read {rel}: {e.strerror}") from None


def manifest(entries: Iterable[Entry]) -> bytes:
    """The canonical manifest (entries must be sorted by path)."""
    lines = [FORMAT]
    for e in entries:
        lines.append(json.dumps([e.path, e.kind, e.manifest_value()], ensure_ascii=False, separators=(",", ":")))
    return ("\n".join(lines) + "\n").encode("utf-8")


def _sorted(entries: Iterable[Entry]) -> list[Entry]:
    out = sorted(entries, key=lambda e: e.path.encode("utf-8"))
    for a, b in itertools.pairwise(out):
        if a.path == b.path:
            raise PackError(f"{a.path}: twice in the archive")
    paths = {e.path for e in out}
    for e in out:
        parts = e.path.split("/")
        if any("/".join(parts[:i]) in paths for i in range(1, len(parts))):
            raise PackError(f"{e.path}: lies under a file or a link")
    return out


def pack_entries(entries: Iterable[Entry]) -> Packed:
    """The snapshot of ``entries``: digest and deterministic archive bytes."""
    items = _sorted(entries)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:
        for e in items:
            info = tarfile.TarInfo(e.path)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if e.kind == "link":
                info.type = tarfile.SYMTYPE
                info.linkname = e.data.decode("utf-8")
                info.mode = 0o777
                tar.addfile(info)
            else:
                info.mode = 0o755 if e.kind == "exec" else 0o644
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
    # Level 1: a third of level 6's CPU for a few per cent more bytes on code; the digest does not
    # depend on it (it is the content's), so it may change without changing any seal.
    blob = gzip.compress(raw.getvalue(), compresslevel=1, mtime=0)
    return Packed(
        hashlib.sha256(manifest(items)).hexdigest(), blob, len(items),
        sum(len(e.data) for e in items if e.kind != "link"),
    )


def pack(root: str | os.PathLike[str], excludes: Sequence[str] = (), max_bytes: int = 100 * MIB) -> tuple[str, bytes]:
    """Snapshot the directory ``root``: ``(digest, archive bytes)``. Raises :class:`PackError`
    for a missing directory, more than ``max_bytes`` of content, a link leaving ``root``."""
    p = pack_entries(walk(root, excludes, max_bytes))
    return p.digest, p.blob


# -- reading an archive back --------------------------------------------------------------


def entries(blob: bytes) -> list[Entry]:
    """The entries of an archive, sorted, every path and link checked safe (no absolute
    paths, no ``..``, no link leaving the root, nothing under a link, no other kinds)."""
    try:
        raw = gzip.decompress(blob)
        out = []
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for m in tar:
                _check_path(m.name)
                if m.issym():
                    check_link(m.name, m.linkname)
                    out.append(Entry(m.name, "link", m.linkname.encode("utf-8")))
                elif m.isreg():
                    f = tar.extractfile(m)
                    assert f is not None
                    out.append(Entry(m.name, "exec" if m.mode & 0o100 else "file", f.read()))
                else:
                    raise PackError(f"{m.name}: not a file or a link")
    except (OSError, EOFError, tarfile.TarError, UnicodeError) as e:
        raise PackError(f"not a code archive: {e}") from None
    return _sorted(out)


def _require_digest(digest: str) -> None:
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise PackError(f"not a SHA-256 digest: {digest!r}", "digest")


def check(blob: bytes, digest: str) -> list[Entry]:
    """The archive's entries if its content has ``digest``; else :class:`DigestMismatch`."""
    _require_digest(digest)
    items = entries(blob)
    actual = hashlib.sha256(manifest(items)).hexdigest()
    if actual != digest:
        raise DigestMismatch(f"archive content is sha256:{actual}, not sha256:{digest}", "digest")
    return items


def read(blob: bytes, path: str) -> bytes | None:
    """One file's content from an archive (None if it holds no such file)."""
    return next((e.data for e in entries(blob) if e.path == path and e.kind != "link"), None)


def unpacked(dest_dir: str | os.PathLike[str], digest: str) -> Path | None:
    """``dest_dir/<digest>`` if that snapshot was already unpacked there, else None."""
    _require_digest(digest)
    final = Path(dest_dir) / digest
    return final if final.is_dir() else None


def unpack(blob: bytes, dest_dir: str | os.PathLike[str], digest: str) -> Path:
    """Unpack the snapshot ``digest`` into ``dest_dir/<digest>`` and return that path.

    The archive is checked first (its content must have ``digest``, every path safe): on
    failure nothing is written. Idempotent and safe to run concurrently (ranks on one node):
    each caller extracts into its own temporary directory beside the final one and renames
    it into place; a caller that finds the snapshot there already returns it untouched. The
    directory is a per-node cache keyed by digest: treat it as read-only."""
    done = unpacked(dest_dir, digest)
    if done is not None:
        return done
    items = check(blob, digest)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / digest
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:16]}-", dir=dest))
    try:
        for e in items:
            target = tmp.joinpath(*e.path.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            if e.kind == "link":
                os.symlink(e.data.decode("utf-8"), target)
            else:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                             0o755 if e.kind == "exec" else 0o644)
                with os.fdopen(fd, "wb") as f:
                    f.write(e.data)
                os.chmod(target, 0o755 if e.kind == "exec" else 0o644)  # whatever the umask
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, final)
        except OSError as err:
            # Another rank got there first: its copy is the same content.
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not final.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
