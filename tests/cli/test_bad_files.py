"""Files that are not what they should be, through the command line: a damaged signing or
public key, a ``--take`` copy that cannot be written, a bad client config or ``--ca``, a
named pipe or a device where a spec or the cluster config belongs, a key written twice in a
JSON or YAML spec. Each is exit 2 and one line on stderr naming the file (and the field or
key), no traceback, and nothing written: no ledger event, no file created or changed.

A named pipe, a device, or a client config is given to the CLI in its own process, with a
timeout: a read that blocks on a pipe (or never ends on ``/dev/zero``) fails the test
instead of hanging the suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_errors_one_line import assert_one_line, listing
from test_foundation_bad_input import (  # noqa: F401 (fixtures: taken by name)
    GOOD,
    GOOD_JSON,
    GOOD_YAML,
    _clean_env,
    assert_one_clean_line,
    busy_ledger,
    ledger_state,
)
from typer.testing import CliRunner

import cellsched
from cellsched.cli.app import app
from cellsched.receipt import key_paths

SRC = str(Path(cellsched.__file__).resolve().parents[1])  # this checkout's, in the child too
NOW = "2026-12-01T00:00:00Z"
# Refused (the deadline is too close) with two alternatives: a later deadline, fewer GPU-hours.
REFUSED = GOOD.replace('pool = "h100"', 'pool = "h100"\ndeadline = "2026-12-01T04:00:00Z"')


def run(cwd: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """This checkout's CLI in its own process (20 s at most: a blocked read fails)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CELLSCHED_")}
    base["PYTHONPATH"] = os.pathsep.join([SRC, *filter(None, [os.environ.get("PYTHONPATH")])])
    base.update({"CELLSCHED_USER": "alice", "CELLSCHED_SERVER": "local", "CELLSCHED_NOW": NOW,
                 "XDG_CONFIG_HOME": str(cwd / "xdg"), **env})
    code = "from cellsched.cli.app import main; main()"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=base,
                          cwd=cwd, timeout=20)


def invoke(*argv: str) -> object:
    return CliRunner().invoke(app, list(argv), env={"CELLSCHED_NOW": NOW, "CELLSCHED_SERVER": "local"})


def contents(root: Path) -> dict[str, bytes | str]:
    """Every entry under ``root``: a regular file's bytes, else what it is. The test's
    SQLite ledger (``ledger.db`` and its -wal/-shm, which reading it may leave) is compared
    by :func:`ledger_state` instead."""
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if rel.startswith("ledger.db"):
            continue
        if p.is_symlink():
            out[rel] = f"-> {os.readlink(p)}"
        elif p.is_dir():
            out[rel] = "dir"
        elif p.is_file():
            out[rel] = p.read_bytes()
        else:
            out[rel] = "special"
    return out


# -- named pipes and devices as specs and cluster configs ---------------------------------------


