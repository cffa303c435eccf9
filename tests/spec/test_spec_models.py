"""Project spec validation: one row per rule in issue 3, each naming the field it blames."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from pydantic import ValidationError
from spec_builders import drop, make_job, make_spec, put

from cellsched.errors import BadInput
from cellsched.spec.load import validate
from cellsched.spec.models import NAME_MAX, ProjectSpec, find_cycle

UTC = dt.timezone.utc


def ok(doc: dict[str, Any]) -> ProjectSpec:
    return validate(ProjectSpec, doc, "x.toml")


def bad(doc: dict[str, Any]) -> str:
    with pytest.raises(BadInput) as e:
        validate(ProjectSpec, doc, "x.toml")
    msg = e.value.message
    assert "\n" not in msg and e.value.exit_code == 2
    return msg


def test_a_small_spec_is_valid_and_in_integer_units() -> None:
    s = ok(make_spec(budget={"gpu_hours": 96, "gpus": 8, "pool": "h100",
                             "not_before": "2026-12-01T00:00:00Z", "deadline": "2026-12-03T00:00:00Z"}))
    assert s.budget.gpu_seconds == 96 * 3600
    assert s.budget.duration_s == 12 * 3600
    assert s.budget.not_before_s == int(dt.datetime(2026, 12, 1, tzinfo=UTC).timestamp())
    assert s.budget.deadline_s == s.budget.not_before_s + 2 * 86400
    assert all(isinstance(v, int) for v in (s.budget.gpu_seconds, s.budget.duration_s,
                                              s.budget.not_before_s, s.budget.deadline_s))
    assert [j.name for j in s.jobs] == ["ablate", "probe"]
    assert s.jobs[1].after == ("ablate",)
    assert (s.jobs[1].cpus, s.jobs[1].retries, s.jobs[1].env) == (0, 0, {})


@pytest.mark.parametrize(("gpu_hours", "gpus", "seconds", "duration"), [
    (96, 8, 345_600, 43_200),
    (1.5, 1, 5_400, 5_400),
    (1, 7, 3_600, 515),            # 514.28… rounded up: a window never falls short
    (1 / 3600, 1, 1, 1),           # one GPU-second is the smallest budget
    (0.0002, 1, 1, 1),             # 0.72 GPU-seconds rounds to a whole one
])
def test_gpu_hours_become_integer_gpu_seconds(gpu_hours: float, gpus: int, seconds: int, duration: int) -> None:
    b = ok(make_spec(budget={"gpu_hours": gpu_hours, "gpus": gpus},
                     jobs=[make_job("a", gpus=1)])).budget
    assert (b.gpu_seconds, b.duration_s) == (seconds, duration)
    assert b.duration_s * gpus >= b.gpu_seconds


BAD_NAMES = [
    ("", "must not be empty"),
    ("a/b", "no '/'"),
    ("/etc", "no '/'"),
    ("..", "'..'"),
    ("a..b", "'..'"),
    ("../etc/passwd", "'..'"),
    ("a b", "spaces"),
    (" a", "spaces"),
    ("a\tb", "control"),
    ("a\x00b", "control"),
    ("a\x1bb", "control"),
    ("a\x7f", "control"),
    ("abc\n", "control"),         # a trailing newline must not slip past a `$` anchor
    ("-rf", "starting with a letter or digit"),
    (".hidden", "starting with a letter or digit"),
    ("naïve", "letters, digits"),
    ("a\\b", "letters, digits"),
    ("a:b", "letters, digits"),
    ("x" * (NAME_MAX + 1), f"at most {NAME_MAX} characters"),
]
NAME_FIELDS = ["name", "team", "jobs.0.name", "budget.pool"]


@pytest.mark.parametrize("field", NAME_FIELDS)
@pytest.mark.parametrize(("value", "why"), BAD_NAMES, ids=[repr(v)[:20] for v, _ in BAD_NAMES])
def test_names_are_safe_identifiers(field: str, value: str, why: str) -> None:
    msg = bad(put(make_spec(), field, value))
    assert msg.startswith(f"x.toml: {field}: ")
    assert why in msg


def test_after_names_are_checked_like_names() -> None:
    assert bad(put(make_spec(), "jobs.1.after", ["../ablate"])).startswith("x.toml: jobs.1.after.0: ")


@pytest.mark.parametrize("value", ["a", "A-1", "v1.2_final", "x" * NAME_MAX, "0day"])
def test_good_names(value: str) -> None:
    assert ok(put(make_spec(), "name", value)).name == value


# (field, value, field the message must name, words it must contain)
INVALID: list[tuple[str, Any, str, str]] = [
    # GPUs: at least one, whole numbers, a job never wider than the budget
    ("budget.gpus", 0, "budget.gpus", "greater than or equal to 1"),
    ("budget.gpus", -8, "budget.gpus", "greater than or equal to 1"),
    ("budget.gpus", 2.5, "budget.gpus", "whole number"),
    ("budget.gpus", 8.0, "budget.gpus", "whole number"),
    ("budget.gpus", "8", "budget.gpus", "whole number"),
    ("budget.gpus", True, "budget.gpus", "whole number"),
    ("budget.gpus", None, "budget.gpus", "whole number"),
    ("budget.gpus", 10**400, "budget.gpus", "less than or equal"),
    ("jobs.0.gpus", 0, "jobs.0.gpus", "greater than or equal to 1"),
    ("jobs.0.gpus", -1, "jobs.0.gpus", "greater than or equal to 1"),
    ("jobs.0.gpus", 9, "jobs.0.gpus", "more than budget.gpus = 8"),
    ("jobs.0.cpus", -1, "jobs.0.cpus", "greater than or equal to 0"),
    ("jobs.0.retries", -1, "jobs.0.retries", "greater than or equal to 0"),
    ("jobs.0.retries", "2", "jobs.0.retries", "whole number"),
    # GPU-hours: positive, finite, a number, at least one GPU-second
    ("budget.gpu_hours", 0, "budget.gpu_hours", "greater than 0"),
    ("budget.gpu_hours", -1, "budget.gpu_hours", "greater than 0"),
    ("budget.gpu_hours", 0.0001, "budget.gpu_hours", "one GPU-second"),
    ("budget.gpu_hours", float("nan"), "budget.gpu_hours", "finite"),
    ("budget.gpu_hours", float("inf"), "budget.gpu_hours", "finite"),
    ("budget.gpu_hours", "96", "budget.gpu_hours", "number"),
    ("budget.gpu_hours", True, "budget.gpu_hours", "number"),
    ("budget.gpu_hours", 10**400, "budget.gpu_hours", ""),
    ("budget.gpu_hours", 10**8, "budget.gpu_hours", "less than or equal"),
    # where
    ("budget.gpu_type", "H100", "budget.pool", "not both"),
    ("budget.gpu_type", "", "budget.gpu_type", "at least 1 character"),
    # times: a time, whole seconds, in range
    ("budget.deadline", "tomorrow", "budget.deadline", "must be a time"),
    ("budget.deadline", 1_700_000_000, "budget.deadline", "must be a time"),
    ("budget.deadline", True, "budget.deadline", "must be a time"),
    ("budget.deadline", "12:00:00", "budget.deadline", "must be a time"),
    ("budget.deadline", dt.time(12), "budget.deadline", "must be a time"),
    ("budget.deadline", "2026-12-01T00:00:00.5Z", "budget.deadline", "whole seconds"),
    ("budget.not_before", "0001-01-01T00:00:00+01:00", "budget.not_before", "out of range"),
    ("budget.deadline", "9999-12-31T23:00:00-05:00", "budget.deadline", "out of range"),
    # jobs: commands, env, after
    ("jobs.0.run", [], "jobs.0.run", "must be a command"),
    ("jobs.0.run", "", "jobs.0.run", "must be a command"),
    ("jobs.0.run", "  ", "jobs.0.run", "must be a command"),
    ("jobs.0.run", ["", "x"], "jobs.0.run", "must be a command"),
    ("jobs.0.run", 42, "jobs.0.run", "must be a command"),
    ("jobs.0.run", {"cmd": "x"}, "jobs.0.run", "must be a command"),
    ("jobs.0.run", ["python3", 3], "jobs.0.run", "must be a command"),
    ("owner", "a\x00b", "owner", "NUL"),
    ("problem", "why\x00", "problem", "NUL"),
    ("notify", "mail \x00", "notify", "NUL"),
    ("jobs.0.run", "echo \x00", "jobs.0.run", "NUL"),
    ("jobs.0.run", ["echo", "a\x00"], "jobs.0.run", "NUL"),
    ("jobs.0.env", {"1BAD": "x"}, "jobs.0.env", "not an environment variable name"),
    ("jobs.0.env", {"A B": "x"}, "jobs.0.env", "not an environment variable name"),
    ("jobs.0.env", {"PATH\n": "x"}, "jobs.0.env", "not an environment variable name"),
    ("jobs.0.env", {"A": "x\x00"}, "jobs.0.env.A", "NUL"),
    ("jobs.0.env", {"A": 1}, "jobs.0.env.A", "must be a string, got the number 1"),
    ("jobs.0.env", ["A=1"], "jobs.0.env", "must be a table of keys, got a list"),
    ("jobs.1.after", ["nope"], "jobs.1.after", "no job named 'nope'"),
    ("jobs.1.after", ["probe"], "jobs.1.after", "cannot wait for itself"),
    ("jobs.1.after", [1], "jobs.1.after.0", "must be a string, got the number 1"),
    ("jobs", [], "jobs", "at least 1 item"),
    ("jobs", {"a": 1}, "jobs", "must be a list of tables, got a table"),
    ("jobs.1.name", "ablate", "2 problems: jobs.1.name", "duplicate job name 'ablate'; jobs.1.after: 'ablate' cannot wait for itself"),
    # the rest of the spec
    ("owner", "", "owner", "at least 1 character"),
    ("owner", 7, "owner", "must be a string, got the number 7"),
    ("problem", "", "problem", "at least 1 character"),
    ("problem", "x" * 8001, "problem", "at most 8000 characters"),
    ("replaces", "pythia-ablation", "replaces", "pattern"),
    ("replaces", "pythia-ablation@XYZ123", "replaces", "pattern"),
    ("replaces", "../x@abcdef", "replaces", "pattern"),
    ("replaces", "x@abcdef\n", "replaces", "pattern"),
    ("notify", "", "notify", "at least 1 character"),
    ("budget", 96, "budget", "must be a table of keys, got the number 96"),
]


@pytest.mark.parametrize(("field", "value", "named", "words"), INVALID,
                         ids=[f"{f}={v!r}"[:40] for f, v, _, _ in INVALID])
def test_invalid_field(field: str, value: Any, named: str, words: str) -> None:
    msg = bad(put(make_spec(), field, value))
    assert msg.startswith(f"x.toml: {named}: "), msg
    assert words in msg


# (where, unknown key)
@pytest.mark.parametrize("where", ["", "budget.", "jobs.0."])
def test_unknown_keys_are_errors(where: str) -> None:
    assert bad(put(make_spec(), f"{where}colour", "red")) == f"x.toml: {where}colour: unknown key"


@pytest.mark.parametrize("field", ["name", "team", "owner", "problem", "budget", "jobs",
                                   "budget.gpu_hours", "budget.gpus", "jobs.0.name", "jobs.0.run"])
def test_required_keys(field: str) -> None:
    assert bad(drop(make_spec(), field)) == f"x.toml: {field}: required key is missing"


def test_optional_keys_have_defaults() -> None:
    s = ok({"name": "p", "team": "t", "owner": "o", "problem": "x",
            "budget": {"gpu_hours": 1, "gpus": 1}, "jobs": [{"name": "a", "run": "true"}]})
    b, j = s.budget, s.jobs[0]
    assert (b.pool, b.gpu_type, b.not_before, b.deadline) == (None, None, None, None)
    assert (j.gpus, j.cpus, j.after, j.retries, j.env) == (1, 0, (), 0, {})
    assert (s.replaces, s.notify) == (None, None)


@pytest.mark.parametrize(("edges", "cycle"), [
    ({"a": ["b"], "b": ["a"]}, "a -> b -> a"),
    ({"a": ["c"], "b": ["a"], "c": ["b"]}, "a -> c -> b -> a"),
    ({"a": [], "b": ["a", "d"], "c": ["b"], "d": ["c"]}, "b -> d -> c -> b"),
])
def test_cyclic_after_is_an_error(edges: dict[str, list[str]], cycle: str) -> None:
    jobs = [make_job(n, gpus=1, after=deps) for n, deps in edges.items()]
    assert bad(make_spec(jobs=jobs)) == f"x.toml: jobs.after: cycle {cycle}"


def test_after_may_name_a_later_job_and_a_single_string() -> None:
    s = ok(make_spec(jobs=[make_job("b", gpus=1, after="a"), make_job("a", gpus=1)]))
    assert s.jobs[0].after == ("a",)
    assert [j.name for j in s.job_order()] == ["a", "b"]


def test_job_order_is_topological_with_ties_in_spec_order() -> None:
    jobs = [make_job("d", gpus=1, after=["b", "c"]), make_job("c", gpus=1, after=["a"]),
            make_job("b", gpus=1, after=["a"]), make_job("a", gpus=1), make_job("e", gpus=1)]
    assert [j.name for j in ok(make_spec(jobs=jobs)).job_order()] == ["a", "c", "b", "d", "e"]


def test_find_cycle() -> None:
    assert find_cycle({"a": (), "b": ("a",)}) is None
    assert find_cycle({"a": ("a",)}) == ["a", "a"]


WINDOW = {"gpu_hours": 96, "gpus": 8}  # a 12-hour window


@pytest.mark.parametrize(("not_before", "deadline", "named", "words"), [
    ("2026-12-01T12:00:00Z", "2026-12-01T12:00:00Z", "budget.not_before", "before the deadline"),
    ("2026-12-02T00:00:00Z", "2026-12-01T00:00:00Z", "budget.not_before", "before the deadline"),
    ("2026-12-01T00:00:00Z", "2026-12-01T11:59:59Z", "budget.deadline", "window of 43199 s is shorter than gpu_hours / gpus = 43200 s"),
    ("2026-12-01T01:00:00+01:00", "2026-12-01T11:00:00Z", "budget.deadline", "window of 39600 s"),
])
def test_window_rules(not_before: str, deadline: str, named: str, words: str) -> None:
    msg = bad(put(make_spec(), "budget", {**WINDOW, "not_before": not_before, "deadline": deadline}))
    assert msg.startswith(f"x.toml: {named}: ") and words in msg


def test_a_window_exactly_long_enough_is_valid() -> None:
    b = ok(put(make_spec(), "budget", {**WINDOW, "not_before": "2026-12-01T00:00:00Z",
                                       "deadline": "2026-12-01T12:00:00Z"})).budget
    assert b.deadline_s - b.not_before_s == b.duration_s


def test_only_one_end_of_the_window_is_fine() -> None:
    assert ok(put(make_spec(), "budget.deadline", "2020-01-01T00:00:00Z")).budget.not_before is None
    assert ok(put(make_spec(), "budget.not_before", "2099-01-01T00:00:00Z")).budget.deadline is None


MIDNIGHT = dt.datetime(2026, 12, 1, tzinfo=UTC)


@pytest.mark.parametrize("value", [
    "2026-12-01T00:00:00Z",
    "2026-12-01T00:00:00z",
    "2026-12-01T00:00:00+00:00",
    "2026-12-01T01:00:00+01:00",
    "2026-11-30T19:00:00-05:00",
    "2026-12-01T05:30:00+05:30",
    "2026-12-01T00:00:00",          # no zone: UTC by rule
    "2026-12-01 00:00:00",
    "2026-12-01",                   # a date: its midnight, UTC
    "2026-12-01T00:00:00.000Z",     # zero fraction is still a whole second
    dt.datetime(2026, 12, 1),       # native TOML/YAML local date-time
    dt.datetime(2026, 12, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))),
    dt.date(2026, 12, 1),           # native TOML/YAML date
])
def test_time_notations_mean_the_same_instant_in_utc(value: Any) -> None:
    b = ok(put(make_spec(), "budget.not_before", value)).budget
    assert b.not_before == MIDNIGHT
    assert b.not_before.utcoffset() == dt.timedelta(0)
    assert b.not_before_s == 1_796_083_200


def test_specs_are_frozen() -> None:
    s = ok(make_spec())
    with pytest.raises(ValidationError):
        s.name = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        s.budget.gpus = 1  # type: ignore[misc]


def test_after_is_a_set_of_names() -> None:
    jobs = [make_job("a", gpus=1), make_job("b", gpus=1), make_job("c", gpus=1, after=["b", "a", "b"])]
    assert ok(make_spec(jobs=jobs)).jobs[2].after == ("a", "b")


def test_a_misspelt_key_is_named_with_the_key_it_should_have_been() -> None:
    doc = make_spec()
    doc["budget"] = {"gpu_hourz": 96, "gpus": 8}
    # gpu_hours is also missing, but that is the same problem: not a second one.
    assert bad(doc) == "x.toml: budget.gpu_hourz: unknown key (did you mean gpu_hours?)"
