"""The commands through a real ``cellsched server`` (uvicorn on TCP, a token from
``tokens.issue``), on SQLite and PostgreSQL: every command prints the same (people's lines
and ``--json``) with the same exit code as on a local ledger; bad bodies are one line and a
4xx; code snapshots are uploaded and granted; logs; the body limits; 32 clients submitting
at once never over-commit; the admission snapshot kept between submits is never stale."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from server_harness import NOW, Served, start_server
from sqlmodel import select
from typer.testing import CliRunner

from cellsched.cli.app import app
from cellsched.ledger.tables import EventRow, GrantRow, JobRunRow

H = 3600
NOW_ISO = "2026-12-01T00:00:00Z"

SPEC = """
name = "{name}"
team = "{team}"
owner = "alice"
problem = "Does the ablation change the loss?"
{code}
[budget]
gpu_hours = {hours}
gpus = {gpus}
[[jobs]]
name = "train"
run = ["python", "train.py"]
gpus = {gpus}
"""


def spec_file(where: Path, name: str, team: str = "interp", gpus: int = 8, hours: float = 16, code: str = "",
              suffix: str = ".toml") -> Path:
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"{name}{suffix}"
    text = SPEC.format(name=name, team=team, gpus=gpus, hours=hours, code=code)
    if suffix == ".json":
        import tomllib

        text = json.dumps(tomllib.loads(text))
    path.write_text(text)
    return path


def strip_clock(data: Any) -> Any:
    """The daemon's ``db_now`` is the database's clock at the request: it differs per call."""
    if isinstance(data, dict):
        return {k: strip_clock(v) for k, v in data.items() if k not in ("db_now", "db_now_utc")}
    if isinstance(data, list):
        return [strip_clock(v) for v in data]
    return data


def same(out: str) -> Any:
    try:
        return strip_clock(json.loads(out))
    except ValueError:
        return out


# -- every command, locally and through the server -------------------------------------------


def test_every_command_prints_the_same_through_the_server(served: Served, cluster_file: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELLSCHED_NOW", NOW_ISO)  # the server (this process) and the local CLI alike
    specs = tmp_path / "specs"
    a = spec_file(specs, "ablation")
    b = spec_file(specs, "evals-run", team="evals", gpus=4, hours=8, suffix=".json")
    big = spec_file(specs, "too-big", gpus=16, hours=16 * 24 * 400)
    a2 = spec_file(specs / "v2", "ablation", hours=24)  # another version of a live name
    probe = spec_file(specs / "probe", "probe", gpus=1, hours=2, code='[code]\nexclude = ["*.log"]')
    (specs / "probe" / "probe.py").write_text("print('probe')\n")
    bad = specs / "bad.toml"
    bad.write_text(SPEC.format(name="bad", team="interp", gpus=0, hours=1, code=""))
    local_db = f"sqlite:///{tmp_path / 'local.db'}"
    runner = CliRunner()

    def local(*args: str, user: str) -> Any:
        return runner.invoke(app, ["--cluster", str(cluster_file), "--db", local_db, *args],
                             env={"CELLSCHED_USER": user, "CELLSCHED_SERVER": "local"})

    steps: list[tuple[str, tuple[str, ...]]] = [
        ("alice", ("validate", str(a), str(b), str(probe))),
        ("alice", ("validate", "--json", str(a), str(b), str(probe))),
        ("alice", ("validate", str(a), str(bad))),
        ("alice", ("status",)),
        ("alice", ("plan", str(a))),
        ("alice", ("submit", "--dry-run", "--json", str(a))),
        ("alice", ("submit", str(a))),
        ("alice", ("submit", "--json", str(a))),
        ("alice", ("submit", str(a2))),
        ("alice", ("plan", "--json", "--replace", str(a2))),
        ("alice", ("calendar", "--days", "2", "--fit", "8x4h")),
        ("alice", ("calendar", "--json", "--pool", "h100", "--fit", "16x24h", "--team", "interp")),
        ("alice", ("calendar", "--fit", "3by4")),
        ("carol", ("submit", "--json", str(b))),
        ("alice", ("submit", str(big))),
        ("alice", ("submit", "--json", str(big))),
        ("alice", ("plan", str(big))),
        ("carol", ("submit", str(a))),
        ("alice", ("submit", str(bad))),
        ("alice", ("submit", str(specs / "missing.toml"))),
        ("alice", ("submit", str(probe))),
        ("alice", ("submit", "--json", str(probe))),
        ("alice", ("status",)),
        ("alice", ("status", "--json")),
        ("alice", ("status", "ablation")),
        ("alice", ("status", "--json", "probe")),
        ("alice", ("status", "nothing-like-it")),
        ("alice", ("budget", "interp")),
        ("alice", ("budget", "--json", "evals")),
        ("alice", ("budget", "--json", "ablation")),
        ("alice", ("budget", "nobody")),
        ("alice", ("verify", "ablation")),
        ("alice", ("verify", "--json", "ablation", "--spec", str(a))),
        ("alice", ("verify", "ablation", "--spec", str(b))),
        ("alice", ("verify", "--json", "probe", "--spec", str(probe))),
        ("edit", ()),
        ("alice", ("verify", "probe", "--spec", str(probe))),
        ("alice", ("verify", "--json", "probe", "--spec", str(probe))),
        ("carol", ("cancel", "ablation")),
        ("alice", ("cancel", "--json", "ablation")),
        ("alice", ("cancel", "ablation")),
        ("root-admin", ("cancel", "evals-run")),
        ("alice", ("report", "--since", "2026-11-25", "--until", "2026-12-05")),
        ("alice", ("report", "--json", "--since", "2026-11-25")),
        ("alice", ("report", "--json", "--team", "evals")),
        ("alice", ("report", "--team", "nobody")),
        ("alice", ("report", "--since", "2026-12-05", "--until", "2026-11-25")),
        ("alice", ("report", "--json")),  # the current allowance period, by the server's clock
        ("alice", ("report", "--json", "--since", "7d")),
        ("alice", ("report", "--period", "2026-11")),
        ("alice", ("report", "--period", "2026-13")),
        ("alice", ("audit",)),
        ("alice", ("audit", "--json")),
        ("alice", ("daemon",)),
        ("alice", ("daemon", "--json")),
        ("alice", ("logs", "probe")),
        ("alice", ("logs", "probe", "train")),
        ("alice", ("logs", "--json", "probe")),
    ]
    for user, args in steps:
        if user == "edit":
            (specs / "probe" / "probe.py").write_text("print('probe v2')\n")
            continue
        mine, theirs = local(*args, user=user), served.cli(*args, user=user)
        assert theirs.exit_code == mine.exit_code, (args, mine.output, theirs.output)
        if args[0] == "audit":  # the server's ledger holds more events: its tokens, its code upload
            assert re.sub(r"[0-9a-f]{64}|\d+", "N", theirs.stdout) == re.sub(r"[0-9a-f]{64}|\d+", "N", mine.stdout)
            continue
        assert same(theirs.stdout) == same(mine.stdout), args
        assert theirs.stderr == mine.stderr, args
        assert "Traceback" not in theirs.output
    # The ledgers agree too: the same events, in the same order, by the same callers.
    from cellsched.ledger.db import Ledger

    def events(ledger: Ledger) -> list[tuple[str, str, str]]:
        with ledger.read() as s:
            return [(e.kind, e.subject, e.actor) for e in s.exec(select(EventRow).order_by(EventRow.seq))
                    if e.kind not in ("code_stored", "token_created")]  # the server's own: uploads, tokens

    # Through the server, a job's output is its team's: another team's member is denied.
    denied = served.cli("logs", "probe", user="carol")
    assert denied.exit_code == 1 and denied.stdout == ""
    assert denied.stderr.startswith("cellsched: carol may not read the logs of probe@") and denied.stderr.count("\n") == 1
    there = events(served.env.ledger)
    mine_ledger = Ledger(local_db)
    assert there == events(mine_ledger) and len(there) == 8
    mine_ledger.dispose()


# -- bad input --------------------------------------------------------------------------------

BAD = [
    # (method, path, json body or params, status, exit code, a piece of the one line)
    ("POST", "/api/submit", {"file": "x.toml"}, 422, 2, "text: Field required"),
    ("POST", "/api/submit", {"file": "x.toml", "text": "name = 1", "extra": 1}, 422, 2, "extra: Extra inputs"),
    ("POST", "/api/submit", {"file": "x.txt", "text": "a = 1"}, 400, 2, "x.txt: unknown file type '.txt'"),
    ("POST", "/api/submit", {"file": "x.toml", "text": "   "}, 400, 2, "x.toml: file is empty"),
    ("POST", "/api/submit", {"file": "x.toml", "text": "name = "}, 400, 2, "x.toml: not valid TOML"),
    ("POST", "/api/submit", {"file": "x.toml", "text": "name = 'x'"}, 400, 2, "x.toml: "),
    ("POST", "/api/submit", {"file": "a\nb.toml", "text": "x"}, 422, 2, "file: Value error"),
    ("POST", "/api/submit", {"file": "x.toml", "text": "x", "code": {"digest": "nothex"}}, 422, 2, "code.digest"),
    ("POST", "/api/submit", [1, 2], 422, 2, ""),
    ("POST", "/api/validate", {"specs": []}, 422, 2, "specs: List should have at least 1 item"),
    ("POST", "/api/cancel", {"project": ""}, 422, 2, "project: String should have at least 1 character"),
    ("POST", "/api/cancel", {"project": "a\x00b"}, 422, 2, "project: Value error"),
    ("POST", "/api/cancel", {"project": "nothing-like-it"}, 404, 2, "no live grant for project 'nothing-like-it'"),
    ("POST", "/api/verify", {"project": "nothing", "spec": {"file": "x.yaml", "text": "[1"}}, 400, 2, "x.yaml: not valid YAML"),
    ("GET", "/api/status", {"project": "nothing"}, 404, 2, "no grant for project 'nothing'"),
    ("GET", "/api/budget", {}, 422, 2, "name: Field required"),
    ("GET", "/api/budget", {"name": "nobody"}, 404, 2, "'nobody' is neither a team nor a project (teams: "),
    ("GET", "/api/calendar", {"fit": "16by24"}, 400, 2, "--fit: '16by24' is not GPUS x HOURS"),
    ("GET", "/api/calendar", {"days": 0}, 422, 2, "days: Input should be greater than or equal to 1"),
    ("POST", "/api/plan", {"file": "x.toml", "text": "   "}, 400, 2, "x.toml: file is empty"),
    ("GET", "/api/report", {"since": "yesterday"}, 422, 2, "since: Input should be a valid integer"),
    ("GET", "/api/report", {"since": 10, "until": 5}, 400, 2, "--since must be before --until"),
    ("GET", "/api/report", {"team": "nobody"}, 400, 2, "--team: no team 'nobody'"),
    ("GET", "/api/logs", {"project": "nothing"}, 404, 2, "no grant or best-effort submission for project 'nothing'"),
    ("GET", "/api/logs/read", {"project": "x", "job": "t", "attempt": 0, "rank": 0}, 422, 2, "attempt: Input should be greater"),
    ("PUT", "/api/code/xyz", b"", 422, 2, "digest: String should match pattern"),
    ("PUT", "/api/code/" + "0" * 64, b"not an archive", 400, 2, "code: not a code archive"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "code", "line"), BAD,
                         ids=[f"{m} {p} {i}" for i, (m, p, *_rest) in enumerate(BAD)])
def test_bad_input_is_one_line_and_a_4xx(served: Served, method: str, path: str, body: Any, status: int,
                                         code: int, line: str) -> None:
    with served.http("alice") as c:
        if method == "GET":
            r = c.get(path, params=body)
        elif isinstance(body, bytes):
            r = c.request(method, path, content=body)
        else:
            r = c.request(method, path, json=body)
    assert r.status_code == status, r.text
    answer = r.json()
    assert set(answer) == {"error", "exit_code"} and answer["exit_code"] == code
    assert "\n" not in answer["error"] and line in answer["error"], answer


def test_a_body_is_parsed_as_the_file_would_be(served: Served, tmp_path: Path) -> None:
    """The server's line for a bad spec is the local loader's, word for word."""
    from cellsched.errors import BadInput
    from cellsched.spec.load import load_sealed

    path = spec_file(tmp_path, "zero", gpus=0)
    with pytest.raises(BadInput) as local:
        load_sealed(path)
    with served.http("alice") as c:
        r = c.post("/api/submit", json={"file": str(path), "text": path.read_text()})
    assert (r.status_code, r.json()) == (400, {"error": local.value.message, "exit_code": 2})


def test_who_may_do_what_is_the_service_layers(served: Served, tmp_path: Path) -> None:
    text = spec_file(tmp_path, "mine").read_text()
    with served.http("carol") as c:  # a member of evals, not of interp
        r = c.post("/api/submit", json={"file": "mine.toml", "text": text})
        assert (r.status_code, r.json()["exit_code"]) == (403, 1) and "not a member of team interp" in r.json()["error"]
    with served.http("alice") as c:
        assert c.post("/api/submit", json={"file": "mine.toml", "text": text}).json()["decision"] == "granted"
    with served.http("carol") as c:
        r = c.post("/api/cancel", json={"project": "mine"})
        assert r.status_code == 403 and "only members of team interp or admins" in r.json()["error"]
    with served.http(None) as c:
        assert c.get("/api/status").status_code == 401
    with served.http("root-admin") as c:
        assert c.post("/api/cancel", json={"project": "mine"}).json()["state"] == "cancelled"


# -- code snapshots ---------------------------------------------------------------------------


def test_code_is_uploaded_once_and_granted(served: Served, tmp_path: Path) -> None:
    from cellsched.spec.load import load_sealed

    path = spec_file(tmp_path / "p", "coded", gpus=1, hours=1, code="[code]")
    (tmp_path / "p" / "job.py").write_text("print(1)\n")
    sealed = load_sealed(path)
    assert sealed.code is not None
    d, blob = sealed.code.digest, sealed.code.blob
    text = path.read_text()
    ref = {"digest": d, "source": "dir p"}
    with served.http("alice") as c:
        r = c.post("/api/submit", json={"file": "coded.toml", "text": text, "code": ref})
        assert r.status_code == 400 and f"sha256:{d} was not uploaded (PUT /api/code/{d} first)" in r.json()["error"]
        assert c.get(f"/api/code/{d}").status_code == 404
        r = c.put(f"/api/code/{'1' * 64}", content=blob)
        assert r.status_code == 400 and "archive content is sha256:" in r.json()["error"]
        first = c.put(f"/api/code/{d}", content=blob).json()
        assert first == {"digest": d, "stored": True, "files": 2, "bytes": sealed.code.content_bytes,
                         "packed_bytes": len(blob)}
        assert c.put(f"/api/code/{d}", content=blob).json()["stored"] is False  # idempotent
        assert c.get(f"/api/code/{d}").json()["stored"] is True
        r = c.post("/api/submit", json={"file": "coded.toml", "text": text, "code": {**ref, "commit": "a" * 40}})
        assert r.status_code == 400 and "code.commit: only with git" in r.json()["error"]
        out = c.post("/api/submit", json={"file": "coded.toml", "text": text, "code": ref}).json()
    assert out["decision"] == "granted"
    assert out["code"] == {"digest": d, "files": 2, "bytes": sealed.code.content_bytes, "packed_bytes": len(blob),
                           "source": "dir p"}
    from cellsched.service import code_blob

    assert code_blob(served.env, d) == blob
    with served.http("nobody-at-all") as c:  # in no team: may not fill the ledger with archives
        assert c.put(f"/api/code/{'2' * 64}", content=blob).status_code == 403


def test_a_team_may_name_only_code_a_member_of_it_uploaded(served: Served, tmp_path: Path) -> None:
    """A code digest is no secret (a sealed spec carries it, the event log names it): a team
    that names another team's stored snapshot is answered as if nobody had uploaded it, and
    may use it only by uploading the archive itself. A teammate of the uploader needs no
    upload."""
    from cellsched.service import code_held
    from cellsched.spec.load import load_sealed

    path = spec_file(tmp_path / "p", "theirs", gpus=1, hours=1, code="[code]")
    (tmp_path / "p" / "job.py").write_text("print('interp only')\n")
    sealed = load_sealed(path)
    assert sealed.code is not None
    d, blob = sealed.code.digest, sealed.code.blob
    ref = {"digest": d, "source": "dir p"}
    with served.http("alice") as c:
        assert c.put(f"/api/code/{d}", content=blob).json()["stored"] is True
        out = c.post("/api/submit", json={"file": "theirs.toml", "text": path.read_text(), "code": ref}).json()
        assert out["decision"] == "granted"
    mine = spec_file(tmp_path / "q", "mine", team="evals", gpus=1, hours=1, code="[code]").read_text()
    with served.http("carol") as c:  # team evals, naming interp's digest
        r = c.post("/api/submit", json={"file": "mine.toml", "text": mine, "code": ref})
        assert (r.status_code, r.json()["error"]) == (
            400, f"code: the snapshot sha256:{d} was not uploaded (PUT /api/code/{d} first)")
        assert c.get(f"/api/code/{d}").status_code == 404
        plan = c.post("/api/plan", json={"file": "mine.toml", "text": mine, "code": ref}).json()
        assert plan["code"]["files"] is None  # the client's words (it gave no count), nothing from the ledger
        r = c.put(f"/api/code/{d}", content=_codepack_of(tmp_path / "fake", "print('a guess')\n"))
        assert r.status_code == 400 and "archive content is sha256:" in r.json()["error"]
        assert c.get(f"/api/code/{d}").status_code == 404
        with served.env.ledger.read() as s:
            assert code_held(s, d, ["interp", "evals"]) == {"interp"}
        assert c.put(f"/api/code/{d}", content=blob).json()["stored"] is False  # the bytes: evals holds it
        assert c.get(f"/api/code/{d}").json()["stored"] is True
        out = c.post("/api/submit", json={"file": "mine.toml", "text": mine, "code": ref}).json()
        assert out["decision"] == "granted" and out["code"]["files"] == 2
    with served.env.ledger.read() as s:
        assert code_held(s, d, ["interp", "evals", "pretraining"]) == {"interp", "evals"}
        held = s.exec(select(EventRow).where(EventRow.kind == "code_held")).all()
    assert [(e.subject, e.actor, json.loads(e.data)) for e in held] == [(d, "carol", {"teams": ["evals"]})]
    with served.http("bob") as c:  # alice's teammate
        assert c.get(f"/api/code/{d}").json()["stored"] is True
    with served.http("dave") as c:
        assert c.get(f"/api/code/{d}").status_code == 404


def _codepack_of(where: Path, text: str) -> bytes:
    from cellsched.executor import _codepack

    where.mkdir(parents=True)
    (where / "job.py").write_text(text)
    return _codepack.pack(where)[1]


def test_the_body_limits(env: Any, tmp_path: Path) -> None:
    """1 MB for every body but the code upload, which has its own (here 3 MiB)."""
    import os
    import random

    from cellsched.executor import _codepack

    rng = random.Random(5)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "noise.bin").write_bytes(rng.randbytes(2 << 20))  # incompressible: a 2 MiB archive
    d, blob = _codepack.pack(tmp_path / "c")
    (tmp_path / "c" / "more.bin").write_bytes(os.urandom(2 << 20))
    d2, blob2 = _codepack.pack(tmp_path / "c")
    with start_server(env, max_code_body=3 << 20) as served, served.http("alice") as c:
        r = c.post("/api/submit", json={"file": "x.toml", "text": "x" * (1 << 20)})
        assert r.status_code == 413 and r.json()["exit_code"] == 2
        assert c.put(f"/api/code/{d}", content=blob).json()["stored"] is True  # over 1 MB, under the code limit
        r = c.put(f"/api/code/{d2}", content=blob2)
        assert r.status_code == 413 and "over the limit" in r.json()["error"]
        r = c.put(f"/api/code/{d2}", content=iter([blob2[i:i + 65536] for i in range(0, len(blob2), 65536)]))
        assert r.status_code == 413  # chunked, no Content-Length: counted as it streams
        body = json.dumps({"file": "x.toml", "text": "x" * (1 << 20)}).encode()
        r = c.post("/api/submit", content=iter([body[i:i + 65536] for i in range(0, len(body), 65536)]),
                   headers={"content-type": "application/json"})
        assert r.status_code == 413 and "over the limit" in r.json()["error"]  # a route that parses it too


def test_a_gzip_bomb_is_refused_before_it_is_unpacked(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    import gzip

    from cellsched import service

    monkeypatch.setattr(service, "MAX_UNPACKED", 16 << 20)  # the server is this process: a smaller bomb will do
    bomb = gzip.compress(b"\0" * (17 << 20), compresslevel=9)
    assert len(bomb) < 100_000
    with served.http("alice") as c:
        r = c.put(f"/api/code/{'3' * 64}", content=bomb)
    assert r.status_code == 400 and "unpacks to more than" in r.json()["error"]


# -- logs ---------------------------------------------------------------------------------------


def test_logs_through_the_server(served: Served, cluster_file: Path, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from cellsched.runtime import logs as L

    monkeypatch.setenv("CELLSCHED_NOW", NOW_ISO)
    path = spec_file(tmp_path, "chatty", gpus=2, hours=2)
    assert served.cli("submit", str(path)).exit_code == 0
    with served.env.ledger.write() as s:
        g = s.exec(select(GrantRow)).one()
        for attempt, state in ((1, "failed"), (2, "succeeded")):
            s.add(JobRunRow(grant_id=g.id, job="train", attempt=attempt, state=state, gpus=2,
                            started_at=NOW, ended_at=NOW + 60, exit_codes="[0, 0]"))
    _g, log_dir, _runs = L.locate(served.env, "chatty")
    big = ("é" * 700_000 + "\n").encode()  # over one read (1 MiB), a character split at the edge
    for attempt in (1, 2):
        for rank in (0, 1):
            p = L.rank_log(log_dir, "train", attempt, rank)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(big if (attempt, rank) == (2, 0) else f"attempt {attempt} rank {rank}\n".encode())
    L.rank_log(log_dir, "train", 1, 1).unlink()

    runner = CliRunner()
    db = served.env.ledger.url

    def local(*args: str) -> Any:
        return runner.invoke(app, ["--cluster", str(cluster_file), "--db", db, *args],
                             env={"CELLSCHED_USER": "alice", "CELLSCHED_SERVER": "local"})

    for args in (("logs", "chatty"), ("logs", "chatty", "train", "--rank", "1"),
                 ("logs", "chatty", "train", "--attempt", "1"), ("logs", "chatty", "nope"),
                 ("logs", "chatty", "train", "--attempt", "7")):
        mine, theirs = local(*args), served.cli(*args)
        assert (theirs.exit_code, theirs.stdout, theirs.stderr) == (mine.exit_code, mine.stdout, mine.stderr), args
    assert big.decode() in served.cli("logs", "chatty", "train", "--rank", "0").stdout
    assert served.cli("cancel", "chatty").exit_code == 0  # over: follow prints what there is and stops
    from cellsched.cli.state import ServedLogs
    from cellsched.cli.remote import Remote

    out = io.StringIO()
    L.follow(ServedLogs(Remote(served.url, served.token("alice"))), "chatty", "train", 0, out=out, wait_s=10)
    assert out.getvalue() == big.decode()
    with served.http("alice") as c:
        r = c.get("/api/logs/read", params={"project": "chatty", "job": "train", "attempt": 2, "rank": 0,
                                            "offset": len(big) - 3, "limit": 2})
        assert base64.b64decode(r.json()["data_b64"]) == big[-3:-1] and r.json()["next_offset"] == len(big) - 1
        r = c.get("/api/logs/read", params={"project": "chatty", "job": "../../etc", "attempt": 1, "rank": 0})
        assert r.status_code == 404  # only a job the ledger knows: never a path the caller names


# -- 32 clients at once -------------------------------------------------------------------------

MEMBER = {"interp": "alice", "evals": "carol", "pretraining": "dave"}


def _spec_text(name: str, team: str, gpus: int, hours: int) -> str:
    return SPEC.format(name=name, team=team, gpus=gpus, hours=hours, code="")


def overcommit(rows: list[GrantRow], gpus: int) -> list[tuple[int, int]]:
    """Instants (window edges) where live windows of a pool hold more than ``gpus``."""
    edges = sorted({t for r in rows for t in (r.start, r.end)})
    return [(t, w) for t in edges
            if (w := sum(r.width for r in rows if r.start <= t < r.end)) > gpus]


def by_month(rows: list[GrantRow]) -> Counter[tuple[int, int]]:
    """GPU-seconds of the windows per calendar month (UTC), split at month edges."""
    import datetime as dt

    out: Counter[tuple[int, int]] = Counter()
    for r in rows:
        t = r.start
        while t < r.end:
            d = dt.datetime.fromtimestamp(t, dt.timezone.utc)
            nxt = dt.datetime(d.year + d.month // 12, d.month % 12 + 1, 1, tzinfo=dt.timezone.utc).timestamp()
            step = min(r.end, int(nxt))
            out[(d.year, d.month)] += r.width * (step - t)
            t = step
    return out


def test_32_clients_submitting_at_once_never_overcommit(served: Served) -> None:
    if served.env.ledger.is_sqlite:
        pytest.skip("PostgreSQL: the ledger a server shares with its daemon on another host")
    clients, rounds = 32, 3
    barrier = threading.Barrier(clients)
    answers: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    teams = list(MEMBER)

    def client(i: int) -> None:
        team = teams[i % 3]
        got = answers.setdefault(i, [])
        with served.http(MEMBER[team]) as c:
            barrier.wait(30)
            for k in range(rounds):
                gpus = (4, 8, 12, 16)[(i + k) % 4]
                body = {"file": f"c{i}-{k}.toml", "text": _spec_text(f"c{i}-{k}", team, gpus, gpus * (4 + (i + k) % 9))}
                r = c.post("/api/submit", json=body)
                got.append((r.status_code, r.json()))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    flat = [a for i in range(clients) for a in answers.get(i, [])]
    assert len(flat) == clients * rounds  # every client got an answer to every submit
    assert all(status == 200 and a["decision"] in ("granted", "refused") for status, a in flat), flat[:3]
    granted = {a["project"]: a["grant"] for _s, a in flat if a["decision"] == "granted"}
    with served.env.ledger.read() as s:
        rows = list(s.exec(select(GrantRow)))
        kinds = Counter(e.kind for e in s.exec(select(EventRow)))
    # No lost write: every grant answered is in the ledger as answered, nothing else is.
    assert {r.project_id: (r.id, r.start, r.end, r.width) for r in rows} == {
        p: (g["id"], g["start"], g["end"], g["width"]) for p, g in granted.items()}
    assert kinds["granted"] == len(granted) and kinds["refused"] == len(flat) - len(granted)
    assert not overcommit(rows, 16)
    evals = [r for r in rows if r.team == "evals"]
    assert not overcommit(evals, 8)  # the team's max_gpus
    assert max(by_month(evals).values()) <= 100 * H  # the team's allowance, per month
    assert 0 < len(granted) < len(flat)  # the pool is contended: some refused


# -- the admission snapshot kept between submits ------------------------------------------------


def test_two_envs_interleaving_submits_never_overcommit(cluster_file: Path, ledger_url: str) -> None:
    """Two processes' worth of ``Env`` on one ledger, each with its own kept snapshot: every
    submit by one moves the ledger under the other's snapshot, which must then be rebuilt,
    never used stale; a refusal or an unmoved ledger reuses it."""
    from cellsched import service
    from cellsched.spec.load import Sealed

    from cellsched.ops import SpecIn, sealed_spec

    one, two = service.open_env(cluster_file, ledger_url), service.open_env(cluster_file, ledger_url)

    def submit(env: service.Env, name: str, gpus: int, hours: int, now: int = NOW) -> dict[str, Any]:
        spec = sealed_spec(SpecIn(file=f"{name}.toml", text=_spec_text(name, "pretraining", gpus, hours)))
        return service.submit(env, Sealed(spec, None), "dave", now).to_json()

    try:
        # 16 GPUs: each grant of 16 takes the whole pool; the next one must start after it.
        outs = [submit(env, f"g{i}", 16, 16 * 10) for i, env in enumerate([one, two, one, two, two, one])]
        windows = sorted((o["grant"]["start"], o["grant"]["end"]) for o in outs)
        assert all(a_end <= b_start for (_a, a_end), (b_start, _b) in zip(windows, windows[1:])), windows
        # Each submit after the other's moved the ledger under the kept snapshot: rebuilt;
        # two's own two in a row: the second reuses it, with the first's grant in it.
        assert (one.admission.builds, one.admission.hits) == (3, 0)
        assert (two.admission.builds, two.admission.hits) == (2, 1)
        hits = one.admission.hits
        submit(one, "again", 16, 16 * 10)  # nobody else wrote: the kept snapshot, with its own grants
        assert one.admission.hits == hits + 1
        refused = submit(one, "huge", 32, 32)  # wider than the pool
        assert refused["decision"] == "refused"
        submit(one, "after-refusal", 8, 8)
        assert one.admission.hits == hits + 3  # a refusal changes no grant: still current
        service.cancel(two, "g1", "dave", NOW)  # two frees a window under one's snapshot
        taken = submit(one, "in-the-gap", 16, 16 * 10)
        assert taken["grant"]["start"] == outs[1]["grant"]["start"]  # rebuilt: sees the gap at once
        # An earlier clock than the snapshot was built at is never served from it.
        before = one.admission.builds
        submit(one, "earlier", 1, 1, now=NOW - 3600)
        assert one.admission.builds == before + 1
        with one.ledger.read() as s:
            rows = [r for r in s.exec(select(GrantRow)) if r.state in ("granted", "reserving", "active")]
        assert not overcommit(rows, 16)
    finally:
        one.ledger.dispose()
        two.ledger.dispose()


# -- generated bodies: never a 5xx ---------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12)
_name = st.text(max_size=40) | st.sampled_from(["ablation", "evals", "interp", "a@", "@", "x" * 600, "chatty"])
_file = st.text(min_size=0, max_size=20).map(lambda s: s + "") | st.sampled_from(
    ["a.toml", "b.yaml", "c.json", "d.yml", "e.txt", ".toml", "x/../../y.toml"])
_spec_fields = st.fixed_dictionaries({}, optional={
    "name": _name, "team": st.sampled_from(["interp", "evals", "nobody"]) | st.text(max_size=5),
    "owner": st.text(max_size=5), "problem": st.text(max_size=30),
    "budget": st.fixed_dictionaries({}, optional={"gpu_hours": _json, "gpus": st.integers(-2, 40) | _json,
                                                  "deadline": _json, "not_before": _json, "pool": _json}),
    "jobs": st.lists(st.fixed_dictionaries({"name": st.text(max_size=5), "run": _json, "gpus": _json}), max_size=2),
    "code": _json, "replaces": _json})
_code_ref = st.none() | _json | st.fixed_dictionaries(
    {"digest": st.sampled_from(["0" * 64, "a" * 64]) | st.text(max_size=70)},
    optional={"commit": _json, "source": _json, "files": _json})
_spec_in = st.one_of(
    _json,
    st.fixed_dictionaries({"file": _file, "text": st.text(max_size=200)}, optional={"code": _code_ref}),
    st.builds(lambda f, d, c: {"file": f, "text": json.dumps(d), **({} if c is None else {"code": c})},
              st.sampled_from(["s.json", "s.toml", "s.yaml"]), _spec_fields, _code_ref),
)
_int = st.integers(-5, 10**13) | st.text(max_size=8)

BODIES: dict[str, tuple[str, str, Any]] = {
    "submit": ("POST", "/api/submit", _spec_in),
    "validate": ("POST", "/api/validate", _json | st.fixed_dictionaries({"specs": st.lists(_spec_in, max_size=3)})),
    "cancel": ("POST", "/api/cancel", _json | st.fixed_dictionaries({"project": _name})),
    "verify": ("POST", "/api/verify", _json | st.fixed_dictionaries(
        {"project": _name}, optional={"spec": _spec_in, "code_now": _json})),
    "status": ("GET", "/api/status", st.fixed_dictionaries({}, optional={"project": _name})),
    "budget": ("GET", "/api/budget", st.fixed_dictionaries({}, optional={"name": _name})),
    "report": ("GET", "/api/report", st.fixed_dictionaries({}, optional={"since": _int, "until": _int, "team": _name})),
    "logs": ("GET", "/api/logs", st.fixed_dictionaries({"project": _name}, optional={
        "job": _name, "rank": _int, "attempt": _int})),
    "log_read": ("GET", "/api/logs/read", st.fixed_dictionaries({"project": _name}, optional={
        "job": _name, "rank": _int, "attempt": _int, "offset": _int, "limit": _int})),
    "audit": ("GET", "/api/audit", st.fixed_dictionaries({}, optional={"x": _name})),
    "daemon": ("GET", "/api/daemon", st.fixed_dictionaries({}, optional={"x": _name})),
    "code": ("PUT", "/api/code/", st.tuples(st.sampled_from(["0" * 64, "f" * 64, "xyz", "0" * 63]),
                                             st.binary(max_size=300))),
}


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One server on SQLite for every generated body, with a grant, logs and a stored code
    snapshot in its ledger so that bodies can reach past 'not found'."""
    from server_harness import example_cluster

    from cellsched.receipt import create_keys, key_paths
    from cellsched.service import open_env

    d = tmp_path_factory.mktemp("fuzz")
    cluster = d / "cluster.toml"
    cluster.write_text(example_cluster())
    create_keys(*key_paths(cluster))
    env = open_env(cluster, f"sqlite:///{d / 'ledger.db'}")
    with start_server(env) as served:
        with served.http("alice") as c:
            text = _spec_text("chatty", "interp", 2, 2)
            assert c.post("/api/submit", json={"file": "chatty.toml", "text": text}).status_code == 200
        yield served
    env.ledger.dispose()


