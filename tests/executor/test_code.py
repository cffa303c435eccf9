"""Code snapshots run by the executors: the job's cwd is the snapshot unpacked on its node,
shipped once per digest, refused (the attempt fails, nothing else) when bytes and digest
disagree."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from cellsched.executor import GangSpec, MemoryExecutor, _codepack
from cellsched.executor.base import CODE_FAILED_CODE
from cellsched.executor.testing import until

RUN = ('cat data.txt; echo "dir=$CELLSCHED_CODE_DIR digest=$CELLSCHED_CODE_DIGEST pwd=$(pwd)"; '
       'if [ -w data.txt ]; then echo writable; else echo readonly; fi')


def snapshot(tmp: Path, text: str) -> tuple[Path, str, bytes]:
    """A tiny code dir (unique content, so a fresh digest per test run), packed."""
    src = tmp / f"code-{uuid.uuid4().hex[:8]}"
    src.mkdir()
    (src / "data.txt").write_text(text + "\n")
    (src / "nonce").write_text(uuid.uuid4().hex)
    digest, blob = _codepack.pack(src)
    return src, digest, blob


def gang(resv: str, log_dir: Path, digest: str | None, blob: bytes | None,
         bundles: tuple[int, ...] = (0, 1), attempt: int = 0, run: str = RUN) -> GangSpec:
    return GangSpec(resv, "proj", "job", attempt, run, bundles, str(log_dir),
                    code_digest=digest, code_blob=blob)


def test_blob_takes_no_part_in_comparisons() -> None:
    a = GangSpec("r", "p", "j", 0, "true", (0,), "/l", code_digest="d" * 64, code_blob=b"x")
    b = GangSpec("r", "p", "j", 0, "true", (0,), "/l", code_digest="d" * 64)
    assert a == b and "code_blob" not in repr(a)
    assert a != GangSpec("r", "p", "j", 0, "true", (0,), "/l", code_digest="e" * 64)


def test_memory_executor_keeps_the_contract(tmp_path: Path) -> None:
    _, digest, blob = snapshot(tmp_path, "v1")
    _, _, other = snapshot(tmp_path, "v2")
    ex = MemoryExecutor(capacity=4)
    ex.reserve("cellsched/m", 2)
    assert not ex.has_code(digest)
    ex.launch(gang("cellsched/m", tmp_path, digest, None, (0,)))  # no bytes, none held
    ex.launch(gang("cellsched/m", tmp_path, digest, other, (0,), attempt=1))  # wrong bytes
    assert [(r.outcome, r.exit_codes) for r in ex.poll("cellsched/m")] == \
        [("failed", (CODE_FAILED_CODE,))] * 2
    ex.ack("cellsched/m", [("job", 0), ("job", 1)])
    assert not ex.has_code(digest)
    ex.launch(gang("cellsched/m", tmp_path, digest, blob, (0,), attempt=2))
    assert ex.has_code(digest) and not ex.connect(1).has_code(digest)
    ex.launch(gang("cellsched/m", tmp_path, digest, None, (1,), attempt=3))  # held now
    assert [g.attempt for g in ex.running("cellsched/m")] == [2, 3] and not ex.poll("cellsched/m")


def _ready(ex: Any, width: int) -> str:
    n = f"cellsched/test/{uuid.uuid4().hex[:8]}"
    ex.reserve(n, width)
    until(lambda: ex.reservation_state(n) == "ready")
    return n


def _result(ex: Any, resv: str, timeout: float = 30.0) -> Any:
    (r,) = until(lambda: ex.poll(resv), timeout)
    ex.ack(resv, [r.key])
    return r


def _how(ex: Any, resv: str, attempt: int) -> list[str]:
    """How each rank had the code for that attempt ("cached", "shipped", "failed")."""
    import ray

    snaps = ray.get([h.snapshot.remote() for h in ex._ranks(resv)])
    return sorted(r["code"] for s in snaps for r in s["records"] if r["attempt"] == attempt)


@pytest.mark.ray
def test_job_runs_the_snapshot_shipped_once(rex: Any, tmp_path: Path) -> None:
    from cellsched.executor import RayExecutor

    src, digest, blob = snapshot(tmp_path, "packed version")
    (src / "data.txt").write_text("edited after the seal\n")  # the job must not see this
    n = _ready(rex, 2)
    assert not rex.has_code(digest)
    g = gang(n, tmp_path / "logs", digest, blob)
    rex.launch(g)
    r = _result(rex, n)
    assert r.outcome == "succeeded", [Path(g.log_path(k)).read_text() for k in range(2)]
    for k in range(2):
        out = Path(g.log_path(k)).read_text().splitlines()
        assert out[0] == "packed version"
        d = out[1].split()[0].removeprefix("dir=")
        assert d.endswith("/" + digest) and out[1].split()[1:] == [f"digest={digest}", f"pwd={d}"]
        # The node's cache is shared: read-only, so a job cannot change it (root can: its
        # writes ignore permission bits, so there only the bits are checked).
        assert os.geteuid() == 0 or out[2] == "readonly"
        assert not os.stat(Path(d) / "data.txt").st_mode & 0o222 and not os.stat(d).st_mode & 0o222
    # one rank of the node unpacked it, the other found it there
    assert _how(rex, n, 0) == ["cached", "shipped"]
    assert rex.has_code(digest) and rex.code_puts == 1

    # Again, without the bytes: nothing is put or fetched again.
    rex.launch(gang(n, tmp_path / "logs", digest, None, attempt=1))
    assert _result(rex, n).outcome == "succeeded"
    assert _how(rex, n, 1) == ["cached", "cached"] and rex.code_puts == 1

    # A restarted daemon holds no bytes, but the node still has the snapshot.
    other = RayExecutor(peer_grace_s=2.0)
    assert not other.has_code(digest)
    other.launch(gang(n, tmp_path / "logs", digest, None, attempt=2))
    assert _result(other, n).outcome == "succeeded" and other.code_puts == 0


@pytest.mark.ray
def test_wrong_bytes_fail_the_attempt_only(rex: Any, tmp_path: Path) -> None:
    _, digest, _ = snapshot(tmp_path, "one")
    _, _, other = snapshot(tmp_path, "two")
    n = _ready(rex, 2)
    g = gang(n, tmp_path / "logs", digest, other)
    rex.launch(g)
    r = _result(rex, n)
    assert r.outcome == "failed" and r.exit_codes == (CODE_FAILED_CODE, CODE_FAILED_CODE)
    assert "DigestMismatch" in Path(g.log_path(0)).read_text()
    assert not rex.has_code(digest)  # the wrong bytes are not kept for that digest
    # No bytes for a snapshot no node has: fails the same way; the group is still usable.
    g = gang(n, tmp_path / "logs", digest, None, (0,), attempt=1)
    rex.launch(g)
    r = _result(rex, n)
    assert r.exit_codes == (CODE_FAILED_CODE,) and "no bytes were sent" in Path(g.log_path(0)).read_text()
    rex.launch(gang(n, tmp_path / "logs", None, None, (0, 1), attempt=2, run="true"))
    assert _result(rex, n).outcome == "succeeded"


@pytest.mark.ray
def test_stopped_while_fetching_never_starts(rex: Any, tmp_path: Path) -> None:
    import time

    import ray

    _, digest, blob = snapshot(tmp_path, "slow")

    @ray.remote(num_cpus=0)
    def slow() -> bytes:
        time.sleep(8)
        return blob

    # The executor holds a Ray object for the digest that takes 8 s to exist (made once the
    # group is ready, so a slow machine cannot spend those seconds first): the ranks wait for
    # it in the background, and a terminate meanwhile ends the attempt unstarted.
    n = _ready(rex, 2)
    rex._code[digest] = (slow.remote(), len(blob))
    g = gang(n, tmp_path / "logs", digest, None, run="echo started")
    t = time.monotonic()
    rex.launch(g)
    assert time.monotonic() - t < 4  # launch does not wait for the code
    assert [x.attempt for x in rex.running(n)] == [0]
    rex.terminate(n)
    r = _result(rex, n)
    assert (r.outcome, r.exit_codes) == ("killed", (-15, -15))
    assert not any(Path(g.log_path(k)).exists() and "started" in Path(g.log_path(k)).read_text()
                   for k in range(2))


@pytest.mark.ray
def test_job_runs_in_the_python_environment_of_its_sealed_lock_file(rex: Any, tmp_path: Path) -> None:
    from test_node_cache import code_with_lock

    src = code_with_lock(tmp_path / f"code-{uuid.uuid4().hex[:8]}", value=str(uuid.uuid4().int % 1000))
    digest, blob = _codepack.pack(src)
    n = _ready(rex, 2)
    run = 'python -c "import cs_tinypkg, sys; print(cs_tinypkg.VALUE, sys.prefix == \\"$VIRTUAL_ENV\\")"'
    g = GangSpec(n, "proj", "job", 0, run, (0, 1), str(tmp_path / "logs"), code_digest=digest,
                 code_blob=blob, code_requirements="requirements.lock")
    rex.launch(g)
    r = _result(rex, n, 120.0)  # pip makes the environment: seconds alone, far more under load
    logs = [Path(g.log_path(k)).read_text() for k in range(2)]
    assert r.outcome == "succeeded", logs
    for text in logs:
        assert text.splitlines()[-1].split() == [str(int(_value_of(src))), "True"]
    # A second attempt finds the environment made: nothing is installed again.
    g1 = GangSpec(n, "proj", "job", 1, run, (0,), str(tmp_path / "logs"), code_digest=digest,
                  code_requirements="requirements.lock")
    rex.launch(g1)
    assert _result(rex, n).outcome == "succeeded"
    assert "making the Python environment" not in Path(g1.log_path(0)).read_text()


def _value_of(src: Path) -> str:
    import zipfile

    (whl,) = (src / "wheels").glob("*.whl")
    with zipfile.ZipFile(whl) as z:
        return z.read("cs_tinypkg/__init__.py").decode().split("=")[1].strip()
