"""The one line a bad spec or cluster file gives (docs/specs.md, "Errors"): every problem,
at most 10 shown, in the file's order; "did you mean" for a misspelt key; wrong types in our
words; syntax errors with their line and column; a byte order mark accepted."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from spec_builders import drop, make_cluster, make_spec, put, to_toml

from cellsched.errors import BadInput
from cellsched.spec.cluster import ClusterConfig
from cellsched.spec.load import MAX_PROBLEMS, load_cluster, load_spec, parse_document, validate
from cellsched.spec.models import ProjectSpec
from cellsched.spec.seal import digest


def line(model: type, doc: dict[str, Any], where: str = "f.toml") -> str:
    with pytest.raises(BadInput) as e:
        validate(model, doc, where)
    assert e.value.exit_code == 2 and "\n" not in e.value.message
    return e.value.message


def spec_line(doc: dict[str, Any]) -> str:
    return line(ProjectSpec, doc)


def cluster_line(doc: dict[str, Any]) -> str:
    return line(ClusterConfig, doc, "cluster.toml")


# -- several problems ----------------------------------------------------------------------


def test_one_problem_is_shown_alone() -> None:
    assert spec_line(put(make_spec(), "budget.gpus", 0)) == "f.toml: budget.gpus: must be greater than or equal to 1"


def test_several_problems_are_all_on_the_line_in_the_files_order() -> None:
    doc = put(put(put(make_spec(), "jobs.1.retries", -1), "owner", 7), "budget.gpus", 0)
    doc["jobs"][0]["retry"] = 2
    del doc["problem"]
    assert spec_line(doc) == (
        "f.toml: 5 problems: owner: must be a string, got the number 7; "
        "budget.gpus: must be greater than or equal to 1; "
        "jobs.0.retry: unknown key (did you mean retries?); "
        "jobs.1.retries: must be greater than or equal to 0; "
        "problem: required key is missing"  # not in the file: after the keys of its table
    )


def test_the_order_is_the_files_and_a_missing_key_comes_after_its_table() -> None:
    doc = {"budget": {"gpus": 0, "gpu_hours": 1}, "owner": 7, "name": "x", "team": "t", "problem": "p",
           "jobs": [{"name": "a", "run": "x", "cpus": -1}]}
    assert spec_line(doc) == (
        "f.toml: 3 problems: budget.gpus: must be greater than or equal to 1; "
        "owner: must be a string, got the number 7; jobs.0.cpus: must be greater than or equal to 0")
    del doc["team"]
    assert spec_line(doc).endswith("; team: required key is missing")


def test_checks_across_fields_report_every_problem() -> None:
    jobs = [{"name": "a", "run": "x", "gpus": 16, "after": ["nope"]},
            {"name": "a", "run": "x", "after": ["a"]}]
    assert spec_line(make_spec(jobs=jobs)) == (
        "f.toml: 4 problems: jobs.0.gpus: 16 is more than budget.gpus = 8; "
        "jobs.0.after: no job named 'nope'; jobs.1.name: duplicate job name 'a'; "
        "jobs.1.after: 'a' cannot wait for itself")
    budget = {"gpu_hours": 1, "gpus": 1, "pool": "h100", "gpu_type": "H100",
              "not_before": "2027-01-02T00:00:00Z", "deadline": "2027-01-01T00:00:00Z"}
    assert spec_line(make_spec(budget=budget, jobs=[{"name": "a", "run": "x"}])) == (
        "f.toml: 2 problems: budget.pool: give pool or gpu_type, not both; "
        "budget.not_before: must be before the deadline")
    pools = [{"name": "a", "gpu_type": "H", "gpus": 4, "gpus_per_node": 8, "node_label": "a=b", "node_resource": "r"},
             {"name": "a", "gpu_type": "H", "gpus": 8}]
    assert cluster_line(make_cluster(pools=pools)) == (
        "cluster.toml: 2 problems: pools.0.gpus_per_node: more than the pool's gpus; "
        "pools.0.node_label: give node_label or node_resource, not both")


def test_at_most_ten_are_shown_and_the_count_says_how_many() -> None:
    doc = make_spec()
    for i in range(13):
        doc[f"zz{i}"] = i
    msg = spec_line(doc)
    assert msg == ("f.toml: 13 problems: " + "; ".join(f"zz{i}: unknown key" for i in range(MAX_PROBLEMS))
                   + "; and 3 more")


# Problems that do not touch each other: each is exactly one line, whichever others there are.
INDEPENDENT = [
    ("owner", 7), ("problem", ""), ("notify", ""), ("replaces", "bad"), ("budget.gpu_hours", -1),
    ("budget.deadline", "soon"), ("budget.zz", 1), ("jobs.0.cpus", -1), ("jobs.0.retries", 1000),
    ("jobs.0.env", ["A"]), ("jobs.1.cpus", -1), ("jobs.1.retries", -5), ("jobs.1.env", 5),
    ("jobs.0.name", "a/b"), ("jobs.1.run", 5), ("zz", 1), ("jobs.0.zz", 1), ("jobs.1.zz", 1),
]


def _position(doc: Any, field: str) -> tuple[int, ...]:
    out = []
    for part in field.split("."):
        if isinstance(doc, dict):
            out.append(list(doc).index(part))
            doc = doc[part]
        else:
            out.append(int(part))
            doc = doc[int(part)]
    return tuple(out)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from(range(len(INDEPENDENT))), min_size=1, unique=True), st.randoms())
def test_any_set_of_problems_is_counted_and_shown_in_order(picked: list[int], rnd: Any) -> None:
    doc = make_spec(notify="echo", replaces="x@abcdef")
    doc = {k: doc[k] for k in rnd.sample(list(doc), len(doc))}  # any order of the top-level keys
    for i in picked:
        doc = put(doc, *INDEPENDENT[i])
    msg = spec_line(doc)
    fields = sorted((INDEPENDENT[i][0] for i in picked), key=lambda f: _position(doc, f))
    if len(picked) == 1:
        assert msg.startswith(f"f.toml: {fields[0]}: ") and " problems: " not in msg
        return
    m = re.fullmatch(r"f\.toml: (\d+) problems: (.*?)(; and (\d+) more)?", msg)
    assert m, msg
    assert int(m.group(1)) == len(picked)
    shown = [p.split(": ", 1)[0] for p in m.group(2).split("; ")]
    assert shown == fields[:MAX_PROBLEMS]
    assert int(m.group(4) or 0) == max(0, len(picked) - MAX_PROBLEMS)


# -- did you mean --------------------------------------------------------------------------

MEANT = [
    # (model, the document with the right key taken out and the wrong one put in, the line)
    (ProjectSpec, put(drop(make_spec(), "name"), "nmae", "x"), "f.toml: nmae: unknown key (did you mean name?)"),
    (ProjectSpec, put(drop(make_spec(), "budget.gpus"), "budget.GPUS", 8),
     "f.toml: budget.GPUS: unknown key (did you mean gpus?)"),
    (ProjectSpec, put(drop(make_spec(), "budget.gpu_hours"), "budget.gpu_hourz", 96),
     "f.toml: budget.gpu_hourz: unknown key (did you mean gpu_hours?)"),
    (ProjectSpec, put(make_spec(), "jobs.1.retry", 1), "f.toml: jobs.1.retry: unknown key (did you mean retries?)"),
    (ProjectSpec, put(make_spec(), "code", {"excludes": ["x"]}), "f.toml: code.excludes: unknown key (did you mean exclude?)"),
    (ClusterConfig, put(make_cluster(), "policy", {"grace": 5}),
     "cluster.toml: policy.grace: unknown key (did you mean grace_s?)"),
    (ClusterConfig, put(drop(make_cluster(), "pools.0.gpus_per_node"), "pools.0.gpu_per_node", 8),
     "cluster.toml: pools.0.gpu_per_node: unknown key (did you mean gpus_per_node?)"),
    (ClusterConfig, put(drop(make_cluster(), "admins"), "admin", ["x"]),
     "cluster.toml: admin: unknown key (did you mean admins?)"),
    # nothing close, or the close one is there already: no guess
    (ProjectSpec, put(make_spec(), "colour", "red"), "f.toml: colour: unknown key"),
    (ProjectSpec, put(make_spec(), "budget.gpu", 8), "f.toml: budget.gpu: unknown key"),
    (ProjectSpec, put(make_spec(), "nmae", "x"), "f.toml: nmae: unknown key"),
]


@pytest.mark.parametrize(("model", "doc", "expected"), MEANT, ids=[m[2].split(": ", 2)[1] for m in MEANT])
def test_did_you_mean(model: type, doc: dict[str, Any], expected: str) -> None:
    assert line(model, doc, expected.split(":")[0]) == expected


# -- wrong types in the cluster file -------------------------------------------------------

CLUSTER_TYPES = [
    ("teams.0.members", "root", 'teams.0.members: must be a list of user names, got a string "root"'),
    ("admins", "root", 'admins: must be a list of user names, got a string "root"'),
    ("policy.pass_env", "PATH", 'policy.pass_env: must be a list of environment variable names, got a string "PATH"'),
    ("pools", "h100", 'pools: must be a list of tables, got a string "h100"'),
    ("teams", {"name": "x"}, "teams: must be a list of tables, got a table"),
    ("policy", 5, "policy: must be a table of keys, got the number 5"),
    ("pools.0.name", 5, "pools.0.name: must be a string, got the number 5"),
    ("teams.0.members", ["alice", 7], "teams.0.members.1: must be a string, got the number 7"),
    ("teams.0.period", "weekly", "teams.0.period: must be 'month', 'quarter', 'year' or 'none', got a string \"weekly\""),
    ("policy.lend_idle", "yes", "policy.lend_idle: must be true or false"),
    ("teams.0.allowance_gpu_hours", "lots", "teams.0.allowance_gpu_hours: must be a number"),
    ("teams.0.members", "x" * 100, 'must be a list of user names, got a string "' + "x" * 40 + '…"'),
]


@pytest.mark.parametrize(("field", "value", "words"), CLUSTER_TYPES, ids=[c[0] for c in CLUSTER_TYPES])
def test_a_cluster_file_with_a_wrong_type(field: str, value: Any, words: str) -> None:
    msg = cluster_line(put(make_cluster(), field, value))
    assert msg.startswith("cluster.toml: ") and words in msg, msg
    assert "Input should" not in msg and "valid tuple" not in msg


def test_the_issue_example_through_a_file(tmp_path: Path) -> None:
    doc = put(make_cluster(), "teams.0.members", "root")
    path = tmp_path / "cluster.toml"
    path.write_text(to_toml(doc))
    with pytest.raises(BadInput) as e:
        load_cluster(path)
    assert e.value.message == f'{path}: teams.0.members: must be a list of user names, got a string "root"'


# -- syntax errors -------------------------------------------------------------------------

SYNTAX = [
    ("toml", 'name = "x"\nteam = = "t"\n', "not valid TOML: line 2, column 8: invalid value"),
    ("toml", 'name = "x\n', "not valid TOML: line 1, column 10: "),
    ("toml", 'name = "x"\nname = "y"\n', "not valid TOML: "),
    ("json", '{"name": "x",\n "team": }', "not valid JSON: line 2, column 10: expecting value"),
    ("json", '\n\n{"name" "x"}', "not valid JSON: line 3, column 9: expecting ':' delimiter"),
    ("yaml", "name: x\nbudget:\n  gpus: 8\n pool: h100\n", "not valid YAML: line 4, column 2: "),
    ("yaml", 'name: "x\n', "not valid YAML: line 2, column 1: found unexpected end of stream "
                          "(while scanning a quoted scalar from line 1)"),
    ("yaml", "name: x\nteam: [a, b\n", "not valid YAML: line 3, column 1: "),
    ("yaml", "name: x\n\tteam: t\n", "not valid YAML: line 2, column 1: found character '\\t' that cannot start"),
    ("yaml", "name: x\nteam: a\x00b\n", "not valid YAML: line 2, column 8: unacceptable character #x0000"),
    ("yaml", "a: 1\n---\nb: 2\n", "not valid YAML: line 2, column 1: but found another document"),
    ("yaml", "a: *nope\n", "not valid YAML: line 1, column 4: found undefined alias"),
]


@pytest.mark.parametrize(("kind", "text", "words"), SYNTAX, ids=[f"{k}: {t[:20]!r}" for k, t, _ in SYNTAX])
def test_syntax_errors_give_the_line_and_column(kind: str, text: str, words: str) -> None:
    with pytest.raises(BadInput) as e:
        parse_document(text, kind, f"spec.{kind}")
    msg = e.value.message
    assert msg.startswith(f"spec.{kind}: {words}"), msg
    assert "\n" not in msg and "<unicode string>" not in msg


# -- a byte order mark ---------------------------------------------------------------------

BOM = "\ufeff".encode()


def _texts(doc: dict[str, Any]) -> dict[str, str]:
    import yaml

    return {".toml": to_toml(doc), ".json": json.dumps(doc), ".yaml": yaml.safe_dump(doc), ".yml": yaml.safe_dump(doc)}


def test_a_byte_order_mark_is_accepted_and_changes_nothing(tmp_path: Path) -> None:
    doc = make_spec()
    for suffix, text in _texts(doc).items():
        plain, marked = tmp_path / f"plain{suffix}", tmp_path / f"marked{suffix}"
        plain.write_bytes(text.encode())
        marked.write_bytes(BOM + text.encode())
        assert digest(load_spec(marked)) == digest(load_spec(plain)), suffix
        # the text as the server gets it (ops: the file's words, the BOM kept) reads the same
        as_text = validate(ProjectSpec, parse_document(marked.read_bytes().decode(), suffix[1:].replace("yml", "yaml"),
                                                        str(marked)), str(marked))
        assert digest(as_text) == digest(load_spec(plain))
    cluster = tmp_path / "cluster.toml"
    cluster.write_bytes(BOM + to_toml(make_cluster()).encode())
    assert load_cluster(cluster) == ClusterConfig.model_validate(make_cluster())


@pytest.mark.parametrize("content", [BOM, BOM + b"\n  \n"])
def test_a_byte_order_mark_alone_is_an_empty_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "spec.toml"
    path.write_bytes(content)
    with pytest.raises(BadInput) as e:
        load_spec(path)
    assert e.value.message == f"{path}: file is empty"


def test_a_second_byte_order_mark_is_text_and_named(tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    path.write_bytes(BOM + BOM + json.dumps(make_spec()).encode())
    with pytest.raises(BadInput) as e:
        load_spec(path)
    assert e.value.message.startswith(f"{path}: not valid JSON: line 1, column 1: ")


def test_file_names_stay_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "a\nb.toml"
    path.write_text(to_toml(put(make_spec(), "budget.gpus", 0)))
    with pytest.raises(BadInput) as e:
        load_spec(path)
    assert e.value.message == f"{tmp_path}/a b.toml: budget.gpus: must be greater than or equal to 1"
