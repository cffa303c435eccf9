"""Code snapshots through the service on a real ledger (SQLite and PostgreSQL): stored with
the grant, once per digest, readable by a daemon from the ledger alone; later edits change
nothing stored; verify finds a corrupted or missing snapshot and says when the code changed."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlmodel import select

from cellsched import service
from cellsched.errors import BadInput, Failed, NotFound
from cellsched.executor import _codepack
from cellsched.ledger.tables import CodeRow, EventRow, GrantRow, ProjectRow
from cellsched.spec.load import load_sealed
from cellsched.spec.seal import from_canonical
from service_specs import T0

SPEC = """
name = "{name}"
team = "interp"
owner = "alice"
problem = "Does the probe find the planted direction?"
code = {{ exclude = ["outputs/"] }}
[budget]
gpu_hours = {hours}
gpus = {gpus}
[[jobs]]
name = "probe"
run = ["python3", "probe.py"]
"""


def project(where: Path, name: str = "probe", hours: int = 2, gpus: int = 1, file: str = "spec.toml") -> Path:
    """A project directory with code and a spec file (the code is the spec's directory)."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "probe.py").write_text("print(open('data.txt').read())\n")
    (where / "data.txt").write_text("v1\n")
    (where / file).write_text(SPEC.format(name=name, hours=hours, gpus=gpus))
    return where / file


def code_rows(env) -> list[CodeRow]:  # type: ignore[no-untyped-def]
    with env.ledger.read() as s:
        return list(s.exec(select(CodeRow)).all())


def test_submit_stores_the_snapshot_once_and_the_daemon_reads_it_back(env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = project(tmp_path / "p")
    out = service.submit(env, path, "alice", T0)
    assert out.granted and out.code is not None
    with env.ledger.read() as s:
        sealed = from_canonical(s.get(ProjectRow, out.project_id).spec_json)  # type: ignore[union-attr]
    assert sealed.code is not None and sealed.code.digest == out.code["digest"]
    (row,) = code_rows(env)
    assert (row.digest, row.size, row.files, row.created_at) == (sealed.code.digest, len(row.blob), 3, T0)
    # What a daemon on another host does: the digest from the sealed spec, the bytes from the ledger.
    blob = service.code_blob(env, sealed.code.digest)
    unpacked = _codepack.unpack(blob, tmp_path / "node-cache", sealed.code.digest)
    assert (unpacked / "data.txt").read_text() == "v1\n"
    # The same spec again: the existing grant, still one snapshot.
    assert service.submit(env, path, "alice", T0 + 60).existing and len(code_rows(env)) == 1


def test_one_snapshot_for_two_projects_with_the_same_code(env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a = project(tmp_path / "a" / "specs", name="a")
    b = project(tmp_path / "b" / "specs", name="b")
    for p in (a, b):  # the code: the directory beside specs/, the same in both
        p.write_text(p.read_text().replace('code = { exclude = ["outputs/"] }', 'code = { dir = "../src" }'))
        (p.parent.parent / "src").mkdir()
        (p.parent.parent / "src" / "probe.py").write_text("print('same')\n")
    outs = [service.submit(env, p, "alice", T0) for p in (a, b)]
    assert all(o.granted for o in outs) and outs[0].project_id != outs[1].project_id
    assert outs[0].code is not None and outs[1].code is not None
    assert outs[0].code["digest"] == outs[1].code["digest"] and len(code_rows(env)) == 1


def test_editing_the_directory_after_submit_changes_nothing_stored(env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = project(tmp_path / "p")
    out = service.submit(env, path, "alice", T0)
    (row,) = code_rows(env)
    (tmp_path / "p" / "data.txt").write_text("v2, edited after submit\n")
    (tmp_path / "p" / "probe.py").unlink()
    assert code_rows(env)[0].blob == row.blob
    got = _codepack.unpack(service.code_blob(env, row.digest), tmp_path / "cache", row.digest)
    assert (got / "data.txt").read_text() == "v1\n" and (got / "probe.py").exists()
    checked = service.verify(env, out.project_id, path)
    assert checked["valid"] and checked["code"]["stored"] == "intact"
    assert checked["code"]["now"] == "changed" and "the job runs the sealed snapshot" in checked["code"]["note"]


def test_verify_with_the_spec_file_unchanged_gone_or_other_words(env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = project(tmp_path / "p")
    path.write_text(path.read_text().replace('exclude = ["outputs/"]', 'dir = "src"'))
    (tmp_path / "p" / "src").mkdir()
    (tmp_path / "p" / "src" / "probe.py").write_text("print(1)\n")
    out = service.submit(env, path, "alice", T0)
    assert service.verify(env, out.project_id, path)["code"]["now"] == "unchanged"
    (tmp_path / "p" / "src" / "probe.py").unlink()
    (tmp_path / "p" / "src").rmdir()
    gone = service.verify(env, out.project_id, path)["code"]
    assert gone["now"] == "unavailable" and "code.dir: no such directory" in gone["note"]
    other = tmp_path / "other.toml"
    other.write_text(path.read_text().replace('dir = "src"', 'dir = "src", max_mib = 5'))
    with pytest.raises(Failed, match="is not the sealed spec"):  # other words: max_mib differs
        service.verify(env, out.project_id, other)


def test_verify_detects_a_corrupted_or_missing_snapshot(env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = service.submit(env, project(tmp_path / "p"), "alice", T0)
    (row,) = code_rows(env)
    _, other = _codepack.pack(tmp_path / "p", ["data.txt"])
    with env.ledger.write() as s:
        s.exec(text("UPDATE cs_code SET blob = :b WHERE digest = :d").bindparams(b=other, d=row.digest))  # type: ignore[call-overload]
    with pytest.raises(Failed, match="does not match its digest"):
        service.verify(env, out.project_id)
    with env.ledger.write() as s:
        s.exec(text("UPDATE cs_code SET blob = :b WHERE digest = :d").bindparams(b=b"garbage", d=row.digest))  # type: ignore[call-overload]
    with pytest.raises(Failed, match="does not match its digest"):
        service.verify(env, out.project_id)
    with env.ledger.write() as s:
        s.exec(text("DELETE FROM cs_code"))  # type: ignore[call-overload]
    with pytest.raises(Failed, match="missing from the ledger"):
        service.verify(env, out.project_id)
    with pytest.raises(NotFound):
        service.code_blob(env, row.digest)


def test_a_refused_spec_stores_no_code(env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = service.submit(env, project(tmp_path / "p", gpus=17, hours=17), "alice", T0)
    assert not out.granted and code_rows(env) == []


def test_a_bare_spec_with_code_needs_its_snapshot_in_the_ledger(env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sealed = load_sealed(project(tmp_path / "p"))
    with pytest.raises(BadInput, match="is not in the ledger"):
        service.submit(env, sealed.spec, "alice", T0)
    with env.ledger.read() as s:
        assert s.exec(select(EventRow)).all() == [] and s.exec(select(GrantRow)).all() == []
    service.submit(env, sealed, "alice", T0)
    service.cancel(env, "probe", "alice", T0 + 1)
    again = service.submit(env, sealed.spec, "alice", T0 + 2)  # the ledger has it now
    assert again.granted and len(code_rows(env)) == 1
