"""The foundation commands as a user meets them: help with examples, validate, init, and
the example specs in projects/ (this test is what keeps them real)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cellsched import __version__
from cellsched.cli.app import app
from cellsched.ledger import events
from cellsched.ledger.db import Ledger, schema_version
from cellsched.ledger.tables import SCHEMA_VERSION
from cellsched.spec.load import load_cluster, load_spec
from cellsched.spec.seal import digest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (ROOT / "projects").iterdir() if p.suffix in (".toml", ".yaml", ".yml", ".json"))


def run(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args))


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CELLSCHED_DB", "CELLSCHED_CLUSTER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CELLSCHED_USER", "alice")


# -- help ------------------------------------------------------------------------------

COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def test_top_level_help_shows_an_example() -> None:
    r = run("--help")
    assert r.exit_code == 0
    assert "Example" in r.stdout and "cellsched submit" in r.stdout


def test_top_level_help_lists_every_command_and_the_exit_codes() -> None:
    r = run("--help")
    assert r.exit_code == 0 and not r.stderr
    for name in COMMANDS:
        assert name in r.stdout
    assert "Exit codes: 0 ok, 1 refused or failed, 2 bad input" in r.stdout
    assert run().exit_code in (0, 2) and "Usage" in run().stdout  # no arguments: the help


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help_with_an_example(command: str) -> None:
    r = run(command, "--help")
    assert r.exit_code == 0, r.output
    assert "Example" in r.stdout, r.stdout
    assert "cellsched " in r.stdout.split("Example", 1)[1]


def test_version() -> None:
    r = run("--version")
    assert (r.exit_code, r.stdout) == (0, f"cellsched {__version__}\n")


def test_the_foundation_commands_are_there() -> None:
    assert {"validate", "init", "audit", "submit"} <= set(COMMANDS)


# -- the examples in projects/ ---------------------------------------------------------

def test_there_are_examples_in_each_format() -> None:
    assert len(EXAMPLES) >= 3
    assert {p.suffix for p in EXAMPLES} >= {".toml", ".yaml", ".json"}


@pytest.fixture(scope="module")
def starter_cluster(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from importlib.resources import files

    path = tmp_path_factory.mktemp("starter") / "cluster.toml"
    path.write_text(files("cellsched").joinpath("templates/cluster.toml").read_text().replace("{user}", "alice"))
    return load_cluster(path)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_validates_and_fits_the_starter_cluster(path: Path, starter_cluster) -> None:  # type: ignore[no-untyped-def]
    spec = load_spec(path)
    team = starter_cluster.team(spec.team)
    assert team is not None, f"{path.name}: team {spec.team} is not in the starter cluster.toml"
    b = spec.budget
    pools = [p for p in starter_cluster.pools
             if (b.pool is None or p.name == b.pool) and (b.gpu_type is None or p.gpu_type == b.gpu_type)]
    assert pools, f"{path.name}: no pool in the starter cluster.toml matches"
    assert b.gpus <= max(p.gpus for p in pools)
    assert team.max_gpus is None or b.gpus <= team.max_gpus
    assert b.gpu_seconds <= team.allowance_gpu_seconds
    assert b.deadline is None, f"{path.name}: a deadline makes the example go stale"
    r = run("validate", str(path))
    assert r.exit_code == 0, r.output
    assert r.stdout == f"ok  {spec.name}@{digest(spec)[:12]}  {path}  sha256:{digest(spec)}\n"


def test_validate_json_lists_file_name_id_digest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = run("validate", "--json", *map(str, EXAMPLES))
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [item["file"] for item in out] == [str(p) for p in EXAMPLES]
    for item, path in zip(out, EXAMPLES):
        d = digest(load_spec(path))
        assert item == {"file": str(path), "name": load_spec(path).name, "id": f"{item['name']}@{d[:12]}", "digest": d}
    assert list(tmp_path.iterdir()) == []  # validate writes nothing: no ledger, no key, no config


# -- init ------------------------------------------------------------------------------

def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_init_writes_a_commented_config_a_key_pair_and_the_ledger(tmp_path: Path) -> None:
    cfg = tmp_path / "cluster.toml"
    r = run("--cluster", str(cfg), "init")
    assert r.exit_code == 0, r.output
    text = cfg.read_text()
    assert sum(line.lstrip().startswith("#") for line in text.splitlines()) >= 5
    assert "{user}" not in text
    cluster = load_cluster(cfg)
    assert cluster.admins == ("alice",) and all(t.members == ("alice",) for t in cluster.teams)
    key, pub = tmp_path / "cellsched.key", tmp_path / "cellsched.pub"
    assert _mode(key) == 0o600 and b"PRIVATE KEY" in key.read_bytes()
    assert b"PUBLIC KEY" in pub.read_bytes()
    db = tmp_path / "cellsched.db"
    assert db.is_file()
    led = Ledger(f"sqlite:///{db}")
    with led.read() as s:
        assert schema_version(s) == SCHEMA_VERSION
        assert events.audit(s).ok
    led.dispose()
    assert [line.split()[0] for line in r.stdout.splitlines()] == ["wrote", "wrote", "ledger"]
    assert f"{cfg}" in r.stdout and str(key) in r.stdout

    # Again: everything is kept, byte for byte, and the ledger still audits.
    before = {p.name: p.read_bytes() for p in (cfg, key, pub)}
    again = run("--cluster", str(cfg), "init")
    assert again.exit_code == 0, again.output
    assert [line.split()[0] for line in again.stdout.splitlines()] == ["kept", "kept", "ledger"]
    assert {p.name: p.read_bytes() for p in (cfg, key, pub)} == before
    assert _mode(key) == 0o600
    assert run("--cluster", str(cfg), "audit").stdout.startswith("ok  0 events")


def test_init_keeps_ledger_events(tmp_path: Path) -> None:
    cfg = tmp_path / "cluster.toml"
    assert run("--cluster", str(cfg), "init").exit_code == 0
    led = Ledger(f"sqlite:///{tmp_path / 'cellsched.db'}")
    with led.write() as s:
        events.append(s, 1, "submitted", "p@0123456789ab", "alice", {})
    led.dispose()
    assert run("--cluster", str(cfg), "init").exit_code == 0
    assert run("--cluster", str(cfg), "audit").stdout.startswith("ok  1 event, ")


def test_init_force_rewrites_the_config_but_never_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "cluster.toml"
    assert run("--cluster", str(cfg), "init").exit_code == 0
    key = (tmp_path / "cellsched.key").read_bytes()
    cfg.write_text(cfg.read_text().replace("gpus = 128", "gpus = 64"))
    r = run("--cluster", str(cfg), "init", "--force")
    assert r.exit_code == 0 and r.stdout.startswith("wrote")
    assert "gpus = 128" in cfg.read_text()
    assert (tmp_path / "cellsched.key").read_bytes() == key


def test_init_with_a_ledger_url(tmp_path: Path, ledger_url: str) -> None:
    cfg = tmp_path / "etc" / "cluster.toml"
    cfg.parent.mkdir()
    r = run("--cluster", str(cfg), "--db", ledger_url, "init")
    assert r.exit_code == 0, r.output
    led = Ledger(ledger_url)
    with led.read() as s:
        assert schema_version(s) == SCHEMA_VERSION
    led.dispose()
    assert sorted(p.name for p in cfg.parent.iterdir()) == ["cellsched.key", "cellsched.pub", "cluster.toml"]
    assert "postgres" not in r.stdout or "@" not in r.stdout.splitlines()[-1]  # no credentials echoed


def test_init_with_a_bad_existing_config_writes_nothing_else(tmp_path: Path) -> None:
    cfg = tmp_path / "cluster.toml"
    cfg.write_text('[[pools]]\nname = "h100"\ngpu_type = "H100"\ngpus = 0\n')
    r = run("--cluster", str(cfg), "init")
    assert r.exit_code == 2
    assert r.stderr == f"cellsched: {cfg}: pools.0.gpus: must be greater than or equal to 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["cluster.toml"]


def test_init_in_a_missing_directory(tmp_path: Path) -> None:
    r = run("--cluster", str(tmp_path / "nope" / "cluster.toml"), "init")
    assert r.exit_code == 2
    assert r.stderr == f"cellsched: {tmp_path / 'nope'}: no such directory\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["c.yaml", "c.json", "c.txt", "cluster"])
def test_init_writes_no_config_under_a_name_that_is_not_toml(tmp_path: Path, name: str) -> None:
    """The starter config is TOML: under another name nothing is written (not the config,
    not the ledger beside it, not a key)."""
    r = run("--cluster", str(tmp_path / name), "init")
    assert r.exit_code == 2 and r.stderr == (
        f"cellsched: {tmp_path / name}: init writes a TOML cluster config; name it .toml "
        "(a YAML or JSON one you write yourself)\n")
    assert list(tmp_path.iterdir()) == []


def test_relative_cluster_path_puts_the_ledger_beside_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf").mkdir()
    assert run("--cluster", "conf/cluster.toml", "init").exit_code == 0
    assert (tmp_path / "conf" / "cellsched.db").is_file() and not (tmp_path / "cellsched.db").exists()
    assert os.listdir(tmp_path) == ["conf"]


def test_init_check_validates_and_writes_nothing(tmp_path: Path) -> None:
    cfg = tmp_path / "cluster.toml"
    missing = run("--cluster", str(cfg), "init", "--check")
    assert (missing.exit_code, missing.stderr) == (2, f"cellsched: {cfg}: no such file\n")
    cfg.write_text('[[pools]]\nname = "h100"\ngpu_type = "H100"\ngpus = "16"\n')
    bad = run("--cluster", str(cfg), "init", "--check")
    assert (bad.exit_code, bad.stderr) == (2, f"cellsched: {cfg}: pools.0.gpus: must be a whole number\n")
    cfg.write_text('[[pools]]\nname = "h100"\ngpu_type = "H100"\ngpus = 16\n')
    good = run("--cluster", str(cfg), "init", "--check")
    assert (good.exit_code, good.stdout) == (0, f"ok  {cfg}: 1 pools, 16 GPUs, 0 teams\n")
    assert [p.name for p in tmp_path.iterdir()] == ["cluster.toml"]


def test_audit_without_a_ledger_says_so_and_creates_none(tmp_path: Path) -> None:
    r = run("--cluster", str(tmp_path / "cluster.toml"), "audit")
    assert r.exit_code == 2
    assert r.stderr == f"cellsched: {tmp_path / 'cellsched.db'}: no ledger here (run `cellsched init`, or pass --db)\n"
    assert list(tmp_path.iterdir()) == []


def test_commands_that_only_read_create_no_ledger(cluster_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a cluster config but no ledger yet (or a --db naming a file that is not there),
    a command that only reads the ledger answers as for an empty one (a name it does not
    know is one line, exit 2) and creates nothing; submit, which writes, creates it."""
    monkeypatch.setenv("CELLSCHED_SERVER", "local")
    root = cluster_file.parent
    before = sorted(p.name for p in root.iterdir())
    spec = str(ROOT / "projects" / "pythia-ablation.toml")
    for db in ([], ["--db", f"sqlite:///{root / 'new.db'}"]):
        flags = ["--cluster", str(cluster_file), *db]
        for args in (["status"], ["budget", "interp"], ["report"], ["calendar"], ["daemon"],
                     ["submit", "--dry-run", spec]):
            r = run(*flags, *args)
            assert r.exit_code == 0 and "Traceback" not in r.output, (args, r.output)
        for args in (["status", "nope"], ["budget", "nope"], ["cancel", "nope"], ["verify", "nope"], ["logs", "nope"]):
            r = run(*flags, *args)
            assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "nope" in r.stderr, (args, r.stderr)
        assert sorted(p.name for p in root.iterdir()) == before
    assert "no projects" in run("--cluster", str(cluster_file), "status").stdout
    assert run("--cluster", str(cluster_file), "submit", spec).exit_code == 0
    assert (root / "cellsched.db").exists()


def test_submit_take_on_a_ledger_not_created_yet_keeps_its_grant(cluster_file: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """--take plans first (a read: the missing ledger is read as empty, nothing created)
    and then submits: that grant lands in the real ledger, created then."""
    monkeypatch.setenv("CELLSCHED_SERVER", "local")
    root = cluster_file.parent
    spec = root / "big.toml"
    spec.write_text('name = "big"\nteam = "interp"\nowner = "alice"\nproblem = "q"\n'
                    '[budget]\ngpu_hours = 32\ngpus = 32\n[[jobs]]\nname = "train"\nrun = ["python", "t.py"]\ngpus = 32\n')
    r = run("--cluster", str(cluster_file), "submit", str(spec), "--take", "1")
    assert r.exit_code == 0 and "granted" in r.stdout, r.output
    assert (root / "cellsched.db").exists()
    [row] = json.loads(run("--cluster", str(cluster_file), "status", "--json", "big").stdout)
    assert row["state"] == "granted" and row["width"] == 16