@pytest.fixture
def pipe(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.toml"
    os.mkfifo(path)
    return path


@pytest.fixture
def zero(tmp_path: Path) -> Path:
    path = tmp_path / "zero.toml"
    path.symlink_to("/dev/zero")
    return path


@pytest.mark.parametrize("command", ["validate", "plan", "submit", "verify-spec"])
def test_a_named_pipe_as_the_spec_is_refused_without_blocking(tmp_path: Path, cluster_file: Path,
                                                             busy_ledger: str, pipe: Path, command: str) -> None:
    before, files = ledger_state(busy_ledger), listing(tmp_path)
    argv = ["verify", "p@0123456789ab", "--spec", str(pipe)] if command == "verify-spec" else [command, str(pipe)]
    p = run(tmp_path, "--cluster", str(cluster_file), "--db", busy_ledger, *argv)
    assert_one_line(p, f"{pipe}: is a named pipe (FIFO), not a regular file")
    assert ledger_state(busy_ledger) == before and listing(tmp_path) == files


def test_a_link_to_a_device_as_the_spec_is_refused_without_reading_it(tmp_path: Path, cluster_file: Path,
                                                                     busy_ledger: str, zero: Path) -> None:
    before, files = ledger_state(busy_ledger), listing(tmp_path)
    for argv in (["validate", str(zero)], ["--cluster", str(cluster_file), "--db", busy_ledger, "submit", str(zero)]):
        assert_one_line(run(tmp_path, *argv), f"{zero}: is a device, not a regular file")
    assert ledger_state(busy_ledger) == before and listing(tmp_path) == files


@pytest.mark.parametrize("special", ["pipe", "zero"])
@pytest.mark.parametrize("command", [["status"], ["init", "--check"], ["init"], ["budget", "interp"]])
def test_a_named_pipe_or_a_device_as_the_cluster_config(request: pytest.FixtureRequest, tmp_path: Path,
                                                        special: str, command: list[str]) -> None:
    path: Path = request.getfixturevalue(special)
    words = "is a named pipe (FIFO)" if special == "pipe" else "is a device"
    files = listing(tmp_path)
    p = run(tmp_path, "--cluster", str(path), *command)
    assert_one_line(p, f"{path}: {words}, not a regular file")
    assert listing(tmp_path) == files  # no ledger beside it, no keys


def test_a_link_to_a_regular_file_is_still_read(tmp_path: Path) -> None:
    (tmp_path / "real.toml").write_text(GOOD)
    (tmp_path / "link.toml").symlink_to("real.toml")
    r = invoke("validate", str(tmp_path / "link.toml"))
    assert r.exit_code == 0 and r.stdout.startswith("ok  "), r.output  # type: ignore[attr-defined]


# -- a key written twice --------------------------------------------------------------------------

DUPLICATES = [
    ("json top", "top.json", GOOD_JSON.replace('"name": "pretrain-small"', '"name": "p1", "name": "p2"', 1), "'name'"),
    ("json nested", "nested.json", GOOD_JSON.replace('"gpus": 8, "pool"', '"gpus": 8, "gpus": 2, "pool"'), "'gpus'"),
    ("json in a list", "list.json", GOOD_JSON.replace('"name": "train"', '"name": "train", "name": "eval"'),
     "'name'"),
    ("yaml top", "top.yaml", GOOD_YAML + "name: other\n", "line 8, column 1: duplicate key 'name'"),
    ("yaml nested", "nested.yaml", GOOD_YAML.replace("budget: {gpu_hours: 20,", "budget: {gpu_hours: 20, gpu_hours: 2,"),
     "line 5, column 25: duplicate key 'gpu_hours'"),
    ("yaml in a list", "list.yaml", GOOD_YAML.replace("gpus: 2}", "gpus: 2, gpus: 1}"),
     "line 5, column 34: duplicate key 'gpus'"),
]


@pytest.mark.parametrize(("case", "name", "text", "words"), DUPLICATES, ids=[c[0] for c in DUPLICATES])
def test_a_key_written_twice_is_refused(tmp_path: Path, cluster_file: Path, busy_ledger: str, case: str,
                                        name: str, text: str, words: str) -> None:
    path = tmp_path / "specs" / name
    path.parent.mkdir()
    path.write_text(text)
    kind = "JSON" if name.endswith(".json") else "YAML"
    before, files = ledger_state(busy_ledger), listing(tmp_path)
    for argv in (["validate", str(path)], ["--cluster", str(cluster_file), "--db", busy_ledger, "submit", str(path)]):
        r = invoke(*argv)
        assert r.exit_code == 2 and r.stdout == "", r.output  # type: ignore[attr-defined]
        assert_one_clean_line(r.stderr, path, f"not valid {kind}: ")  # type: ignore[attr-defined]
        assert words in r.stderr and "duplicate key" in r.stderr  # type: ignore[attr-defined]
    assert ledger_state(busy_ledger) == before and listing(tmp_path) == files


def test_a_json_spec_naming_itself_twice_is_not_granted_under_the_second_name(tmp_path: Path, cluster_file: Path,
                                                                            ledger_url: str) -> None:
    path = tmp_path / "twice.json"
    path.write_text(GOOD_JSON.replace('"name": "pretrain-small"', '"name": "p1", "name": "p2"', 1))
    r = invoke("--cluster", str(cluster_file), "--db", ledger_url, "submit", str(path))
    assert r.exit_code == 2 and "duplicate key 'name'" in r.stderr  # type: ignore[attr-defined]
    assert ledger_state(ledger_url)[0] == []


def test_a_key_brought_in_by_a_yaml_merge_may_still_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "merge.yaml"
    path.write_text(GOOD_YAML.replace("  - {name: train, run: [python3, train.py], gpus: 2}\n",
                                      "  - <<: {name: train, run: [python3, train.py], gpus: 1}\n    gpus: 2\n"))
    r = invoke("validate", str(path))
    assert r.exit_code == 0, r.output  # type: ignore[attr-defined]


def test_a_merged_mapping_used_again_through_an_alias_is_no_duplicate() -> None:
    """Building merges rewrites the merged mapping in place; its keys are not duplicates when
    it is used again through an alias (the check reads the document as written)."""
    from cellsched.spec.load import parse_document

    text = "t:\n  <<: &m\n    <<: {x: 1}\n    x: 2\n  y: 3\no: *m\n"
    assert parse_document(text, "yaml", "f.yaml")["o"] == {"x": 2}


def test_a_cluster_config_with_a_key_written_twice(tmp_path: Path) -> None:
    cluster = tmp_path / "cluster.json"
    cluster.write_text('{"admins": ["root-admin"], "admins": ["alice"], "pools": [], "teams": []}')
    files = listing(tmp_path)
    r = invoke("--cluster", str(cluster), "status")
    assert r.exit_code == 2  # type: ignore[attr-defined]
    assert_one_clean_line(r.stderr, cluster, "not valid JSON: duplicate key 'admins'")  # type: ignore[attr-defined]
    assert listing(tmp_path) == files


# -- the signing key and the public key -----------------------------------------------------------

GARBAGE = b"this is not a key\n"


def damage(key: Path, how: str) -> None:
    key.unlink()
    if how == "garbage":
        key.write_bytes(GARBAGE)
    elif how == "directory":
        key.mkdir()
    elif how == "empty":
        key.write_bytes(b"")
    elif how == "public key":  # a PEM key, of the wrong kind
        key.write_bytes((key.parent / "cellsched.pub").read_bytes())
    elif how == "dangling":
        key.symlink_to("nowhere.key")


SUBMIT_KEY_CASES = [("garbage", "not a PEM private key"), ("directory", "is a directory"),
                    ("empty", "not a PEM private key"), ("public key", "not a PEM private key")]


@pytest.mark.parametrize(("how", "words"), SUBMIT_KEY_CASES, ids=[c[0] for c in SUBMIT_KEY_CASES])
def test_submit_with_a_damaged_signing_key(tmp_path: Path, cluster_file: Path, busy_ledger: str,
                                           how: str, words: str) -> None:
    private = key_paths(cluster_file)[0]
    damage(private, how)
    spec = tmp_path / "spec.toml"
    spec.write_text(GOOD)
    before, files = ledger_state(busy_ledger), contents(tmp_path)
    r = invoke("--cluster", str(cluster_file), "--db", busy_ledger, "submit", str(spec))
    assert r.exit_code == 2 and r.stdout == "", r.output  # type: ignore[attr-defined]
    assert_one_clean_line(r.stderr, private, words)  # type: ignore[attr-defined]
    assert "cellsched init" in r.stderr  # type: ignore[attr-defined]  # what to do
    assert ledger_state(busy_ledger) == before and contents(tmp_path) == files


@pytest.mark.parametrize(("how", "words"), [("garbage", "not a PEM public key"), ("directory", "is a directory")])
def test_verify_with_a_damaged_public_key(tmp_path: Path, cluster_file: Path, ledger_url: str,
                                          how: str, words: str) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text(GOOD)
    r = invoke("--cluster", str(cluster_file), "--db", ledger_url, "submit", str(spec))
    assert r.exit_code == 0, r.output  # type: ignore[attr-defined]
    public = key_paths(cluster_file)[1]
    damage(public, how)
    before, files = ledger_state(ledger_url), contents(tmp_path)
    r = invoke("--cluster", str(cluster_file), "--db", ledger_url, "verify", "pythia-ablation")
    assert r.exit_code == 2 and r.stdout == "", r.output  # type: ignore[attr-defined]
    assert_one_clean_line(r.stderr, public, words)  # type: ignore[attr-defined]
    assert ledger_state(ledger_url) == before and contents(tmp_path) == files


INIT_KEY_CASES = [
    ("cellsched.key", "garbage", "not a PEM private key"),
    ("cellsched.key", "directory", "is a directory"),
    ("cellsched.key", "empty", "not a PEM private key"),
    ("cellsched.key", "dangling", "is a symbolic link to nothing"),
    ("cellsched.pub", "garbage", "not a PEM public key"),
    ("cellsched.pub", "directory", "is a directory"),
]


@pytest.mark.parametrize(("name", "how", "words"), INIT_KEY_CASES, ids=[f"{c[0]} {c[1]}" for c in INIT_KEY_CASES])
@pytest.mark.parametrize("check", [False, True], ids=["init", "init --check"])
def test_init_refuses_a_damaged_key_and_writes_nothing(tmp_path: Path, cluster_file: Path, name: str, how: str,
                                                       words: str, check: bool) -> None:
    key = tmp_path / name
    damage(key, how)
    files = contents(tmp_path)
    r = invoke("--cluster", str(cluster_file), "init", *(["--check"] if check else []))
    assert r.exit_code == 2 and r.stdout == "", r.output  # type: ignore[attr-defined]
    assert_one_clean_line(r.stderr, key, words)  # type: ignore[attr-defined]
    assert contents(tmp_path) == files  # the damaged key kept as it is, no ledger created


def test_init_on_a_fresh_directory_with_a_damaged_key_writes_no_cluster_config(tmp_path: Path) -> None:
    (tmp_path / "cellsched.key").write_bytes(GARBAGE)
    files = contents(tmp_path)
    r = invoke("--cluster", str(tmp_path / "cluster.toml"), "init")
    assert r.exit_code == 2  # type: ignore[attr-defined]
    assert_one_clean_line(r.stderr, tmp_path / "cellsched.key", "not a PEM private key")  # type: ignore[attr-defined]
    assert contents(tmp_path) == files


def test_init_refuses_a_public_key_of_another_pair(tmp_path: Path, cluster_file: Path) -> None:
    from cellsched.receipt import create_keys

    other = tmp_path / "other"
    other.mkdir()
    create_keys(other / "cellsched.key", other / "cellsched.pub")
    public = key_paths(cluster_file)[1]
    public.write_bytes((other / "cellsched.pub").read_bytes())
    files = contents(tmp_path)
    for check in ([], ["--check"]):
        r = invoke("--cluster", str(cluster_file), "init", *check)
        assert r.exit_code == 2  # type: ignore[attr-defined]
        assert_one_clean_line(r.stderr, public, "does not match the private key")  # type: ignore[attr-defined]
    assert contents(tmp_path) == files


def test_init_writes_a_missing_public_key_from_the_private_key(tmp_path: Path, cluster_file: Path) -> None:
    public = key_paths(cluster_file)[1]
    pem = public.read_bytes()
    public.unlink()
    r = invoke("--cluster", str(cluster_file), "init")
    assert r.exit_code == 0, r.output  # type: ignore[attr-defined]
    assert f"wrote    {public} (from the private key)" in r.stdout  # type: ignore[attr-defined]
    assert public.read_bytes() == pem


# -- submit --take: the copy cannot be written ----------------------------------------------------


@pytest.fixture
def refused(tmp_path: Path) -> Path:
    path = tmp_path / "late.toml"
    path.write_text(REFUSED)
    return path


def test_the_refused_spec_offers_two_alternatives(cluster_file: Path, ledger_url: str, refused: Path) -> None:
    r = invoke("--cluster", str(cluster_file), "--db", ledger_url, "submit", str(refused), "--json")
    assert len(json.loads(r.stdout)["refusal"]["alternatives"]) == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize("how", ["directory", "dangling link", "read-only directory"])
def test_take_when_the_copy_cannot_be_written(tmp_path: Path, cluster_file: Path, busy_ledger: str,
                                              refused: Path, how: str) -> None:
    target = tmp_path / "late.alt1.toml"
    words = {"directory": "is a directory, not a file", "dangling link": "is a symbolic link to nothing",
             "read-only directory": "cannot write: the directory"}[how]
    if how == "directory":
        target.mkdir()
    elif how == "dangling link":
        target.symlink_to("nowhere.toml")
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only directory")
        tmp_path.chmod(0o555)
    try:
        before, files = ledger_state(busy_ledger), contents(tmp_path)
        r = invoke("--cluster", str(cluster_file), "--db", busy_ledger, "submit", str(refused), "--take", "1")
        assert r.exit_code == 2 and r.stdout == "", r.output  # type: ignore[attr-defined]
        assert_one_clean_line(r.stderr, target, words)  # type: ignore[attr-defined]
        assert ledger_state(busy_ledger) == before and contents(tmp_path) == files
    finally:
        tmp_path.chmod(0o755)


def test_take_when_the_copy_is_a_named_pipe(tmp_path: Path, cluster_file: Path, busy_ledger: str,
                                            refused: Path) -> None:
    target = tmp_path / "late.alt1.toml"
    os.mkfifo(target)
    before, files = ledger_state(busy_ledger), listing(tmp_path)
    p = run(tmp_path, "--cluster", str(cluster_file), "--db", busy_ledger, "submit", str(refused), "--take", "1")
    assert_one_line(p, f"{target}: is a named pipe (FIFO), not a regular file")
    assert ledger_state(busy_ledger) == before and listing(tmp_path) == files


# -- the client config and --ca -------------------------------------------------------------------

CLIENT_CASES = [
    ("not UTF-8", b'server = "http://127.0.0.1:1"\n# caf\xe9\n', "not UTF-8 text (bad byte at offset 35)"),
    ("bad TOML", b"server = = 1\n", "not valid TOML"),
    ("server a number", b"server = 5\n", "server: must be a non-empty string, got a number"),
    ("token a list", b'server = "http://127.0.0.1:1"\ntoken = ["t"]\n', "token: must be a non-empty string, got a list"),
    ("ca a table", b'server = "https://127.0.0.1:1"\n[ca]\nx = 1\n', "ca: must be a non-empty string, got a table"),
    ("server empty", b'server = ""\n', "server: must be a non-empty string, got an empty string"),
    ("ca not a certificate", b'server = "https://127.0.0.1:1"\nca = "spec.toml"\n',
     "ca spec.toml: not a PEM certificate"),
    ("ca missing", b'server = "https://127.0.0.1:1"\nca = "gone.crt"\n', "ca gone.crt: no such file"),
    ("directory", None, "is a directory, not a file"),
    ("named pipe", None, "is a named pipe (FIFO), not a regular file"),
]


@pytest.mark.parametrize(("case", "content", "words"), CLIENT_CASES, ids=[c[0] for c in CLIENT_CASES])
def test_a_bad_client_config(tmp_path: Path, case: str, content: bytes | None, words: str) -> None:
    config = tmp_path / "xdg" / "cellsched" / "client.toml"
    config.parent.mkdir(parents=True)
    (tmp_path / "spec.toml").write_text(GOOD)
    if case == "directory":
        config.mkdir()
    elif case == "named pipe":
        os.mkfifo(config)
    else:
        config.write_bytes(content or b"")
    files = contents(tmp_path)
    for argv in (["status"], ["whoami"], ["submit", "spec.toml"]):
        assert_one_line(run(tmp_path, *argv, CELLSCHED_SERVER=""), f"{config}: ", words)
    assert contents(tmp_path) == files


CA_CASES = [("not a certificate", "not a PEM certificate"), ("missing", "no such file"),
            ("directory", "is a directory, not a file"), ("named pipe", "is a named pipe (FIFO), not a regular file"),
            ("binary", "not a PEM certificate")]


@pytest.mark.parametrize(("case", "words"), CA_CASES, ids=[c[0] for c in CA_CASES])
def test_login_with_a_bad_ca(tmp_path: Path, case: str, words: str) -> None:
    ca = tmp_path / "server.crt"
    if case == "not a certificate":
        ca.write_text(GOOD)
    elif case == "directory":
        ca.mkdir()
    elif case == "named pipe":
        os.mkfifo(ca)
    elif case == "binary":
        ca.write_bytes(bytes(range(256)))
    files = contents(tmp_path)
    p = run(tmp_path, "login", "https://127.0.0.1:1", "--token", "t", "--ca", str(ca))
    assert_one_line(p, f"--ca {ca}: {words}")
    assert contents(tmp_path) == files  # no client.toml


@pytest.mark.parametrize("case", ["directory", "named pipe"])
def test_login_when_the_client_config_cannot_be_written(tmp_path: Path, case: str) -> None:
    config = tmp_path / "xdg" / "cellsched" / "client.toml"
    config.parent.mkdir(parents=True)
    if case == "directory":
        config.mkdir()
    else:
        os.mkfifo(config)
    files = contents(tmp_path)
    # refused before the server (none listens there) is called
    p = run(tmp_path, "login", "https://127.0.0.1:1", "--token", "t")
    assert_one_line(p, f"{config}: is a ")
    assert contents(tmp_path) == files
