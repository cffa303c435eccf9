"""A spec's ``code``: its fields validated strictly, snapshotted from a directory or a git
commit, its lock file checked, and sealed: the code's digest is part of the spec's digest,
and a spec without code keeps the digest it always had."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from spec_builders import make_spec, to_toml

from cellsched.errors import BadInput
from cellsched.executor import _codepack
from cellsched.spec.code import lock_problem
from cellsched.spec.load import load_sealed, load_spec, load_written, validate
from cellsched.spec.models import ProjectSpec
from cellsched.spec.seal import canonical_dict, canonical_json, digest, from_canonical

HASH = "a" * 64


def write(where: Path, code: dict[str, Any] | None, files: dict[str, str] | None = None, name: str = "spec.toml") -> Path:
    """A spec file in ``where`` (with ``code``), beside the given files."""
    for rel, text in (files or {"train.py": "print('train')\n"}).items():
        (where / rel).parent.mkdir(parents=True, exist_ok=True)
        (where / rel).write_text(text)
    doc = make_spec() if code is None else make_spec(code=code)
    (where / name).write_text(to_toml(doc))
    return where / name


def bad(path: Path) -> str:
    with pytest.raises(BadInput) as e:
        load_sealed(path)
    assert "\n" not in e.value.message and e.value.exit_code == 2
    return e.value.message.removeprefix(f"{path}: ")


# -- the fields ---------------------------------------------------------------------------------

FIELD_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"dir": "x", "git": "r", "commit": "abcd"}, "code.dir: give dir or git, not both"),
    ({"commit": "abcd"}, "code.commit: only with git"),
    ({"git": "../repo"}, "code.commit: required with git"),
    ({"git": "../repo", "commit": "main"}, "code.commit: String should match pattern"),
    ({"git": "../repo", "commit": "ABCD"}, "code.commit: String should match pattern"),
    ({"dir": "/home/alice/code"}, "code.dir: must be a relative path"),
    ({"dir": "~/code"}, "code.dir: must be a relative path"),
    ({"max_mib": 0}, "code.max_mib: must be greater than or equal to 1"),
    ({"max_mib": 513}, "code.max_mib: must be less than or equal to 512"),
    ({"max_mib": 1.5}, "code.max_mib: must be a whole number"),
    ({"exclude": ["!keep.py"]}, "code.exclude: '!keep.py': negation ('!') is not supported"),
    ({"exclude": [""]}, "code.exclude: '' is not a pattern"),
    ({"requirements": "../requirements.lock"}, "code.requirements: must be a file inside the code"),
    ({"requirements": "/etc/requirements.lock"}, "code.requirements: must be a relative path"),
    ({"digest": HASH}, "code.digest: is written by the seal, not in a spec file"),
    ({"dirr": "."}, "code.dirr: unknown key"),
]


@pytest.mark.parametrize(("code", "message"), FIELD_ERRORS, ids=[m.split(":")[0] + " " + str(c) for c, m in FIELD_ERRORS])
def test_bad_code_fields_name_the_field(code: dict[str, Any], message: str) -> None:
    with pytest.raises(BadInput) as e:
        validate(ProjectSpec, make_spec(code=code), "x.toml")
    assert e.value.message.startswith(f"x.toml: {message}"), e.value.message


def test_defaults_and_normal_forms() -> None:
    empty = validate(ProjectSpec, make_spec(code={}), "x").code
    assert empty is not None and (empty.dir, empty.max_mib, empty.exclude, empty.git) == (".", 100, (), None)
    one = validate(ProjectSpec, make_spec(code={"dir": "./src/", "exclude": "*.pyc"}), "x").code
    assert one is not None and (one.dir, one.exclude) == ("src", ("*.pyc",))
    many = validate(ProjectSpec, make_spec(code={"exclude": ["b/", " a ", "b/"]}), "x").code
    assert many is not None and many.exclude == ("a", "b/")
    assert validate(ProjectSpec, make_spec(code={"dir": ".."}), "x").code.dir == ".."  # type: ignore[union-attr]


# -- the seal -----------------------------------------------------------------------------------

def test_a_spec_without_code_has_no_code_key() -> None:
    spec = validate(ProjectSpec, make_spec(), "x")
    assert "code" not in canonical_dict(spec) and '"code"' not in canonical_json(spec)


def test_a_spec_whose_code_is_not_snapshotted_cannot_be_sealed() -> None:
    spec = validate(ProjectSpec, make_spec(code={}), "x")
    with pytest.raises(BadInput, match="code: not snapshotted"):
        digest(spec)


def test_the_code_digest_is_in_the_seal_and_round_trips(tmp_path: Path) -> None:
    path = write(tmp_path, {"exclude": ["data/"]})
    sealed = load_sealed(path)
    assert sealed.code is not None and sealed.spec.code is not None
    assert sealed.spec.code.digest == sealed.code.digest == _codepack.pack(tmp_path, ["data/"])[0]
    assert canonical_dict(sealed.spec)["code"] == {
        "dir": ".", "git": None, "commit": None, "exclude": ["data/"], "max_mib": 100, "requirements": None,
        "digest": sealed.code.digest,
    }
    again = from_canonical(canonical_json(sealed.spec))
    assert again == sealed.spec and digest(again) == digest(sealed.spec)
    assert digest(load_spec(path)) == digest(sealed.spec)  # and the same the next time


def test_code_changes_the_spec_digest_but_not_what_it_leaves_out(tmp_path: Path) -> None:
    path = write(tmp_path, {"exclude": ["data/"]}, {"train.py": "1", "data/x.bin": "1"})
    before = digest(load_spec(path))
    (tmp_path / "data" / "x.bin").write_text("2")
    assert digest(load_spec(path)) == before
    (tmp_path / "train.py").write_text("2")
    assert digest(load_spec(path)) != before


def test_the_spec_file_itself_is_part_of_a_dot_snapshot(tmp_path: Path) -> None:
    sealed = load_sealed(write(tmp_path, {}))
    assert sealed.code is not None
    assert {e.path for e in _codepack.entries(sealed.code.blob)} == {"spec.toml", "train.py"}


def test_dir_is_relative_to_the_spec_file_not_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "proj" / "specs").mkdir(parents=True)
    (tmp_path / "proj" / "train.py").write_text("x")
    path = write(tmp_path / "proj" / "specs", {"dir": ".."}, {})
    monkeypatch.chdir(tmp_path)
    a = load_sealed(path.relative_to(tmp_path))
    monkeypatch.chdir(path.parent)
    b = load_sealed(path.name)
    assert a.code is not None and b.code is not None and a.code.digest == b.code.digest


# -- bad input from the file system -------------------------------------------------------------

def test_missing_directory(tmp_path: Path) -> None:
    assert bad(write(tmp_path, {"dir": "nope"})) == f"code.dir: no such directory: {tmp_path / 'nope'}"


def test_over_the_cap(tmp_path: Path) -> None:
    path = write(tmp_path, {"max_mib": 1}, {"big.bin": "x" * (1024 * 1024 + 1)})
    assert bad(path) == "code.max_mib: the code is over 1 MiB (exclude more, or raise max_mib)"


def test_a_link_out_of_the_code(tmp_path: Path) -> None:
    path = write(tmp_path, {"dir": "src"}, {"src/train.py": "x"})
    (tmp_path / "src" / ".venv").symlink_to(tmp_path)
    assert bad(path).startswith("code.dir: link .venv -> ")


# -- lock files ---------------------------------------------------------------------------------

H = "--hash=sha256:" + "0123456789abcdef" * 4
LOCKS: list[tuple[str, str | None]] = [
    (f"numpy==1.26.4 {H}\n", None),
    (f"# pip-compile output\nnumpy==1.26.4 \\\n    {H} \\\n    {H}\n    # via -r in.txt\n", None),
    (f"--index-url https://pypi.org/simple\ntorch[cuda]==2.3.0 ; python_version >= '3.10' {H}\n", None),
    (f"mypkg @ https://example.org/mypkg-1.0.tar.gz {H}\n", None),
    ("", None),
    (f"numpy==1.26.4 {H}\nscipy==1.13.0\n", "line 2: scipy==1.13.0 is not hash-pinned (--hash=sha256:...)"),
    (f"numpy>=1.26 {H}\n", "line 1: numpy>=1.26 is not pinned to one version (name==version)"),
    ("numpy\n", "line 1: numpy is not pinned to one version (name==version)"),
    ("-r base.txt\n", "line 1: -r is not allowed in a lock file (inline what it names, pinned and hashed)"),
    ("-e .\n", "line 1: -e is not allowed in a lock file (inline what it names, pinned and hashed)"),
    (f"numpy==1.26.4 --hash=md5:{'0' * 32}\n", "line 1: numpy==1.26.4 is not hash-pinned (--hash=sha256:...)"),
]


@pytest.mark.parametrize(("text", "problem"), LOCKS, ids=[p or t[:30] for t, p in LOCKS])
def test_lock_files(text: str, problem: str | None) -> None:
    assert lock_problem(text.encode()) == problem


def test_a_lock_file_is_checked_from_the_snapshot(tmp_path: Path) -> None:
    files = {"train.py": "x", "requirements.lock": "numpy==1.26.4\n"}
    path = write(tmp_path, {"requirements": "requirements.lock"}, files)
    assert bad(path) == ("code.requirements: requirements.lock line 1: numpy==1.26.4 is not hash-pinned "
                         "(--hash=sha256:...)")
    (tmp_path / "requirements.lock").write_text(f"numpy==1.26.4 {H}\n")
    assert load_sealed(path).spec.code.requirements == "requirements.lock"  # type: ignore[union-attr]
    path = write(tmp_path, {"requirements": "requirements.lock", "exclude": ["*.lock"]}, files)
    assert bad(path) == "code.requirements: no file requirements.lock in the code (missing, excluded or a link)"


# -- git ----------------------------------------------------------------------------------------

def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "init.defaultBranch=main",
                           *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "repo"
    (r / "lib").mkdir(parents=True)
    (r / "train.py").write_text("print('v1')\n")
    (r / "lib" / "model.py").write_text("W = 1\n")
    (r / "run.sh").write_text("#!/bin/sh\n")
    (r / "run.sh").chmod(0o755)
    (r / "big.ckpt").write_text("weights")
    (r / "latest.py").symlink_to("train.py")
    git(r, "init", "-q")
    git(r, "add", "-A")
    git(r, "commit", "-q", "-m", "v1")
    return r


def test_a_git_commit_is_snapshotted_and_sealed_with_its_full_sha(tmp_path: Path, repo: Path) -> None:
    v1 = git(repo, "rev-parse", "HEAD")
    path = write(tmp_path, {"git": "repo", "commit": v1[:7], "exclude": ["*.ckpt"]}, {})
    sealed = load_sealed(path)
    assert sealed.spec.code is not None and sealed.code is not None and sealed.spec.code.commit == v1
    kinds = {e.path: e.kind for e in _codepack.entries(sealed.code.blob)}
    assert kinds == {"train.py": "file", "lib/model.py": "file", "run.sh": "exec", "latest.py": "link"}
    # The same content from a directory has the same code digest: it is the content's.
    by_dir = load_sealed(write(tmp_path, {"dir": "repo", "exclude": ["*.ckpt"]}, {}, "d.toml"))
    assert by_dir.code is not None and by_dir.code.digest == sealed.code.digest
    # Later commits and a dirty working tree change nothing about the commit's snapshot.
    (repo / "train.py").write_text("print('v2')\n")
    git(repo, "commit", "-qam", "v2")
    (repo / "train.py").write_text("print('dirty')\n")
    assert load_sealed(path).code.digest == sealed.code.digest  # type: ignore[union-attr]
    assert from_canonical(canonical_json(sealed.spec)) == sealed.spec


def test_a_commit_that_does_not_exist(tmp_path: Path, repo: Path) -> None:
    path = write(tmp_path, {"git": "repo", "commit": "deadbeef"}, {})
    assert bad(path) == "code.commit: no commit deadbeef in repo (or the prefix is ambiguous)"


def test_not_a_repository(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    assert bad(write(tmp_path, {"git": "plain", "commit": "abcd"}, {})) == \
        f"code.git: not a git repository: {tmp_path / 'plain'}"
    assert bad(write(tmp_path, {"git": "gone", "commit": "abcd"}, {})) == \
        f"code.git: no such repository: {tmp_path / 'gone'}"


def test_a_git_commit_over_the_cap(tmp_path: Path, repo: Path) -> None:
    (repo / "big.bin").write_text("x" * (1024 * 1024 + 1))
    git(repo, "add", "big.bin")
    git(repo, "commit", "-qm", "big")
    path = write(tmp_path, {"git": "repo", "commit": git(repo, "rev-parse", "HEAD"), "max_mib": 1}, {})
    assert bad(path) == "code.max_mib: the code is over 1 MiB (exclude more, or raise max_mib)"


def test_a_remote_repository_by_url(tmp_path: Path, repo: Path) -> None:
    v1 = git(repo, "rev-parse", "HEAD")
    path = write(tmp_path, {"git": f"file://{repo}", "commit": v1}, {})
    local = load_sealed(write(tmp_path, {"git": "repo", "commit": v1}, {}, "local.toml"))
    assert load_sealed(path).code.digest == local.code.digest  # type: ignore[union-attr]
    assert bad(write(tmp_path, {"git": f"file://{repo}", "commit": v1[:8]}, {})) == \
        "code.commit: give the full SHA for a remote repository"
    assert bad(write(tmp_path, {"git": f"file://{repo}", "commit": "f" * 40}, {})).startswith(
        f"code.commit: cannot fetch {'f' * 40} from file://{repo}: ")


def test_a_file_as_written_is_not_sealed(tmp_path: Path) -> None:
    path = write(tmp_path, {})
    assert load_written(path).code is not None and load_written(path).code.digest is None  # type: ignore[union-attr]
    assert json.loads(canonical_json(load_spec(path)))["code"]["digest"]
