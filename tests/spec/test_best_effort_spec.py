"""Best-effort specs (docs/specs.md, "Best-effort work"): ``kind`` and ``count`` in the seal
only when they say something, so every older spec keeps its digest; what a best-effort spec
may not say, one line naming each field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from spec_builders import make_job, make_spec, put

from cellsched.errors import BadInput
from cellsched.spec.load import validate
from cellsched.spec.models import ProjectSpec
from cellsched.spec.seal import canonical_json, digest, from_canonical


def sweep(**fields: Any) -> dict[str, Any]:
    """The issue's lr-sweep: 64 one-GPU trials, best-effort."""
    doc = make_spec(name="lr-sweep", team="evals", kind="best-effort",
                    budget={"gpu_hours": 200, "gpus": 1}, jobs=[make_job("trial", gpus=1, count=64)])
    doc.update(fields)
    return doc


def spec(doc: dict[str, Any]) -> ProjectSpec:
    return validate(ProjectSpec, doc, "x")


def line(doc: dict[str, Any]) -> str:
    with pytest.raises(BadInput) as e:
        validate(ProjectSpec, doc, "f.toml")
    assert e.value.exit_code == 2 and "\n" not in e.value.message
    return e.value.message


def test_the_defaults_are_guaranteed_and_one_run_and_leave_the_seal_as_it_was() -> None:
    plain = make_spec()
    explicit = put(put(put(plain, "kind", "guaranteed"), "jobs.0.count", 1), "jobs.1.count", 1)
    s = spec(explicit)
    assert s.kind == "guaranteed" and not s.best_effort and [j.count for j in s.jobs] == [1, 1]
    assert canonical_json(s) == canonical_json(spec(plain))
    assert '"kind"' not in canonical_json(s) and '"count"' not in canonical_json(s)


def test_kind_and_count_are_sealed_when_they_say_something() -> None:
    s = spec(sweep())
    data = json.loads(canonical_json(s))
    assert data["kind"] == "best-effort" and data["jobs"][0]["count"] == 64
    assert digest(s) != digest(spec(put(sweep(), "jobs.0.count", 63)))
    assert digest(s) != digest(spec(put(sweep(), "jobs.0.count", 1)))
    one = spec(put(sweep(), "jobs.0.count", 1))
    assert "count" not in json.loads(canonical_json(one))["jobs"][0]
    assert from_canonical(canonical_json(s)) == s and digest(from_canonical(canonical_json(s))) == digest(s)


def test_tasks_are_each_job_count_times_in_order() -> None:
    s = spec(sweep(jobs=[make_job("a", count=2), make_job("b")]))
    assert [(j.name, i) for j, i in s.tasks()] == [("a", 0), ("a", 1), ("b", 0)]


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("count 0", put(sweep(), "jobs.0.count", 0), "f.toml: jobs.0.count: must be greater than or equal to 1"),
    ("count -3", put(sweep(), "jobs.0.count", -3), "f.toml: jobs.0.count: must be greater than or equal to 1"),
    ("count too many", put(sweep(), "jobs.0.count", 10_001),
     "f.toml: jobs.0.count: must be less than or equal to 10000"),
    ("count 2.0", put(sweep(), "jobs.0.count", 2.0), "f.toml: jobs.0.count: must be a whole number"),
    ("deadline", put(sweep(), "budget.deadline", "2027-01-01T00:00:00Z"),
     "f.toml: budget.deadline: best-effort work has no window (it runs on idle GPUs when there are some)"),
    ("not_before", put(sweep(), "budget.not_before", "2027-01-01T00:00:00Z"),
     "f.toml: budget.not_before: best-effort work has no window (it runs on idle GPUs when there are some)"),
    ("replaces", sweep(replaces="lr-sweep@0123456789ab"),
     "f.toml: replaces: best-effort work has no window to replace (cancel the old submission, then submit this one)"),
    ("after", sweep(jobs=[make_job("a"), make_job("b", after=["a"])]),
     "f.toml: jobs.1.after: best-effort tasks are independent, so no after (submit a later step as its own spec)"),
    ("replaces another project", make_spec(replaces="other@abcdef123456"),
     "f.toml: replaces: 'other@abcdef123456' names another project (this one is 'pythia-ablation'; "
     "a new version keeps its name)"),
    ("count on guaranteed", put(make_spec(), "jobs.1.count", 4),
     'f.toml: jobs.1.count: only best-effort work runs a job several times (kind = "best-effort")'),
    ("unknown kind", sweep(kind="batch"), "f.toml: kind: must be 'guaranteed' or 'best-effort', got a string \"batch\""),
]


@pytest.mark.parametrize(("why", "doc", "expected"), BAD, ids=[b[0] for b in BAD])
def test_bad_best_effort_specs_are_one_line_naming_the_field(why: str, doc: dict[str, Any], expected: str) -> None:
    assert line(doc) == expected


def test_every_window_field_of_a_best_effort_spec_is_named_in_the_files_order() -> None:
    doc = put(put(sweep(), "budget.not_before", "2027-01-01"), "budget.deadline", "2027-02-01")
    assert line(doc) == (
        "f.toml: 2 problems: budget.not_before: best-effort work has no window (it runs on idle GPUs when there "
        "are some); budget.deadline: best-effort work has no window (it runs on idle GPUs when there are some)")


def test_the_examples_in_lending_md_are_real() -> None:
    import re
    from pathlib import Path

    from cellsched.spec.cluster import ClusterConfig
    from cellsched.spec.load import parse_document

    text = (Path(__file__).resolve().parents[2] / "docs" / "lending.md").read_text()
    spec_block, cluster_block = re.findall(r"```toml\n(.*?)```", text, re.S)[:2]
    s = validate(ProjectSpec, parse_document(spec_block, "toml", "lending.md"), "lending.md")
    assert s.best_effort and [(j.name, j.count, j.retries) for j in s.jobs] == [("trial", 64, 1)]
    cluster = parse_document(cluster_block, "toml", "cluster.toml")
    c = validate(ClusterConfig, {**cluster, "pools": [{"name": "h100", "gpu_type": "H100", "gpus": 8}]}, "c")
    assert c.team("evals").best_effort_gpu_hours == 400  # type: ignore[union-attr]
    assert (c.policy.lend_idle, c.policy.best_effort_rate, c.policy.lend_grace_s) == (True, 1.0, 30)
    doc = parse_document(spec_block, "toml", "sweep.toml")
    for bad in (put(doc, "budget.deadline", "2027-01-01T00:00:00Z"), put(doc, "jobs.0.count", 0)):
        with pytest.raises(BadInput) as e:
            validate(ProjectSpec, bad, "sweep.toml")
        assert f"cellsched: {e.value.message}\n" in text
