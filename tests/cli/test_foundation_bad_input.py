"""Bad input, each through the command line: exit 2, exactly one line on stderr naming the
file and the field, no traceback, and nothing written to the ledger."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import col, select
from typer.testing import CliRunner

from cellsched.cli.app import app
from cellsched.ledger import events
from cellsched.ledger.db import Ledger
from cellsched.ledger.tables import EventRow, GrantRow, ProjectRow

GOOD = """\
name = "pythia-ablation"
team = "interp"
owner = "alice"
problem = "Which attention heads carry induction behaviour?"

[budget]
gpu_hours = 96
gpus = 8
pool = "h100"

[[jobs]]
name = "ablate"
run = ["python3", "ablate.py"]
gpus = 8

[[jobs]]
name = "probe"
run = "python3 probe.py"
gpus = 2
after = ["ablate"]
"""

GOOD_JSON = json.dumps({
    "name": "pretrain-small", "team": "interp", "owner": "alice", "problem": "Pretrain a 160M model.",
    "budget": {"gpu_hours": 48, "gpus": 8, "pool": "h100"},
    "jobs": [{"name": "train", "run": ["python3", "train.py"], "gpus": 8}],
})

GOOD_YAML = """\
name: tokenizer-study
team: interp
owner: bob
problem: Does a 64k vocabulary change identifiers?
budget: {gpu_hours: 20, gpus: 2}
jobs:
  - {name: train, run: [python3, train.py], gpus: 2}
