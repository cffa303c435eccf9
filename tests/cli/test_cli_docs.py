"""docs/cli.md cannot drift from the tool: its first session runs as written, command by
command, and each command's output is the documented one (times, digests and this machine's
directory normalised; column widths and trailing spaces aside); every other ``$ cellsched``
line of the page parses (its command, options and arguments exist)."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from cellsched.cli.app import app
from doc_sessions import shape, steps_of

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "cli.md"
HOME = "/home/alice/lab"  # where the page's session runs
NOW = "2026-12-01T00:00:00Z"


def console_blocks() -> list[tuple[str, str]]:
    """(the heading above, the block) for every console block of the page."""
    out: list[tuple[str, str]] = []
    heading, block = "", None
    for line in DOC.read_text().splitlines():
        if block is not None:
            if line.strip() == "```":
                out.append((heading, "\n".join(block)))
                block = None
            else:
                block.append(line.strip() if line.lstrip().startswith("$ ") else line)
        elif line.lstrip() == "```console":
            block = []
        elif re.match(r"#{2,3} ", line):
            heading = line.lstrip("# ").strip()
    return out


def session() -> list[tuple[str, list[str]]]:
    """The first session's commands and the lines each prints."""
    (block,) = [b for h, b in console_blocks() if h == "A first session"]
    return steps_of(block)



def test_the_first_session_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps = session()
    assert [cmd.split()[1] for cmd, _ in steps] == [
        "init", "validate", "submit", "submit", "budget", "status", "verify", "cancel", "report", "audit"]
    shutil.copytree(REPO / "projects", tmp_path / "projects")
    monkeypatch.chdir(tmp_path)
    env = {"CELLSCHED_USER": "alice", "CELLSCHED_NOW": NOW, "CELLSCHED_SERVER": "local", "CELLSCHED_CLUSTER": "",
           "CELLSCHED_DB": ""}
    runner = CliRunner()
    for cmd, documented in steps:
        argv = shlex.split(cmd)
        assert argv[0] == "cellsched"
        r = runner.invoke(app, argv[1:], env={k: v for k, v in env.items() if v} | {"CELLSCHED_CLUSTER": "cluster.toml"})
        assert r.exit_code == 0, (cmd, r.output)
        got = r.stdout.replace(str(tmp_path), HOME).splitlines()
        assert shape(got) == shape(documented), f"$ {cmd}\n" + "\n".join(got)


def _every_other_command() -> list[str]:
    lines = []
    for heading, block in console_blocks():
        if heading == "A first session":
            continue
        lines += [line[2:].split("  #")[0].strip() for line in block.splitlines() if line.startswith("$ cellsched")]
    return lines


@pytest.mark.parametrize("cmd", _every_other_command())
def test_every_documented_command_line_parses(cmd: str) -> None:
    """Options and arguments exist as written (nothing is run: click parses the line)."""
    group = get_command(app)
    argv = [a.replace("...", "x") for a in shlex.split(cmd)[1:] if not a.startswith("RAY_ADDRESS=")]
    ctx = group.make_context("cellsched", list(argv))
    name, sub, rest = group.resolve_command(ctx, _rest(ctx))  # type: ignore[attr-defined]
    assert sub is not None, cmd
    sub_ctx = sub.make_context(name, rest, parent=ctx)
    if hasattr(sub, "resolve_command") and _rest(sub_ctx):  # token create, ...
        n2, leaf, rest2 = sub.resolve_command(sub_ctx, _rest(sub_ctx))
        leaf.make_context(n2, rest2, parent=sub_ctx)


def _rest(ctx) -> list[str]:  # type: ignore[no-untyped-def]
    """The words a group's context left for its subcommand (click renamed the attribute)."""
    protected = getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", None) or []
    return [*protected, *ctx.args]


def test_the_page_has_commands_beyond_the_session() -> None:
    names = {shlex.split(c)[1] for c in _every_other_command() if len(shlex.split(c)) > 1}
    assert {"submit", "serve", "demo", "logs", "report", "simulate"} <= names
