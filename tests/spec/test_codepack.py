"""executor/_codepack: the code snapshot's format. Same tree, same digest (wherever it is,
whenever it was touched); any change to a file's content, name or executable bit, a new
digest; unpack refuses a wrong digest and any archive that would write outside its
directory, and is idempotent and safe when ranks on one node race."""

from __future__ import annotations

import ast
import gzip
import io
import multiprocessing
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from cellsched.executor import _codepack as cp

MODULE = Path(cp.__file__)


def tree(root: Path, files: dict[str, str | bytes] | None = None) -> Path:
    """A small project tree: ``files`` maps a relative path to its content."""
    files = files if files is not None else {
        "train.py": "print('train')\n", "lib/model.py": "W = 1\n", "data/planted.txt": "0.6 0.8\n",
        "run.sh": "#!/bin/sh\n",
    }
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
    if (root / "run.sh").exists():
        (root / "run.sh").chmod(0o755)
    return root


def digest_of(root: Path, excludes: tuple[str, ...] = ()) -> str:
    return cp.pack(root, excludes)[0]


# -- determinism ----------------------------------------------------------------------------

def test_same_tree_same_digest_and_bytes_wherever_it_lies(tmp_path: Path) -> None:
    a, b = tree(tmp_path / "a"), tree(tmp_path / "elsewhere" / "b")
    assert cp.pack(a) == cp.pack(b)
    assert cp.pack(a) == cp.pack(a)


def _touch(root: Path) -> None:
    os.utime(root / "train.py", (1, 1))


def _chmod_group(root: Path) -> None:
    (root / "train.py").chmod(0o664)  # only the owner's execute bit counts


def _empty_dir(root: Path) -> None:
    (root / "empty").mkdir()


def _git(root: Path) -> None:
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "lib" / ".git").write_text("gitdir: ../.git/modules/lib\n")


def _excluded_edit(root: Path) -> None:
    (root / "data" / "planted.txt").write_text("changed\n")


SAME: list[tuple[str, Callable[[Path], None]]] = [
    ("mtime", _touch),
    ("group/other permission bits", _chmod_group),
    ("an empty directory", _empty_dir),
    (".git, at any depth", _git),
    ("an excluded file", _excluded_edit),
]


@pytest.mark.parametrize(("why", "change"), SAME, ids=[w for w, _ in SAME])
def test_what_does_not_count(tmp_path: Path, why: str, change: Callable[[Path], None]) -> None:
    root = tree(tmp_path / "t")
    before = digest_of(root, ("data/",))
    change(root)
    assert digest_of(root, ("data/",)) == before


DIFFERENT: list[tuple[str, Callable[[Path], None]]] = [
    ("one byte of content", lambda r: (r / "lib" / "model.py").write_text("W = 2\n")),
    ("a file's name", lambda r: (r / "lib" / "model.py").rename(r / "lib" / "model2.py")),
    ("a file's directory", lambda r: (r / "lib" / "model.py").rename(r / "model.py")),
    ("the exec bit", lambda r: (r / "train.py").chmod(0o755)),
    ("the exec bit removed", lambda r: (r / "run.sh").chmod(0o644)),
    ("a file added", lambda r: (r / "lib" / "__init__.py").write_text("")),
    ("a file removed", lambda r: (r / "train.py").unlink()),
    ("a link added", lambda r: (r / "latest.py").symlink_to("train.py")),
]


@pytest.mark.parametrize(("why", "change"), DIFFERENT, ids=[w for w, _ in DIFFERENT])
def test_what_counts(tmp_path: Path, why: str, change: Callable[[Path], None]) -> None:
    root = tree(tmp_path / "t")
    before = digest_of(root)
    change(root)
    assert digest_of(root) != before


def test_a_link_target_counts(tmp_path: Path) -> None:
    root = tree(tmp_path / "t")
    (root / "latest.py").symlink_to("train.py")
    before = digest_of(root)
    (root / "latest.py").unlink()
    (root / "latest.py").symlink_to("lib/model.py")
    assert digest_of(root) != before


def test_the_digest_is_the_manifest_as_documented(tmp_path: Path) -> None:
    import hashlib
    import json

    root = tree(tmp_path / "t", {"b.py": "b", "a/x": "x"})
    (root / "b.py").chmod(0o755)
    (root / "l").symlink_to("a/x")
    lines = ["cellsched-code/1",
             json.dumps(["a/x", "file", hashlib.sha256(b"x").hexdigest()], separators=(",", ":")),
             json.dumps(["b.py", "exec", hashlib.sha256(b"b").hexdigest()], separators=(",", ":")),
             json.dumps(["l", "link", "a/x"], separators=(",", ":"))]
    assert digest_of(root) == hashlib.sha256(("\n".join(lines) + "\n").encode()).hexdigest()


def test_the_archive_is_plain_with_no_owners_or_times(tmp_path: Path) -> None:
    _, blob = cp.pack(tree(tmp_path / "t"))
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["data/planted.txt", "lib/model.py", "run.sh", "train.py"]
    assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in members} == {(0, 0, "", "", 0)}
    assert {m.name: m.mode for m in members}["run.sh"] == 0o755
    assert {m.name: m.mode for m in members}["train.py"] == 0o644