"""

FIFTY_MB = 50 * 1024 * 1024

# (case, file name, content or None for "no such file", words after "cellsched: <file>: ")
CASES: list[tuple[str, str, bytes | None, str]] = [
    ("unknown key", "unknown.toml", ('colour = "red"\n' + GOOD).encode(), "colour: unknown key"),
    ("unknown budget key", "unknown-budget.toml", GOOD.replace("[budget]\n", "[budget]\ngpu_hourz = 1\n").encode(),
     "budget.gpu_hourz: unknown key"),
    ("unknown job key (yaml)", "unknown-job.yaml", GOOD_YAML.replace("train.py], gpus: 2}", "train.py], gpus: 2, nodes: 1}").encode(),
     "jobs.0.nodes: unknown key"),
    ("wrong type", "wrong-type.toml", GOOD.replace("gpus = 8\npool", 'gpus = "eight"\npool').encode(),
     "budget.gpus: must be a whole number"),
    ("wrong type (json)", "wrong-type.json", GOOD_JSON.replace('"gpu_hours": 48', '"gpu_hours": "48"').encode(),
     "budget.gpu_hours: must be a number"),
    ("wrong type (yaml)", "wrong-type.yaml", GOOD_YAML.replace("run: [python3, train.py]", "run: {cmd: x}").encode(),
     "jobs.0.run: must be a command"),
    ("zero gpus", "zero.toml", GOOD.replace("gpus = 8\npool", "gpus = 0\npool").encode(),
     "budget.gpus: must be greater than or equal to 1"),
    ("negative gpus", "negative.toml", GOOD.replace("gpus = 2\n", "gpus = -2\n").encode(),
     "jobs.1.gpus: must be greater than or equal to 1"),
    ("negative gpus (json)", "negative.json", GOOD_JSON.replace('"gpus": 8}]', '"gpus": -1}]').encode(),
     "jobs.0.gpus: must be greater than or equal to 1"),
    ("cyclic after", "cycle.toml", GOOD.replace('gpus = 8\n\n[[jobs]]', 'gpus = 8\nafter = ["probe"]\n\n[[jobs]]').encode(),
     "jobs.after: cycle ablate -> probe -> ablate"),
    ("path-like name", "path-name.toml", GOOD.replace('"pythia-ablation"', '"../../etc/passwd"').encode(),
     "name: use letters"),
    ("path-like job name", "path-job.json", GOOD_JSON.replace('"name": "train"', '"name": "logs/train"').encode(),
     "jobs.0.name: use letters"),
    ("path-like team", "path-team.yaml", GOOD_YAML.replace("team: interp", "team: /root").encode(), "team: use letters"),
    ("non-UTF-8", "latin1.toml", GOOD.replace("alice", "alicé").encode("latin-1"), "not UTF-8 text"),
    ("50 MB", "huge.toml", None, "bytes is too large"),
    ("empty", "empty.toml", b"", "file is empty"),
    ("blank", "blank.yaml", b"\n  \n\t\n", "file is empty"),
    ("missing", "missing.toml", None, "no such file"),
    ("duplicate job names", "dup.toml", GOOD.replace('name = "probe"', 'name = "ablate"').encode(),
     "jobs.1.name: duplicate job name 'ablate'"),
    ("bad TOML", "syntax.toml", (GOOD + "gpus = = 2\n").encode(), "not valid TOML"),
    ("duplicate TOML key", "dupkey.toml", GOOD.replace("gpus = 8\npool", "gpus = 8\ngpus = 4\npool").encode(),
     "not valid TOML"),
    ("bad JSON", "syntax.json", GOOD_JSON[:-1].encode(), "not valid JSON"),
    ("not a table", "list.yaml", b"- name: x\n", "expected a table of keys at the top, got list"),
    ("unknown suffix", "spec.txt", GOOD.encode(), "unknown file type '.txt'"),
]


def make(tmp_path: Path, name: str, content: bytes | None, case: str) -> Path:
    path = tmp_path / "specs" / name
    path.parent.mkdir(exist_ok=True)
    if case == "50 MB":
        with path.open("wb") as f:
            f.write(b"# " + b"x" * 1000 + b"\n")
            f.truncate(FIFTY_MB)  # sparse: 50 MB on paper, quick to make
    elif content is not None:
        path.write_bytes(content)
    return path


def assert_one_clean_line(stderr: str, path: Path, words: str) -> None:
    assert stderr.endswith("\n") and stderr.count("\n") == 1, repr(stderr)
    assert stderr.startswith(f"cellsched: {path}: "), stderr
    assert words in stderr, stderr
    assert "Traceback" not in stderr and 'File "' not in stderr


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CELLSCHED_DB", "CELLSCHED_CLUSTER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CELLSCHED_USER", "alice")


def test_the_good_documents_are_good(tmp_path: Path) -> None:
    for name, text in (("good.toml", GOOD), ("good.json", GOOD_JSON), ("good.yaml", GOOD_YAML)):
        (tmp_path / name).write_text(text)
        r = CliRunner().invoke(app, ["validate", str(tmp_path / name)])
        assert r.exit_code == 0, r.output


@pytest.mark.parametrize(("case", "name", "content", "words"), CASES, ids=[c[0] for c in CASES])
def test_validate_rejects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, name: str,
                          content: bytes | None, words: str) -> None:
    path = make(tmp_path, name, content, case)
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    r = CliRunner().invoke(app, ["validate", str(path)])
    assert r.exit_code == 2
    assert r.stdout == ""
    assert_one_clean_line(r.stderr, path, words)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # validate writes nothing at all


def test_validate_checks_every_file_and_names_each_bad_one(tmp_path: Path) -> None:
    good, bad, gone = tmp_path / "good.toml", tmp_path / "bad.toml", tmp_path / "gone.toml"
    good.write_text(GOOD)
    bad.write_text(GOOD.replace("gpus = 8\npool", "gpus = 0\npool"))
    r = CliRunner().invoke(app, ["validate", str(bad), str(good)])
    assert r.exit_code == 2 and r.stdout.startswith("ok  ") and str(good) in r.stdout
    assert_one_clean_line(r.stderr, bad, "budget.gpus")
    r = CliRunner().invoke(app, ["validate", str(good), str(bad), str(gone), "--json"])
    items = json.loads(r.stdout)
    assert r.exit_code == 2 and [("error" in i, i["file"]) for i in items] == \
        [(False, str(good)), (True, str(bad)), (True, str(gone))]
    assert "budget.gpus" in items[1]["error"] and items[2]["exit_code"] == 2
    assert r.stderr == ""  # with --json the errors are in the items


def ledger_state(url: str) -> tuple[list[tuple], int, int]:  # type: ignore[type-arg]
    led = Ledger(url)
    with led.read() as s:
        evs = [(e.seq, e.kind, e.subject, e.data, e.hash)
               for e in s.exec(select(EventRow).order_by(col(EventRow.seq)))]
        projects = len(s.exec(select(ProjectRow)).all())
        grants = len(s.exec(select(GrantRow)).all())
    led.dispose()
    return evs, projects, grants


@pytest.fixture
def busy_ledger(ledger_url: str) -> str:
    """A ledger that already holds a few events."""
    led = Ledger(ledger_url)
    for i in range(3):
        with led.write() as s:
            events.append(s, 1_796_083_200 + i, "refused", f"p{i}@0123456789ab", "alice", {"reason": "test"})
    led.dispose()
    return ledger_url


@pytest.mark.parametrize(("case", "name", "content", "words"), CASES, ids=[c[0] for c in CASES])
def test_submit_rejects_and_leaves_the_ledger_alone(tmp_path: Path, cluster_file: Path, busy_ledger: str,
                                                    case: str, name: str, content: bytes | None,
                                                    words: str) -> None:
    path = make(tmp_path, name, content, case)
    before = ledger_state(busy_ledger)
    r = CliRunner().invoke(app, ["--cluster", str(cluster_file), "--db", busy_ledger, "submit", str(path)])
    assert r.exit_code == 2
    assert r.stdout == ""
    assert_one_clean_line(r.stderr, path, words)
    assert ledger_state(busy_ledger) == before


def test_submit_of_bad_input_does_not_even_create_the_default_ledger(tmp_path: Path, cluster_file: Path) -> None:
    path = make(tmp_path, "zero.toml", GOOD.replace("gpus = 8\npool", "gpus = 0\npool").encode(), "zero gpus")
    r = CliRunner().invoke(app, ["--cluster", str(cluster_file), "submit", str(path)])
    assert r.exit_code == 2
    assert not (cluster_file.parent / "cellsched.db").exists()


# -- for real: the installed console script in its own process -------------------------

def cellsched_exe() -> str:
    beside = Path(sys.executable).parent / "cellsched"
    found = str(beside) if beside.exists() else shutil.which("cellsched")
    assert found, "the cellsched console script is not installed"
    return found


SUBPROCESS_CASES = ["non-UTF-8", "cyclic after"]


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_a_real_process(tmp_path: Path, cluster_file: Path, case: str) -> None:
    _, name, content, words = next(c for c in CASES if c[0] == case)
    path = make(tmp_path, name, content, case)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    led = Ledger(url)
    with led.write() as s:
        events.append(s, 1, "refused", "p@0123456789ab", "alice", {})
    led.dispose()
    before = ledger_state(url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELLSCHED_")}
    for argv in (["validate", str(path)], ["--cluster", str(cluster_file), "--db", url, "submit", str(path)]):
        p = subprocess.run([cellsched_exe(), *argv], capture_output=True, text=True, env=env, timeout=60)
        assert p.returncode == 2, (argv, p.stdout, p.stderr)
        assert p.stdout == ""
        assert_one_clean_line(p.stderr, path, words)
    assert ledger_state(url) == before


def test_init_with_an_unusable_ledger_writes_nothing(tmp_path: Path) -> None:
    cluster = tmp_path / "cluster.toml"
    r = CliRunner().invoke(app, ["--cluster", str(cluster), "--db", f"sqlite:///{tmp_path}/no/such/dir/l.db", "init"])
    assert r.exit_code == 2 and r.stderr.startswith("cellsched: --db ") and r.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # no cluster.toml, no keys
