"""The pages besides docs/cli.md cannot drift from the code either: their sessions that can
run on a fresh directory run as written (output compared as in test_cli_docs.py: times,
digests and column widths aside), their spec examples validate, the tables that name code
(API routes, ledger tables, JSON keys, the executor's contract) name what is there, and every
``cellsched`` command line they show parses (its command, options and arguments exist).
Examples are read from the pages, so a page and its test cannot drift apart."""

from __future__ import annotations

import dataclasses
import json
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
DOCS = REPO / "docs"
NOW = "2026-12-01T00:00:00Z"
# The pages checked here; docs/cli.md has test_cli_docs.py, docs/simulate.md is measured results.
PAGES = ["README.md", "docs/specs.md", "docs/cluster.md", "docs/cluster-setup.md", "docs/admission.md",
         "docs/daemon.md", "docs/server.md", "docs/api.md", "docs/metrics.md", "docs/ledger.md",
         "docs/lending.md", "docs/executor.md", "docs/report.md"]


def page(name: str) -> str:
    return (REPO / name).read_text(encoding="utf-8")


def fenced(name: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", page(name), re.S)


def session(name: str, first: str) -> list[tuple[str, list[str]]]:
    """The console block of page ``name`` whose first command starts with ``first``: its
    commands and the lines each prints."""
    (block,) = [b for b in fenced(name, "console") if b.startswith(f"$ {first}")]
    return steps_of(block)



@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh directory holding the repository's example projects, as a new user has it."""
    shutil.copytree(REPO / "projects", tmp_path / "projects")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(cmd: str, user: str = "alice") -> str:
    argv = shlex.split(cmd)
    assert argv[0] == "cellsched", cmd
    env = {"CELLSCHED_USER": user, "CELLSCHED_NOW": NOW, "CELLSCHED_SERVER": "local",
           "CELLSCHED_CLUSTER": "cluster.toml", "CELLSCHED_DB": None}
    r = CliRunner().invoke(app, argv[1:], env=env)
    assert r.exit_code == 0, (cmd, r.output)
    return r.stdout


def run_as_written(steps: list[tuple[str, list[str]]], user: str = "alice") -> None:
    for cmd, documented in steps:
        got = run(cmd, user).splitlines()
        assert shape(got) == shape(documented), f"$ {cmd}\n" + "\n".join(got)


# -- sessions that run ----------------------------------------------------------------------

def test_specs_md_validate_session_runs_as_written(lab: Path) -> None:
    steps = session("docs/specs.md", "cellsched validate projects/*.toml")
    # the shell would expand the globs
    expanded = [(" ".join(["cellsched", "validate"] + [str(p.relative_to(lab)) for g in cmd.split()[2:]
                                                        for p in sorted(lab.glob(g))])
                 if "*" in cmd else cmd, out) for cmd, out in steps]
    for cmd, documented in expanded:
        got = run(cmd).splitlines()
        assert got == [d.rstrip() for d in documented], f"$ {cmd}\n" + "\n".join(got)  # digests too


def test_readme_first_commands_run_as_written(lab: Path) -> None:
    """init, validate and submit as the README shows them (the later ones need a daemon, a
    trace or a grant to cancel: they are parsed below); the submit prints what is shown."""
    steps = session("README.md", "cellsched init")
    assert [cmd.split()[1] for cmd, _ in steps[:3]] == ["init", "validate", "submit"]
    for cmd, documented in steps[:3]:
        if "*" in cmd:
            cmd = " ".join(["cellsched", "validate"] + sorted(str(p.relative_to(lab)) for p in lab.glob(cmd.split()[2])))
        got = run(cmd).splitlines()
        if documented:
            assert shape(got) == shape(documented), f"$ {cmd}\n" + "\n".join(got)


def test_lending_md_submit_and_budget_run_as_written(lab: Path) -> None:
    run("cellsched init", user="carol")  # the starter config makes the caller a member of evals
    run_as_written(session("docs/lending.md", "cellsched submit projects/lr-sweep/lr-sweep.toml"), user="carol")
    run_as_written(session("docs/lending.md", "cellsched budget evals"), user="carol")


def test_cluster_md_example_passes_init_check(lab: Path) -> None:
    (example,) = fenced("docs/cluster.md", "toml")
    (lab / "cluster.toml").write_text(example)
    assert run("cellsched init --check").startswith("ok  cluster.toml: 2 pools, 192 GPUs, 3 teams")


def test_cluster_setup_md_smoke_spec_is_planned_on_its_pools(lab: Path) -> None:
    """The smoke spec of section 7, on the starter config with section 5's pools, would be
    granted (so it validates, its pool exists and the starter makes the caller a member)."""
    pools, smoke = fenced("docs/cluster-setup.md", "toml")
    assert "$ cellsched submit smoke.toml" in page("docs/cluster-setup.md")
    run("cellsched init")
    starter = (lab / "cluster.toml").read_text()
    (lab / "cluster.toml").write_text(starter.split("[[pools]]")[0] + pools + "\n[[teams]]"
                                      + starter.split("[[teams]]", 1)[1])
    (lab / "smoke.toml").write_text(smoke)
    assert run("cellsched init --check").startswith("ok  cluster.toml: 2 pools, 24 GPUs")
    assert run("cellsched plan smoke.toml").startswith("would be granted  smoke@")


# -- tables that name the code ---------------------------------------------------------------

def test_api_md_routes_are_the_servers() -> None:
    from cellsched.server.api import router

    documented = set(re.findall(r"^\| `(GET|POST|PUT|DELETE) (/api/[^`]*)` \|", page("docs/api.md"), re.M))
    served = {(m, r.path) for r in router.routes for m in r.methods}  # type: ignore[attr-defined]
    assert documented == served


def test_ledger_md_names_every_table() -> None:
    from sqlmodel import SQLModel

    import cellsched.ledger.tables  # noqa: F401  (registers the tables)

    text = page("docs/ledger.md")
    assert [t for t in SQLModel.metadata.tables if t.startswith("cs_") and f"`{t}`" not in text] == []


def test_ledger_md_audit_json_has_the_real_keys(lab: Path) -> None:
    (shown,) = [b for b in fenced("docs/ledger.md", "console") if "audit --json" in b]
    keys = set(re.findall(r'^  "(\w+)":', shown.split("$ cellsched audit --json")[1], re.M))
    run("cellsched init")
    assert keys == set(json.loads(run("cellsched audit --json")))


def test_daemon_md_json_keys_are_the_real_ones(lab: Path) -> None:
    text = " ".join(page("docs/daemon.md").split("`--json` keys:")[1].split(". `status`")[0].split())
    keys = set(re.findall(r"`(\w+)`", text)) - {"null"}
    run("cellsched init")
    real = set(json.loads(run("cellsched daemon --json")))
    assert keys == {k for k in real if not k.endswith("_utc")}
    assert "<key>_utc" in text


def test_executor_md_contract_is_base_executor() -> None:
    from cellsched.executor import base

    text = page("docs/executor.md")
    block = re.search(r"class Executor\(Protocol\):\n(.*?)```", text, re.S)
    assert block is not None
    documented = re.findall(r"def (\w+)\(", block.group(1))
    real = [n for n, v in vars(base.Executor).items() if callable(v) and not n.startswith("_")]
    assert sorted(documented) == sorted(real)
    for cls in (base.GangSpec, base.GangResult, base.RunningGang, base.NodeInfo, base.Placement):
        m = re.search(rf"`{cls.__name__}\((.*?)\)`", text, re.S)
        assert m is not None, cls.__name__
        shown = [w.split("=")[0].strip() for w in m.group(1).replace("\n", " ").split(",")]
        assert shown == [f.name for f in dataclasses.fields(cls)], cls.__name__


# -- every command line parses --------------------------------------------------------------

def _cellsched_argv(script: str) -> list[str] | None:
    """The arguments of the ``cellsched`` command a shell line runs (after ``sudo -u USER``,
    ``env``, ``exec``, ``VAR=value``, or inside ``sh -c '...'``), up to a redirection, pipe or
    separator; None if the line runs something else."""
    lex = shlex.shlex(script, posix=True, punctuation_chars=";&|<>")
    lex.whitespace_split = True
    words = list(lex)
    i = 0
    while i < len(words):
        w = words[i]
        if w == "sudo" and words[i + 1:i + 2] == ["-u"]:
            i += 3
        elif w in ("env", "exec") or re.fullmatch(r"[A-Z_]+=\S*", w):
            i += 1
        elif w == "sh" and words[i + 1:i + 2] == ["-c"]:
            return _cellsched_argv(words[i + 2])
        elif Path(w).name == "cellsched":
            out = []
            for a in words[i + 1:]:
                if a[0] in ";&|<>":
                    break
                out.append(a)
            return out
        else:  # another command: the next one after a separator, if any
            seps = [j for j in range(i, len(words)) if words[j] in (";", "&&", "||", "|")]
            if not seps:
                return None
            i = seps[0] + 1
    return None


def documented_commands() -> list[tuple[str, str]]:
    out = []
    for name in PAGES:
        for block in fenced(name, "console"):
            for line in block.replace("\\\n", " ").splitlines():
                m = re.match(r"^\s*[\w-]*\$ (.*)$", line)
                if not m:
                    continue
                argv = _cellsched_argv(re.sub(r"\s#\s.*$", "", m.group(1)))
                if argv is not None:
                    out.append((name, " ".join(shlex.quote(a) for a in argv)))
    return out


def _rest(ctx) -> list[str]:  # type: ignore[no-untyped-def]
    protected = getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", None) or []
    return [*protected, *ctx.args]


@pytest.mark.parametrize(("name", "cmd"), documented_commands())
def test_every_command_line_on_the_pages_parses(name: str, cmd: str) -> None:
    """Options and arguments exist as written (nothing is run: click parses the line)."""
    group = get_command(app)
    ctx = group.make_context("cellsched", shlex.split(cmd))
    if not _rest(ctx):
        return  # global options only (cellsched --help)
    sub_name, sub, rest = group.resolve_command(ctx, _rest(ctx))  # type: ignore[attr-defined]
    assert sub is not None, (name, cmd)
    sub_ctx = sub.make_context(sub_name, rest, parent=ctx)
    if hasattr(sub, "resolve_command") and _rest(sub_ctx):  # token create, ...
        n2, leaf, rest2 = sub.resolve_command(sub_ctx, _rest(sub_ctx))
        leaf.make_context(n2, rest2, parent=sub_ctx)


def test_the_pages_show_commands() -> None:
    pages = {name for name, _ in documented_commands()}
    assert {"README.md", "docs/specs.md", "docs/cluster.md", "docs/server.md", "docs/daemon.md",
            "docs/lending.md", "docs/ledger.md", "docs/cluster-setup.md"} <= pages


def test_metrics_md_queries_and_alerts_name_documented_metrics() -> None:
    """The PromQL and alert rules use metrics of the page's tables (which test_metrics.py
    holds equal to a real scrape)."""
    text = page("docs/metrics.md")
    tables = {n for line in text.splitlines() if line.startswith("| `cellsched_")
              for n in re.findall(r"`(cellsched_[a-z_]+)`", line.split("|")[1])}
    used = {n for b in fenced("docs/metrics.md", "promql") + fenced("docs/metrics.md", "yaml")
            for n in re.findall(r"\b(cellsched_[a-z_]+)", b)}
    used = {re.sub(r"_bucket$", "", n) for n in used}
    assert used and used <= tables, used - tables
