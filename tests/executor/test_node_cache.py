"""A node's caches: sealed Python environments made from a lock file, and least recently
used eviction that never touches what a job runs in. Standard library only, no Ray."""

from __future__ import annotations

import base64
import hashlib
import os
import time
import zipfile
from pathlib import Path

import pytest

from cellsched.executor import _nodecache, _pyenv


def wheel(where: Path, name: str = "cs_tinypkg", version: str = "1.0", value: str = "42") -> Path:
    """A minimal pure-Python wheel, built by hand (no network, no build backend)."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VALUE = {value}\n".encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: cellsched-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        h = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={h},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    where.mkdir(parents=True, exist_ok=True)
    out = where / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    return out


def code_with_lock(root: Path, value: str = "42") -> Path:
    """A code directory holding a wheel and a hash-pinned lock file that installs it from
    there (``--find-links`` relative to the lock file: pip takes it so)."""
    w = wheel(root / "wheels", value=value)
    digest = hashlib.sha256(w.read_bytes()).hexdigest()
    (root / "requirements.lock").write_text(
        f"--no-index\n--find-links wheels\ncs-tinypkg==1.0 --hash=sha256:{digest}\n")
    return root


def test_environment_is_made_once_per_lock_and_runs_the_pinned_package(tmp_path: Path) -> None:
    code = code_with_lock(tmp_path / "code")
    envs, log = tmp_path / "envs", tmp_path / "job.log"
    path, how = _pyenv.ensure(str(code), "requirements.lock", str(envs), str(log))
    assert how == "built" and Path(path).parent == envs
    import subprocess

    out = subprocess.run([os.path.join(path, "bin", "python"), "-c", "import cs_tinypkg, ray; print(cs_tinypkg.VALUE)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "42"  # the pinned package, and the node's own (Ray) still visible
    again, how = _pyenv.ensure(str(code), "requirements.lock", str(envs), str(log))
    assert (again, how) == (path, "cached")
    env: dict[str, str] = {"PATH": "/usr/bin"}
    _pyenv.activate(env, path)
    assert env["PATH"].startswith(os.path.join(path, "bin") + os.pathsep) and env["VIRTUAL_ENV"] == path


def test_a_wheel_that_does_not_match_its_hash_leaves_no_environment(tmp_path: Path) -> None:
    code = code_with_lock(tmp_path / "code")
    wheel(code / "wheels", value="666")  # the same file name, other content: the pinned hash no longer matches
    envs, log = tmp_path / "envs", tmp_path / "job.log"
    with pytest.raises(_pyenv.EnvError, match="exited 1"):
        _pyenv.ensure(str(code), "requirements.lock", str(envs), str(log))
    assert "HASH" in log.read_text().upper()  # pip's own words are in the job's log
    assert [p for p in envs.iterdir() if not p.name.startswith(".")] == []


def test_a_crashed_build_is_made_again(tmp_path: Path) -> None:
    code = code_with_lock(tmp_path / "code")
    key = _pyenv.key_for((code / "requirements.lock").read_bytes())
    half = tmp_path / "envs" / key
    half.mkdir(parents=True)
    (half / "junk").write_text("left by a crash")
    path, how = _pyenv.ensure(str(code), "requirements.lock", str(tmp_path / "envs"), str(tmp_path / "l"))
    assert (path, how) == (str(half), "built") and not (half / "junk").exists()


def _entry(cache: Path, name: str, size: int, used_at: float) -> None:
    d = cache / name
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "f").write_bytes(b"x" * size)
    os.chmod(d / "sub", 0o555)  # snapshots are read-only
    os.chmod(d, 0o555)
    _nodecache.touch(str(cache), name)
    os.utime(cache / f".{name}.used", (used_at, used_at))


def test_eviction_removes_least_recently_used_but_never_what_runs(tmp_path: Path) -> None:
    cache = tmp_path / "code"
    now = time.time()
    for i, name in enumerate(["a", "b", "c", "d"]):
        _entry(cache, name, 1000, now - 100 + i)  # a is the oldest
    held = _nodecache.hold(str(cache), "a")  # a job runs in a (and that counts as a use now)
    os.utime(cache / ".a.used", (now - 100, now - 100))
    assert held is not None
    try:
        removed = _nodecache.evict(str(cache), cap=2000, keep="b")
    finally:
        os.close(held)
    # a is in use, b is the one being started: c and d... no: c is older than d, so c, then d
    assert removed == ["c", "d"]
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == ["a", "b"]
    assert _nodecache.evict(str(cache), cap=1000) == ["a"]  # no longer held


def test_eviction_under_the_cap_does_nothing(tmp_path: Path) -> None:
    cache = tmp_path / "code"
    _entry(cache, "a", 10, time.time())
    assert _nodecache.evict(str(cache), cap=1 << 20) == []
    assert _nodecache.evict(str(tmp_path / "absent"), cap=0) == []