# -- excludes ---------------------------------------------------------------------------------

FILES = ["train.py", "lib/model.py", "lib/sub/deep.py", "data/raw/a.bin", "data/b.bin", "x.ckpt",
         "lib/y.ckpt", "notes.txt", "lib/notes.txt", "logs/2026/run.txt", "data.txt"]

EXCLUDES: list[tuple[str, set[str]]] = [
    ("*.ckpt", {"x.ckpt", "lib/y.ckpt"}),
    ("data/", {"data/raw/a.bin", "data/b.bin"}),            # a directory, not the file data.txt
    ("data", {"data/raw/a.bin", "data/b.bin"}),
    ("data/raw", {"data/raw/a.bin"}),                       # anchored: has a '/'
    ("/notes.txt", {"notes.txt"}),                          # anchored at the root only
    ("notes.txt", {"notes.txt", "lib/notes.txt"}),          # a name at any depth
    ("lib/*.py", {"lib/model.py"}),                         # '*' does not cross '/'
    ("lib/**/*.py", {"lib/model.py", "lib/sub/deep.py"}),   # '**' does
    ("**/run.txt", {"logs/2026/run.txt"}),
    ("logs/**", {"logs/2026/run.txt"}),
    ("?rain.py", {"train.py"}),
    ("[xy].ckpt", {"x.ckpt", "lib/y.ckpt"}),
    ("sub/", {"lib/sub/deep.py"}),                          # a directory name at any depth
]


@pytest.mark.parametrize(("pattern", "gone"), EXCLUDES, ids=[p for p, _ in EXCLUDES])
def test_excludes_are_gitignore_style(tmp_path: Path, pattern: str, gone: set[str]) -> None:
    root = tree(tmp_path / "t", {f: f for f in FILES})
    taken = {e.path for e in cp.walk(root, [pattern])}
    assert taken == set(FILES) - gone


@pytest.mark.parametrize("bad", ["!keep.py", "", "  ", "/", "# comment"])
def test_bad_patterns_are_refused(bad: str) -> None:
    with pytest.raises(cp.PackError) as e:
        cp.Excludes([bad])
    assert e.value.field == "exclude"


# -- what cannot be packed ----------------------------------------------------------------

def test_over_the_cap(tmp_path: Path) -> None:
    root = tree(tmp_path / "t", {"a.bin": b"x" * 600, "b.bin": b"y" * 600})
    with pytest.raises(cp.PackError) as e:
        cp.pack(root, (), 1000)
    assert e.value.field == "max_mib" and "over" in str(e.value)
    assert cp.pack(root, ("b.bin",), 1000)[0]  # excluded files do not count against the cap


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(cp.PackError, match="no such directory") as e:
        cp.pack(tmp_path / "nope")
    assert e.value.field == "dir"
    (tmp_path / "file").write_text("x")
    with pytest.raises(cp.PackError, match="not a directory"):
        cp.pack(tmp_path / "file")


@pytest.mark.parametrize("target", ["/etc/passwd", "../../outside.py", "../x/../../y.py", "./train.py", "lib/.."])
def test_links_leaving_the_code_or_not_plain_are_refused(tmp_path: Path, target: str) -> None:
    root = tree(tmp_path / "t")
    (root / "lib" / "link").symlink_to(target)
    with pytest.raises(cp.PackError, match="link lib/link"):
        cp.pack(root)
    assert cp.pack(root, ("link",))  # unless excluded


def test_links_inside_are_kept_and_never_followed(tmp_path: Path) -> None:
    root = tree(tmp_path / "t")
    (root / "lib" / "up").symlink_to("../train.py")
    (root / "alias").symlink_to("lib")  # a directory link: kept as a link, not entered
    kinds = {e.path: e.kind for e in cp.walk(root)}
    assert kinds["lib/up"] == kinds["alias"] == "link"
    assert not any(p.startswith("alias/") for p in kinds)


# -- unpack ---------------------------------------------------------------------------------

def test_unpack_round_trip(tmp_path: Path) -> None:
    root = tree(tmp_path / "t")
    (root / "lib" / "up").symlink_to("../train.py")
    d, blob = cp.pack(root)
    out = cp.unpack(blob, tmp_path / "cache", d)
    assert out == tmp_path / "cache" / d
    assert (out / "lib" / "up").read_text() == "print('train')\n" and os.readlink(out / "lib" / "up") == "../train.py"
    assert os.access(out / "run.sh", os.X_OK) and not os.access(out / "train.py", os.X_OK)
    assert cp.pack(out)[0] == d  # unpacked, it is the same snapshot
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [d]  # no temporary left over


def test_unpack_is_idempotent(tmp_path: Path) -> None:
    d, blob = cp.pack(tree(tmp_path / "t"))
    first = cp.unpack(blob, tmp_path / "cache", d)
    (first / "marker").write_text("kept")
    assert cp.unpacked(tmp_path / "cache", d) == first
    assert cp.unpack(blob, tmp_path / "cache", d) == first and (first / "marker").exists()
    assert cp.unpacked(tmp_path / "cache", "0" * 64) is None


