"""Each class of bad input through the installed ``cellsched`` in its own process: exit 2,
one line on stderr starting ``cellsched: ``, no traceback, nothing on stdout, and nothing
created (no ledger file, no directory). A bad ledger URL (``--db``), a cluster file with a
wrong type, a spec with several problems, a YAML syntax error; and a spec with a byte order
mark, which is accepted and seals as without it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SPEC = """\
name = "pythia-ablation"
team = "interp"
owner = "alice"
problem = "Which attention heads carry induction behaviour?"

[budget]
gpu_hours = 8
gpus = 2

[[jobs]]
name = "ablate"
run = ["python3", "ablate.py"]
gpus = 2
"""

CLUSTER = """\
admins = ["root-admin"]

[[pools]]
name = "h100"
gpu_type = "H100"
gpus = 16
gpus_per_node = 8

[[teams]]
name = "interp"
members = ["alice"]
allowance_gpu_hours = 1500
"""

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def cellsched_exe() -> str:
    beside = Path(sys.executable).parent / "cellsched"
    found = str(beside) if beside.exists() else shutil.which("cellsched")
    assert found, "the cellsched console script is not installed"
    return found


def run(cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELLSCHED_")}
    env["CELLSCHED_USER"] = "alice"
    return subprocess.run([cellsched_exe(), *argv], capture_output=True, text=True, env=env, cwd=cwd, timeout=60)


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def assert_one_line(p: subprocess.CompletedProcess[str], starts: str, *words: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert p.stdout == ""
    assert p.stderr.endswith("\n") and p.stderr.count("\n") == 1, repr(p.stderr)
    assert p.stderr.startswith(f"cellsched: {starts}"), p.stderr
    for w in words:
        assert w in p.stderr, (w, p.stderr)
    assert "Traceback" not in p.stderr and 'File "' not in p.stderr


@pytest.fixture
def place(tmp_path: Path) -> Path:
    (tmp_path / "cluster.toml").write_text(CLUSTER)
    (tmp_path / "spec.toml").write_text(SPEC)
    (tmp_path / "notes.db").write_text("meeting notes, not a ledger\n" * 30)
    return tmp_path


@pytest.fixture
def pg(pg_available: bool) -> str:
    if not pg_available:
        pytest.skip("PostgreSQL is not reachable")
    return PG


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a host that hangs)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield int(s.getsockname()[1])


# (case, the URL (a template: {root}, {closed}, {silent}), the words after "--db <url>: ", needs PostgreSQL)
DB_CASES = [
    ("missing directory", "sqlite:///{root}/no/such/dir/ledger.db", "no such directory: {root}/no/such/dir", False),
    ("not a database", "sqlite:///{root}/notes.db", "{root}/notes.db is not a SQLite database", False),
    ("a directory", "sqlite:///{root}", "{root} is a directory, not a database file", False),
    ("unsupported scheme", "mysql://alice:s3cr3t-pw@db.example.org/ledger", "unsupported database URL 'mysql'", False),
    ("refused", "postgresql+psycopg://alice:s3cr3t-pw@127.0.0.1:{closed}/test",
     "nothing answers on 127.0.0.1:{closed} (connection refused: is PostgreSQL running there?)", True),
    ("no such database", "postgresql+psycopg://postgres:s3cr3t-pw@127.0.0.1:5432/no_such_ledger",
     'no database "no_such_ledger" on 127.0.0.1:5432', True),
    ("bad credentials", "postgresql+psycopg://mallory:s3cr3t-pw@127.0.0.1:5432/test",
     'no user "mallory" on 127.0.0.1:5432', True),
    ("unreachable host", "postgresql+psycopg://alice:s3cr3t-pw@127.0.0.1:{silent}/test?connect_timeout=2",
     "no answer from 127.0.0.1:{silent} within the connect timeout (2 s)", True),
    ("unknown host", "postgresql+psycopg://alice:s3cr3t-pw@ledger.invalid/test", "unknown host 'ledger.invalid'", True),
]


@pytest.mark.parametrize(("case", "url", "words", "needs_pg"), DB_CASES, ids=[c[0] for c in DB_CASES])
def test_a_bad_ledger_url(request: pytest.FixtureRequest, place: Path, silent_port: int,
                          case: str, url: str, words: str, needs_pg: bool) -> None:
    # status reads the ledger, submit writes it; both open it first (one process each
    # where it matters: the classes are the same on both paths)
    argv = ["submit", "spec.toml"] if case in ("missing directory", "refused", "not a database") else ["status"]
    if needs_pg:
        request.getfixturevalue("pg")
    fill = {"root": place, "closed": closed_port(), "silent": silent_port}
    url = url.format(**fill)
    before = listing(place)
    p = run(place, "--cluster", "cluster.toml", "--db", url, *argv)
    shown = url.replace(":s3cr3t-pw@", ":***@")
    assert_one_line(p, f"--db {shown}: {words.format(**fill)}")
    assert "s3cr3t" not in p.stderr
    assert listing(place) == before  # no ledger file, no directory, no -wal
    assert (place / "notes.db").read_text().startswith("meeting notes")


def test_a_cluster_file_with_a_wrong_type(place: Path) -> None:
    (place / "cluster.toml").write_text(CLUSTER.replace('members = ["alice"]', 'members = "root"'))
    before = listing(place)
    for argv in (["status"], ["submit", "spec.toml"], ["budget", "interp"]):
        p = run(place, "--cluster", "cluster.toml", *argv)
        assert_one_line(p, 'cluster.toml: teams.0.members: must be a list of user names, got a string "root"')
    assert listing(place) == before  # not even the default cellsched.db beside it


def test_a_spec_with_several_problems(place: Path) -> None:
    text = (SPEC.replace("gpus = 2\n\n[[jobs]]", "gpu = 2\n\n[[jobs]]")
            .replace('owner = "alice"', "owner = 7").replace("gpus = 2\n", "gpus = 0\n"))
    (place / "many.toml").write_text(text)
    before = listing(place)
    for argv in (["validate", "many.toml"], ["--cluster", "cluster.toml", "submit", "many.toml"]):
        p = run(place, *argv)
        assert_one_line(p, "many.toml: 3 problems: owner: must be a string, got the number 7; "
                           "budget.gpu: unknown key (did you mean gpus?); "
                           "jobs.0.gpus: must be greater than or equal to 1")
    assert listing(place) == before


def test_a_yaml_syntax_error_names_its_line(place: Path) -> None:
    (place / "spec.yaml").write_text("name: x\nteam: interp\nbudget:\n  gpus: 2\n gpu_hours: 8\n")
    before = listing(place)
    for argv in (["validate", "spec.yaml"], ["--cluster", "cluster.toml", "submit", "spec.yaml"]):
        p = run(place, *argv)
        assert_one_line(p, "spec.yaml: not valid YAML: line 5, column 2: ")
    assert listing(place) == before


def test_a_byte_order_mark_is_accepted(place: Path) -> None:
    (place / "marked.toml").write_bytes("\ufeff".encode() + SPEC.encode())
    digests = []
    for name in ("spec.toml", "marked.toml"):
        p = run(place, "validate", name, "--json")
        assert p.returncode == 0, p.stderr
        (item,) = json.loads(p.stdout)
        digests.append(item["digest"])
    assert digests[0] == digests[1]
