"""Specs with code through the real CLI: validate prints the code's digest and size, submit
stores it, verify checks it; every bad code input is exit 2, one line naming the field, and
nothing written to the ledger. Also keeps the example in projects/code-demo/ and the lines
docs/specs.md shows real."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from cellsched.cli.app import app
from cellsched.ledger.db import Ledger
from cellsched.spec.load import load_cluster, load_sealed
from cellsched.spec.seal import digest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "projects" / "code-demo" / "code-demo.toml"
NOW = "2026-12-01T00:00:00Z"
H = "--hash=sha256:" + "0123456789abcdef" * 4

SPEC = """
name = "probe"
team = "interp"
owner = "alice"
problem = "Does the probe find the planted direction?"
{code}
[budget]
gpu_hours = 2
gpus = 1
[[jobs]]
name = "probe"
run = ["python3", "probe.py"]
"""


@pytest.fixture
def cli(tmp_path: Path, cluster_file: Path):  # type: ignore[no-untyped-def]
    runner = CliRunner()
    db = f"sqlite:///{tmp_path / 'ledger.db'}"

    def run(*args: str) -> Any:
        return runner.invoke(app, ["--cluster", str(cluster_file), "--db", db, *args],
                             env={"CELLSCHED_USER": "alice", "CELLSCHED_NOW": NOW})

    run.db = tmp_path / "ledger.db"  # type: ignore[attr-defined]
    return run


def spec_file(where: Path, code: str, files: dict[str, str] | None = None) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    for rel, body in (files if files is not None else {"probe.py": "print('v1')\n"}).items():
        (where / rel).parent.mkdir(parents=True, exist_ok=True)
        (where / rel).write_text(body)
    path = where / "spec.toml"
    path.write_text(SPEC.format(code=code))
    return path


def rows(db: Path) -> dict[str, int]:
    """Rows per table, or {} if the ledger was never created."""
    if not db.exists():
        return {}
    ledger = Ledger(f"sqlite:///{db}")
    with ledger.read() as s:
        counts = {t: s.exec(text(f"SELECT count(*) FROM {t}")).one()[0]  # type: ignore[call-overload]
                  for t in ("cs_event", "cs_project", "cs_grant", "cs_code")}
    ledger.dispose()
    return counts


def test_validate_prints_the_code_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = spec_file(tmp_path / "p", 'code = { exclude = ["*.log"] }', {"probe.py": "x" * 2048, "run.log": "no"})
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["validate", "p/spec.toml"])
    sealed = load_sealed(path)
    assert sealed.code is not None
    d = digest(sealed.spec)
    assert r.exit_code == 0, r.output
    assert r.stdout == (f"ok  probe@{d[:12]}  p/spec.toml  sha256:{d}\n"
                        f"    code sha256:{sealed.code.digest}  2 files, {sealed.code.content_bytes / 1024:.1f} KiB "
                        f"({sealed.code.size} B packed)  from dir p\n")
    r = CliRunner().invoke(app, ["validate", "--json", "p/spec.toml"])
    (item,) = json.loads(r.stdout)
    assert item["code"] == {"digest": sealed.code.digest, "files": 2, "bytes": 2048 + len(path.read_bytes()),
                            "packed_bytes": sealed.code.size, "source": "dir p"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]


def test_submit_then_verify(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = spec_file(tmp_path / "p", "[code]")
    r = cli("submit", str(path))
    assert r.exit_code == 0, r.output
    code = load_sealed(path).code
    assert code is not None and f"  code sha256:{code.digest}  2 files" in r.stdout
    assert rows(cli.db)["cs_code"] == 1
    out = json.loads(cli("submit", "--json", str(path)).stdout)
    assert out["existing"] and out["code"]["digest"] == code.digest
    r = cli("verify", "probe", "--spec", str(path))
    assert r.exit_code == 0, r.output
    assert f"  code sha256:{code.digest}  2 files, " in r.stdout and "the stored snapshot is intact" in r.stdout
    assert "the spec file's code is unchanged since submit" in r.stdout
    (tmp_path / "p" / "probe.py").write_text("print('v2')\n")
    r = cli("verify", "probe", "--spec", str(path))
    assert r.exit_code == 0, r.output
    assert re.search(r"note: the code has changed since submit \(now sha256:[0-9a-f]{12}\); "
                     r"the job runs the sealed snapshot", r.stdout), r.stdout
    ledger = Ledger(f"sqlite:///{cli.db}")
    with ledger.write() as s:
        s.exec(text("UPDATE cs_code SET blob = x'00'"))  # type: ignore[call-overload]
    ledger.dispose()
    r = cli("verify", "probe")
    assert r.exit_code == 1 and "the stored code snapshot does not match its digest" in r.stderr


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=repo,
                          check=True, capture_output=True, text=True).stdout.strip()


def _big(where: Path) -> Path:
    return spec_file(where, "code = { max_mib = 1 }", {"probe.py": "x", "weights.bin": "w" * (1024 * 1024 + 1)})


def _missing(where: Path) -> Path:
    return spec_file(where, 'code = { dir = "src" }', {})


def _no_commit(where: Path) -> Path:
    (where / "repo").mkdir(parents=True)
    (where / "repo" / "probe.py").write_text("x")
    git(where / "repo", "init", "-q")
    git(where / "repo", "add", "-A")
    git(where / "repo", "commit", "-qm", "v1")
    return spec_file(where, 'code = { git = "repo", commit = "0123abcd" }', {})


def _unpinned(where: Path) -> Path:
    return spec_file(where, 'code = { requirements = "requirements.lock" }',
                     {"probe.py": "x", "requirements.lock": f"numpy==1.26.4 {H}\ntorch\n"})


def _link_out(where: Path) -> Path:
    path = spec_file(where, "[code]")
    (where / "data").symlink_to("/etc")
    return path


def _pinned_digest(where: Path) -> Path:
    return spec_file(where, f'code = {{ digest = "{"a" * 64}" }}')


BAD: list[tuple[str, Any, str]] = [
    ("over the cap", _big, "code.max_mib: the code is over 1 MiB (exclude more, or raise max_mib)"),
    ("missing directory", _missing, "code.dir: no such directory: "),
    ("commit that does not exist", _no_commit, "code.commit: no commit 0123abcd in repo"),
    ("unpinned requirement", _unpinned,
     "code.requirements: requirements.lock line 2: torch is not pinned to one version (name==version)"),
    ("link out of the code", _link_out, "code.dir: link data -> /etc points outside the code"),
    ("digest written by hand", _pinned_digest, "code.digest: is written by the seal"),
]


@pytest.mark.parametrize(("case", "make", "words"), BAD, ids=[c for c, _, _ in BAD])
@pytest.mark.parametrize("command", ["validate", "submit"])
def test_bad_code_is_one_line_exit_2_and_nothing_written(cli, tmp_path: Path, command: str, case: str,  # type: ignore[no-untyped-def]
                                                         make: Any, words: str) -> None:
    path = make(tmp_path / "p")
    r = cli(command, str(path))
    assert r.exit_code == 2, r.output
    assert r.stdout == "" and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"cellsched: {path}: {words}"), r.stderr
    assert sum(rows(cli.db).values()) == 0


# -- the example and the docs ------------------------------------------------------------------

def test_the_example_with_code_validates_and_fits_the_starter_cluster(tmp_path: Path) -> None:
    from importlib.resources import files

    cfg = tmp_path / "cluster.toml"
    cfg.write_text(files("cellsched").joinpath("templates/cluster.toml").read_text().replace("{user}", "alice"))
    cluster = load_cluster(cfg)
    sealed = load_sealed(DEMO)
    spec, code = sealed.spec, sealed.code
    team, pool = cluster.team(spec.team), cluster.pool(spec.budget.pool or "")
    assert team is not None and pool is not None and spec.budget.gpus <= pool.gpus
    assert spec.budget.gpu_seconds <= team.allowance_gpu_seconds and spec.budget.deadline is None
    assert code is not None and code.files == 3
    # The job reads a file that exists only in the snapshot; run it from an unpacked copy.
    from cellsched.executor import _codepack

    where = _codepack.unpack(code.blob, tmp_path / "node", code.digest)
    out = subprocess.run(spec.jobs[0].run, cwd=where, capture_output=True, text=True, check=True)
    assert out.stdout == "planted direction: 3 dims, norm 1.000\n"


def test_the_lines_in_specs_md_are_real(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = (ROOT / "docs" / "specs.md").read_text()
    monkeypatch.chdir(ROOT)
    r = CliRunner().invoke(app, ["validate", "projects/code-demo/code-demo.toml"])
    assert r.exit_code == 0, r.output
    first, second = r.stdout.splitlines()
    assert first in doc, first
    assert re.sub(r"\(\d+ B packed\)|\([\d.]+ KiB packed\)", "", second) in re.sub(r"\([^)]* packed\)", "", doc)
    big = _big(tmp_path / "big")
    r = CliRunner().invoke(app, ["validate", str(big)])
    line = r.stderr.strip().removeprefix(f"cellsched: {big}: ")
    assert line.replace("over 1 MiB", "over 100 MiB") in doc, line  # the docs show the default cap
    gone = _no_commit(tmp_path / "gone")
    r = CliRunner().invoke(app, ["validate", str(gone)])
    line = r.stderr.strip().removeprefix(f"cellsched: {gone}: ")
    assert line.replace("0123abcd in repo", "4f2a9c1 in ../interp-tools") in doc, line
    unlocked = spec_file(tmp_path / "u", 'code = { requirements = "requirements.lock" }',
                         {"requirements.lock": f"torch==2.3.0 {H}\n# pinned by hand:\nnumpy>=1.26 {H}\n"})
    r = CliRunner().invoke(app, ["validate", str(unlocked)])
    assert r.stderr.strip().removeprefix(f"cellsched: {unlocked}: ") in doc, r.stderr
