"""The docs are tested like code: their examples load, their numbers are the real ones, and
every field the models accept is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from cellsched.errors import BadInput
from cellsched.ledger.tables import SCHEMA_VERSION
from cellsched.spec.cluster import ClusterConfig, Policy, Pool, Team
from cellsched.spec.load import parse_document, validate
from cellsched.spec.models import Budget, Code, Job, ProjectSpec
from cellsched.spec.seal import canonical_json, digest, project_id

DOCS = Path(__file__).resolve().parents[2] / "docs"


def doc(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def complete_example() -> ProjectSpec:
    return validate(ProjectSpec, parse_document(blocks(doc("specs.md"), "toml")[0], "toml", "docs/specs.md"),
                    "docs/specs.md")


def test_the_complete_example_in_specs_md_validates() -> None:
    spec = complete_example()
    assert len(spec.jobs) >= 2 and spec.budget.not_before and spec.budget.deadline and spec.notify


def test_the_yaml_version_has_the_same_digest() -> None:
    (yaml_text,) = blocks(doc("specs.md"), "yaml")
    as_yaml = validate(ProjectSpec, parse_document(yaml_text, "yaml", "docs/specs.md"), "docs/specs.md")
    assert digest(as_yaml) == digest(complete_example())


def test_the_canonical_json_and_id_shown_are_the_real_ones() -> None:
    text = doc("specs.md")
    spec = complete_example()
    assert canonical_json(spec) in blocks(text, "text")[0]
    assert f"`{project_id(spec)}`" in text
    assert f'replaces = "{project_id(spec)}"' in text


def test_the_error_lines_shown_are_the_real_ones() -> None:
    text = doc("specs.md")
    example = blocks(text, "toml")[0]
    yaml_example = blocks(text, "yaml")[0]
    bad = example.replace("gpus = 8                                  #", "gpus = 0  #")
    cases = {
        "bad.toml": bad,
        "typo.toml": example.replace("gpu_hours = 96", "gpu_hourz = 96"),
        "many.toml": bad.replace("cpus = 4", "cpu = 4").replace("retries = 1", "retries = -1")
                        .replace('owner = "alice"', 'owner = ["alice"]'),
        "broken.yaml": yaml_example.replace("  pool: h100", " pool: h100"),
    }
    for name, body in cases.items():
        with pytest.raises(BadInput) as e:
            validate(ProjectSpec, parse_document(body, name.split(".")[1], name), name)
        assert f"cellsched: {e.value.message}\n" in text, e.value.message
    cluster = parse_document(blocks(doc("cluster.md"), "toml")[0], "toml", "cluster.toml")
    cluster["teams"][0]["members"] = "root"
    with pytest.raises(BadInput) as e:
        validate(ClusterConfig, cluster, "cluster.toml")
    assert f"`cellsched: {e.value.message}`" in text, e.value.message
    looped = {**parse_document(example, "toml", "loop.yaml")}
    looped["jobs"][0]["after"] = ["probe"]
    with pytest.raises(BadInput) as e:
        validate(ProjectSpec, looped, "loop.yaml")
    assert f"cellsched: {e.value.message}\n" in text


def documented(text: str, *models: type[BaseModel]) -> list[str]:
    return [f"{m.__name__}.{f}" for m in models for f in m.model_fields if f"`{f}`" not in text]


def test_every_spec_field_is_documented() -> None:
    assert documented(doc("specs.md"), ProjectSpec, Budget, Job, Code) == []


def test_every_cluster_field_is_documented_and_the_example_validates() -> None:
    text = doc("cluster.md")
    assert documented(text, ClusterConfig, Pool, Team, Policy) == []
    (example,) = blocks(text, "toml")
    cluster = validate(ClusterConfig, parse_document(example, "toml", "docs/cluster.md"), "docs/cluster.md")
    assert {t.period for t in cluster.teams} >= {"month", "quarter", "none"}
    for period in ("month", "quarter", "year", "none"):
        assert f"`{period}`" in text


def test_the_ledger_doc_names_what_is_real() -> None:
    text = doc("ledger.md")
    for word in ("--db", "CELLSCHED_DB", "cellsched.db", "postgresql+psycopg://", "cs_event", "cs_project",
                 "cs_grant", "cs_job_run", "cs_schema", f"(currently {SCHEMA_VERSION})", "cellsched audit"):
        assert word in text, word


def test_the_code_examples_in_specs_md_validate() -> None:
    examples = [b for b in blocks(doc("specs.md"), "toml") if "code" in b and "[[jobs]]" not in b]
    assert len(examples) >= 2
    for text in examples:
        code = parse_document(text, "toml", "docs/specs.md")["code"]
        validate(Code, code, "docs/specs.md")
