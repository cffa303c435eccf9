"""Whatever a file holds, loading it gives a valid spec or one clean BadInput line —
never another exception, never a traceback for the user."""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spec_builders import make_cluster, make_spec, to_toml

from cellsched.errors import BadInput
from cellsched.spec.cluster import ClusterConfig
from cellsched.spec.load import SUFFIXES, load_cluster, load_spec, parse_document, validate
from cellsched.spec.models import ProjectSpec

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def outcome(fn: Any, *args: Any) -> Any:
    """Run the loader; anything but a model or a one-line BadInput fails the test."""
    try:
        result = fn(*args)
    except BadInput as e:
        assert e.message and "\n" not in e.message and "Traceback" not in e.message, e.message
        assert e.exit_code == 2
        return e
    assert isinstance(result, (ProjectSpec, ClusterConfig)), type(result)
    return result


def parse_and_validate(text: str, kind: str, model: type) -> Any:
    return validate(model, parse_document(text, kind, "f"), "f")


SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
           | st.datetimes(timezones=st.none() | st.timezones()) | st.dates() | st.times())
KEYS = st.sampled_from(["name", "team", "owner", "problem", "budget", "jobs", "gpu_hours", "gpus", "pool",
                        "gpu_type", "not_before", "deadline", "run", "after", "env", "cpus", "retries",
                        "replaces", "notify", "pools", "teams", "policy", "members", "period"]) | st.text(max_size=8)
JSONISH = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(KEYS, inner, max_size=5), max_leaves=25)


def mutate(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """``base`` with one value somewhere inside replaced by an arbitrary one: reaches the
    deep validators that a random document never gets to."""

    def paths(v: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        out = [here] if here else []
        if isinstance(v, dict):
            for k, x in v.items():
                out += paths(x, (*here, k))
        elif isinstance(v, list):
            for i, x in enumerate(v):
                out += paths(x, (*here, i))
        return out

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        doc = json.loads(json.dumps(base))
        for _ in range(draw(st.integers(1, 3))):
            path = draw(st.sampled_from(paths(doc)))
            node = doc
            for k in path[:-1]:
                node = node[k]
            if draw(st.booleans()) and isinstance(node, dict):
                node[draw(KEYS)] = draw(JSONISH)
            else:
                node[path[-1]] = draw(JSONISH)
        return doc

    return build()


@FUZZ
@given(st.text(max_size=400), st.sampled_from(["toml", "yaml", "json"]))
def test_arbitrary_text(text: str, kind: str) -> None:
    outcome(parse_and_validate, text, kind, ProjectSpec)
    outcome(parse_and_validate, text, kind, ClusterConfig)


# Text that looks like a spec, so the parsers get past the first character.
SPECLIKE = st.lists(st.sampled_from([
    'name = "a"', 'team = "t"', 'owner = "o"', 'problem = "p"', "[budget]", "gpu_hours = 1", "gpus = 1",
    "gpus = 0", 'not_before = 2026-12-01T00:00:00+01:00', "deadline = 2026-12-01", "[[jobs]]", 'name = "j"',
    'run = ["x"]', 'run = "x"', 'after = ["j"]', "env = { A = '1' }", "name: a", "team: t", "budget:",
    "  gpus: 2", "  gpu_hours: 1e400", "jobs:", "  - name: j", "    run: [x]", "    after: j",
    "- 1", "{", "}", '"', "&a x", "*a", "!!binary aGk=", "!!python/object:os.system", "? [a]", "---",
    "\x00", "\ufeff", "\t", "12:00:00",
]), max_size=20).map("\n".join)


@FUZZ
@given(SPECLIKE, st.sampled_from(["toml", "yaml", "json"]))
def test_speclike_text(text: str, kind: str) -> None:
    outcome(parse_and_validate, text, kind, ProjectSpec)


@FUZZ
@given(JSONISH)
def test_arbitrary_json_like_values(value: Any) -> None:
    doc = value if isinstance(value, dict) else {"name": value}
    outcome(validate, ProjectSpec, doc, "f")
    outcome(validate, ClusterConfig, doc, "f")


@FUZZ
@given(mutate(make_spec(budget={"gpu_hours": 96, "gpus": 8, "pool": "h100",
                                "not_before": "2026-12-01T00:00:00Z", "deadline": "2027-01-01T00:00:00Z"},
                        notify="echo", replaces="x@abcdef")))
def test_a_valid_spec_with_arbitrary_values_inside(doc: dict[str, Any]) -> None:
    outcome(validate, ProjectSpec, doc, "f")


@FUZZ
@given(mutate(make_cluster(policy={"max_grant_hours": 336, "min_notice_s": 0, "grace_s": 60,
                                   "horizon_days": 366, "lend_idle": False})))
def test_a_valid_cluster_with_arbitrary_values_inside(doc: dict[str, Any]) -> None:
    outcome(validate, ClusterConfig, doc, "f")


def _writable(doc: Any) -> Any:
    """For YAML/JSON files: times as text (what a hand-written file holds)."""
    if isinstance(doc, dict):
        return {str(k): _writable(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_writable(v) for v in doc]
    if isinstance(doc, (dt.date, dt.time)):
        return doc.isoformat()
    return doc


@pytest.fixture(scope="module")
def scratch() -> Any:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


@FUZZ
@given(content=st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode("utf-8"))
       | SPECLIKE.map(lambda t: t.encode("utf-8")),
       suffix=st.sampled_from(sorted(SUFFIXES)))
def test_load_spec_on_files_of_each_suffix(scratch: Path, content: bytes, suffix: str) -> None:
    path = scratch / f"spec{suffix}"
    path.write_bytes(content)
    result = outcome(load_spec, path)
    if isinstance(result, BadInput):
        assert result.message.startswith(f"{path}: ")
    outcome(load_cluster, path)


@FUZZ
@given(doc=mutate(make_spec()), suffix=st.sampled_from(sorted(SUFFIXES)))
def test_load_spec_on_near_valid_files(scratch: Path, doc: dict[str, Any], suffix: str) -> None:
    import yaml

    path = scratch / f"near{suffix}"
    try:
        if suffix == ".toml":
            text = to_toml(doc)
        elif suffix == ".json":
            text = json.dumps(_writable(doc))
        else:
            text = yaml.safe_dump(_writable(doc), allow_unicode=True)
    except (TypeError, ValueError):
        return  # our little TOML writer cannot express it (e.g. null in a list)
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    result = outcome(load_spec, path)
    if isinstance(result, BadInput):
        assert result.message.startswith(f"{path}: ")
