"""Snapshotting a spec's ``code``: a directory or a git commit, into a content-addressed
archive (the format and digest are :mod:`cellsched.executor._codepack`'s).

:func:`snapshot` reads the files, applies the excludes and the size cap, checks a lock
file, and returns the archive with the :class:`~cellsched.spec.models.Code` it seals: the
same fields with ``commit`` as the full SHA and ``digest`` set. Every problem is a
:class:`~cellsched.errors.BadInput` naming the field (``code.dir``, ``code.commit``, ...).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cellsched.errors import BadInput
from cellsched.executor import _codepack as codepack
from cellsched.spec.models import Code

# pip options that may appear in a sealed lock file: they choose where packages come from,
# never which ones. -r, -c and -e would pull in what the lock file does not pin.
_LOCK_OPTIONS = ("--index-url", "-i", "--extra-index-url", "--find-links", "-f", "--trusted-host", "--no-index",
                 "--only-binary", "--no-binary", "--prefer-binary", "--require-hashes", "--pre")
_HASH = re.compile(r"--hash[= ](sha256|sha384|sha512):[0-9a-f]{64,128}\b")
_PINNED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[^\]]*\])?\s*(===?\s*[^\s;,]+\s*(;.*)?$|@\s*\S+)")
_REMOTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://|^[^/\s]+@[^/\s]+:")


@dataclass(frozen=True)
class Snapshot:
    """A spec's code as sealed: ``digest``, the archive ``blob``, how many files (and
    links) and how many bytes of content it holds, and where it came from (for people)."""

    digest: str
    blob: bytes
    files: int
    content_bytes: int
    source: str

    @property
    def size(self) -> int:
        """Bytes of the archive as stored in the ledger and shipped to the workers."""
        return len(self.blob)

    def to_json(self) -> dict[str, object]:
        return {"digest": self.digest, "files": self.files, "bytes": self.content_bytes,
                "packed_bytes": self.size, "source": self.source}


def snapshot(code: Code, base: Path, where: str) -> tuple[Code, Snapshot]:
    """Snapshot ``code`` (paths relative to ``base``, the spec file's directory); ``where``
    (the spec file) starts every error line."""
    try:
        if code.git is None:
            root = Path(os.path.normpath(base / (code.dir or ".")))
            items = list(codepack.walk(root, code.exclude, code.max_mib * codepack.MIB))
            source, sealed = f"dir {root}", code
        else:
            sha, items = _from_git(code, base, where)
            source, sealed = f"git {code.git}@{sha}", code.model_copy(update={"commit": sha})
    except codepack.PackError as e:
        raise BadInput(f"{where}: code.{e.field}: {e}") from None
    if code.requirements is not None:
        lock = next((e for e in items if e.path == code.requirements and e.kind != "link"), None)
        if lock is None:
            raise BadInput(f"{where}: code.requirements: no file {code.requirements} in the code "
                           "(missing, excluded or a link)")
        problem = lock_problem(lock.data)
        if problem:
            raise BadInput(f"{where}: code.requirements: {code.requirements} {problem}")
    try:
        packed = codepack.pack_entries(items)
    except codepack.PackError as e:
        raise BadInput(f"{where}: code.{e.field}: {e}") from None
    snap = Snapshot(packed.digest, packed.blob, packed.files, packed.content_bytes, source)
    return sealed.model_copy(update={"digest": packed.digest}), snap


# -- lock files ------------------------------------------------------------------------------


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    start, parts = 0, []
    for n, line in enumerate(text.splitlines(), 1):
        if not parts:
            start = n
        line = re.sub(r"(^|\s)#.*$", "", line)
        if line.rstrip().endswith("\\"):
            parts.append(line.rstrip()[:-1])
            continue
        parts.append(line)
        yield start, " ".join(p.strip() for p in parts).strip()
        parts = []
    if parts:
        yield start, " ".join(p.strip() for p in parts).strip()


def lock_problem(data: bytes) -> str | None:
    """Why a pip requirements file is not a sealed lock (every requirement pinned with
    ``==`` or a URL, and with ``--hash=sha256:...``), or None if it is one."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "is not UTF-8 text"
    for n, line in _logical_lines(text):
        if not line:
            continue
        if line.startswith("-"):
            option = re.split(r"[=\s]", line, maxsplit=1)[0]
            if option not in _LOCK_OPTIONS:
                return f"line {n}: {option} is not allowed in a lock file (inline what it names, pinned and hashed)"
            continue
        requirement = line.split(" --", 1)[0].strip()
        if not _PINNED.match(requirement):
            return f"line {n}: {requirement} is not pinned to one version (name==version)"
        if not _HASH.search(line):
            return f"line {n}: {requirement} is not hash-pinned (--hash=sha256:...)"
    return None


# -- git ------------------------------------------------------------------------------------


def _run(args: list[str], cwd: Path | None = None, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    # GIT_DIR and friends from the caller's shell would point git at another repository.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | {"LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0"}
    try:
        return subprocess.run(["git", *args], cwd=cwd, input=stdin, capture_output=True, env=env, check=False)
    except FileNotFoundError:
        raise BadInput("code.git: git is not installed") from None


def _first_line(err: bytes) -> str:
    lines = err.decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else "failed"


def _from_git(code: Code, base: Path, where: str) -> tuple[str, list[codepack.Entry]]:
    assert code.git is not None and code.commit is not None
    if _REMOTE.match(code.git):
        if len(code.commit) not in (40, 64):
            raise BadInput(f"{where}: code.commit: give the full SHA for a remote repository")
        with tempfile.TemporaryDirectory(prefix="cellsched-git-") as tmp:
            repo = Path(tmp)
            _run(["init", "-q", "--bare"], cwd=repo)
            got = _run(["fetch", "-q", "--depth", "1", "--no-tags", code.git, code.commit], cwd=repo)
            if got.returncode != 0:
                raise BadInput(f"{where}: code.commit: cannot fetch {code.commit} from {code.git}: "
                               f"{_first_line(got.stderr)}")
            return _tree(repo, code, where)
    repo = Path(os.path.normpath(base / code.git))
    if not repo.is_dir():
        raise BadInput(f"{where}: code.git: no such repository: {repo}")
    if _run(["rev-parse", "--git-dir"], cwd=repo).returncode != 0:
        raise BadInput(f"{where}: code.git: not a git repository: {repo}")
    return _tree(repo, code, where)


def _tree(repo: Path, code: Code, where: str) -> tuple[str, list[codepack.Entry]]:
    found = _run(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{code.commit}^{{commit}}"], cwd=repo)
    if found.returncode != 0:
        raise BadInput(f"{where}: code.commit: no commit {code.commit} in {code.git} (or the prefix is ambiguous)")
    sha = found.stdout.decode().strip()
    listing = _run(["ls-tree", "-r", "-l", "-z", "--full-tree", sha], cwd=repo)
    if listing.returncode != 0:
        raise BadInput(f"{where}: code.git: cannot list {sha}: {_first_line(listing.stderr)}")
    match = codepack.Excludes(code.exclude)
    wanted: list[tuple[str, str, str]] = []  # (path, kind, object)
    total, cap = 0, code.max_mib * codepack.MIB
    for record in listing.stdout.split(b"\0"):
        if not record:
            continue
        meta, _, raw_path = record.partition(b"\t")
        mode, kind, obj, size = meta.decode().split()
        path = raw_path.decode("utf-8", "surrogateescape")
        if kind != "blob":  # a submodule: its code is not in this repository
            continue
        parts = path.split("/")
        if any(match("/".join(parts[:i]), True) for i in range(1, len(parts))) or match(path, False):
            continue
        if mode == "120000":
            wanted.append((path, "link", obj))
            continue
        total += int(size)
        if total > cap:
            raise BadInput(f"{where}: code.max_mib: the code is over {code.max_mib} MiB "
                           "(exclude more, or raise max_mib)")
        wanted.append((path, "exec" if mode == "100755" else "file", obj))
    contents = _cat(repo, [obj for _, _, obj in wanted], where)
    items = []
    for path, kind, obj in wanted:
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            raise BadInput(f"{where}: code.git: {path!r}: file name is not UTF-8") from None
        items.append(codepack.Entry(path, kind, contents[obj]))
        if kind == "link":
            try:
                codepack.check_link(path, contents[obj].decode("utf-8"))
            except (codepack.PackError, UnicodeDecodeError) as e:
                raise BadInput(f"{where}: code.git: {e}") from None
    return sha, items


def _cat(repo: Path, objects: list[str], where: str) -> dict[str, bytes]:
    """Blob contents by object id, read in one ``git cat-file --batch``."""
    unique = sorted(set(objects))
    if not unique:
        return {}
    out = _run(["cat-file", "--batch"], cwd=repo, stdin=("\n".join(unique) + "\n").encode())
    if out.returncode != 0:
        raise BadInput(f"{where}: code.git: cannot read objects: {_first_line(out.stderr)}")
    data, pos, found = out.stdout, 0, {}
    for obj in unique:
        nl = data.index(b"\n", pos)
        head = data[pos:nl].split()
        if len(head) != 3:
            raise BadInput(f"{where}: code.git: object {obj} is missing")
        size = int(head[2])
        found[obj] = data[nl + 1:nl + 1 + size]
        pos = nl + 1 + size + 1
    return found