@pytest.mark.parametrize("endpoint", sorted(BODIES))
def test_generated_bodies_never_get_a_5xx(fuzzed: Served, endpoint: str) -> None:
    method, path, bodies = BODIES[endpoint]
    client = fuzzed.http("alice")

    @settings(max_examples=50, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(body=bodies)
    def check(body: Any) -> None:
        if method == "GET":
            r = client.get(path, params={k: str(v) for k, v in body.items()})
        elif method == "PUT":
            r = client.put(path + body[0], content=body[1])
        else:
            r = client.request(method, path, json=body)
        assert r.status_code < 500, (body, r.text)
        if r.status_code >= 400:
            answer = r.json()
            assert set(answer) == {"error", "exit_code"} and "\n" not in answer["error"], answer

    try:
        check()
    finally:
        client.close()


def test_a_log_that_is_a_link_or_not_a_file_is_not_read(served: Served, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A job whose user may write the log directory cannot make ``logs`` read another file
    the server's account can read: a rank log that is a symbolic link, one under a directory
    that links out of the log directory, or a FIFO (which would hang the read) is refused
    with one line (403), and the file it points at is not sent."""
    import os

    from cellsched.runtime import logs as L

    monkeypatch.setenv("CELLSCHED_NOW", NOW_ISO)
    path = spec_file(tmp_path, "sly", gpus=1, hours=2)
    assert served.cli("submit", str(path)).exit_code == 0
    with served.env.ledger.write() as s:
        g = s.exec(select(GrantRow)).one()
        for attempt in (1, 2, 3):
            s.add(JobRunRow(grant_id=g.id, job="train", attempt=attempt, state="failed", gpus=1,
                            started_at=NOW, ended_at=NOW + 60, exit_codes="[1]"))
    _g, log_dir, _runs = L.locate(served.env, "sly")
    secret = tmp_path / "secret.key"
    secret.write_text("the signing key\n")
    p1 = L.rank_log(log_dir, "train", 1, 0)
    p1.parent.mkdir(parents=True, exist_ok=True)
    p1.symlink_to(secret)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    p2 = L.rank_log(log_dir, "train", 2, 0)
    (outside / p2.name).write_text("the signing key\n")  # a plain file, in a directory out of the logs
    p2.parent.symlink_to(outside)
    p3 = L.rank_log(log_dir, "train", 3, 0)
    p3.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(p3)
    with served.http("alice", timeout=20) as c:
        for attempt, says in ((1, "a symbolic link, not a log"), (2, "symbolic link out of the log directory"),
                              (3, "not a regular file")):
            r = c.get("/api/logs/read", params={"project": "sly", "job": "train", "attempt": attempt, "rank": 0})
            assert r.status_code == 403 and says in r.json()["error"], (attempt, r.text)
            assert "signing key" not in r.text
    out = served.cli("logs", "sly", "train", "--attempt", "1")
    assert out.exit_code == 1 and "a symbolic link, not a log" in out.stderr and "signing key" not in out.stdout