def _race(args: tuple[bytes, str, str]) -> str:
    blob, dest, digest = args
    return str(cp.unpack(blob, dest, digest))


def test_ranks_racing_on_one_node_all_get_the_one_copy(tmp_path: Path) -> None:
    files = {f"m{i}/f{j}.py": f"{i} {j}\n" * 50 for i in range(10) for j in range(20)}
    d, blob = cp.pack(tree(tmp_path / "t", files))
    with multiprocessing.get_context("fork").Pool(8) as pool:
        paths = pool.map(_race, [(blob, str(tmp_path / "cache"), d)] * 16)
    assert set(paths) == {str(tmp_path / "cache" / d)}
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [d]
    assert cp.pack(tmp_path / "cache" / d)[0] == d


def test_unpack_refuses_a_wrong_digest_and_writes_nothing(tmp_path: Path) -> None:
    d, blob = cp.pack(tree(tmp_path / "t"))
    _, other = cp.pack(tree(tmp_path / "u", {"x.py": "x"}))
    with pytest.raises(cp.DigestMismatch):
        cp.unpack(other, tmp_path / "cache", d)
    with pytest.raises(cp.PackError, match="not a SHA-256"):
        cp.unpack(blob, tmp_path / "cache", "../../etc")
    with pytest.raises(cp.PackError, match="not a code archive"):
        cp.unpack(blob[: len(blob) // 2], tmp_path / "cache", d)
    assert not (tmp_path / "cache").exists()


def crafted(members: list[tuple[str, str, str]]) -> bytes:
    """A gzip'd tar of (name, kind, content or link target), as an attacker would write it."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, value in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value.encode()))
            else:
                info.type = {"link": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE, "dir": tarfile.DIRTYPE,
                             "fifo": tarfile.FIFOTYPE}[kind]
                info.linkname = value
                tar.addfile(info)
    return gzip.compress(raw.getvalue())


EVIL: list[tuple[str, list[tuple[str, str, str]]]] = [
    ("dot-dot", [("../evil.py", "file", "x")]),
    ("dot-dot inside", [("a/../../evil.py", "file", "x")]),
    ("absolute", [("/tmp/evil.py", "file", "x")]),
    ("link outside", [("l", "link", "../../etc/passwd")]),
    ("absolute link", [("l", "link", "/etc/passwd")]),
    ("write through a link", [("l", "link", "."), ("l/x.py", "file", "x")]),
    ("link hop out", [("d", "link", "."), ("l", "link", "d/..")]),
    ("hard link", [("h", "hard", "/etc/passwd")]),
    ("directory entry", [("d", "dir", "")]),
    ("fifo", [("f", "fifo", "")]),
    ("a name twice", [("a.py", "file", "1"), ("a.py", "file", "2")]),
    ("a file under a file", [("a", "file", "1"), ("a/b", "file", "2")]),
]


@pytest.mark.parametrize(("why", "members"), EVIL, ids=[w for w, _ in EVIL])
def test_unpack_refuses_archives_that_would_escape(tmp_path: Path, why: str, members: list[tuple[str, str, str]]) -> None:
    blob = crafted(members)
    with pytest.raises(cp.PackError):
        cp.check(blob, "0" * 64)
    with pytest.raises(cp.PackError):
        cp.unpack(blob, tmp_path / "cache", "0" * 64)
    assert not (tmp_path / "cache").exists()


def test_a_safe_crafted_archive_is_checked_by_content_not_bytes(tmp_path: Path) -> None:
    root = tree(tmp_path / "t", {"a.py": "1", "b/c.py": "2"})
    d, _ = cp.pack(root)
    # Another writer's tar (other order, other owner, other mode bits) of the same content.
    other = crafted([("b/c.py", "file", "2"), ("a.py", "file", "1")])
    assert cp.unpack(other, tmp_path / "cache", d) == tmp_path / "cache" / d


# -- shipped alone --------------------------------------------------------------------------

def test_it_imports_only_the_standard_library() -> None:
    imported = set()
    for node in ast.walk(ast.parse(MODULE.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            imported.add((node.module or "").split(".")[0])
    assert imported - {"__future__"} <= set(sys.stdlib_module_names), imported


def test_it_works_where_cellsched_is_not_installed(tmp_path: Path) -> None:
    """As on a Ray worker with nothing but Python: the module file alone, isolated mode."""
    alone = tmp_path / "worker"
    alone.mkdir()
    shutil.copy(MODULE, alone / "codepack.py")
    root = tree(tmp_path / "t")
    d, blob = cp.pack(root)
    (tmp_path / "blob").write_bytes(blob)
    script = (
        "import sys, codepack; assert 'cellsched' not in sys.modules\n"
        f"p = codepack.unpack(open({str(tmp_path / 'blob')!r}, 'rb').read(), {str(tmp_path / 'node')!r}, {d!r})\n"
        "print(codepack.pack(p)[0])\n"
    )
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(alone)!r}); {script}"],
                         capture_output=True, text=True, check=True, cwd=alone)
    assert out.stdout.strip() == d
