"""Cluster config validation (``cluster.toml``): pools, teams, admins, policy."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from spec_builders import drop, make_cluster, put

from cellsched.errors import BadInput
from cellsched.spec.cluster import ClusterConfig
from cellsched.spec.load import load_cluster, validate


def bad(doc: dict[str, Any]) -> str:
    with pytest.raises(BadInput) as e:
        validate(ClusterConfig, doc, "cluster.toml")
    assert "\n" not in e.value.message
    return e.value.message


def test_a_small_cluster_is_valid() -> None:
    c = validate(ClusterConfig, make_cluster(), "cluster.toml")
    assert c.pool("h100") is not None and c.pool("h100").gpus == 16  # type: ignore[union-attr]
    assert c.pool("a100") is None and c.team("nobody") is None
    t = c.team("interp")
    assert t is not None
    assert (t.period, t.max_gpus, t.members) == ("month", None, ("alice",))
    assert t.allowance_gpu_seconds == 1500 * 3600 and isinstance(t.allowance_gpu_seconds, int)
    # no max_grant_hours: the longest grant is the horizon (366 days)
    assert (c.policy.min_notice_s, c.policy.grace_s, c.policy.lend_idle, c.policy.max_grant_s) == (0, 60, True, 366 * 86400)
    assert c.policy.pull_forward == "hold_when_busy"


def test_lending_defaults_lend_but_no_team_borrows_unless_given_an_allowance() -> None:
    c = validate(ClusterConfig, make_cluster(), "cluster.toml")
    assert (c.policy.lend_idle, c.policy.best_effort_rate, c.policy.lend_grace_s) == (True, 1.0, 30)
    assert c.teams[0].best_effort_gpu_hours == 0 and c.teams[0].best_effort_gpu_seconds == 0
    c = validate(ClusterConfig, put(put(put(make_cluster(), "teams.0.best_effort_gpu_hours", 2.5),
                                        "policy.best_effort_rate", 1.5), "policy.lend_grace_s", 0), "c")
    assert c.teams[0].best_effort_gpu_seconds == 9000 and isinstance(c.teams[0].best_effort_gpu_seconds, int)
    assert (c.policy.best_effort_rate, c.policy.lend_grace_s) == (1.5, 0)


def test_defaults() -> None:
    c = validate(ClusterConfig, {"pools": [{"name": "p", "gpu_type": "A100", "gpus": 8}]}, "c")
    assert (c.teams, c.admins, c.pools[0].gpus_per_node) == ((), (), 8)
    assert c.policy.horizon_days == 366


@pytest.mark.parametrize("period", ["month", "quarter", "year", "none"])
def test_periods(period: str) -> None:
    c = validate(ClusterConfig, put(make_cluster(), "teams.0.period", period), "c")
    assert c.teams[0].period == period


def test_policy_in_integer_seconds() -> None:
    p = validate(ClusterConfig, put(make_cluster(), "policy", {"max_grant_hours": 1.5}), "c").policy
    assert p.max_grant_s == 5400 and isinstance(p.max_grant_s, int)


INVALID: list[tuple[str, Any, str, str]] = [
    ("pools", [], "pools", "at least 1 item"),
    ("pools.0.gpus", 0, "pools.0.gpus", "greater than or equal to 1"),
    ("pools.0.gpus", -16, "pools.0.gpus", "greater than or equal to 1"),
    ("pools.0.gpus", "16", "pools.0.gpus", "whole number"),
    ("pools.0.gpus", 16.0, "pools.0.gpus", "whole number"),
    ("pools.0.gpus_per_node", True, "pools.0.gpus_per_node", "whole number"),
    ("teams.0.max_gpus", "8", "teams.0.max_gpus", "whole number"),
    ("policy.max_grant_hours", "336", "policy.max_grant_hours", "number"),
    ("policy.lend_idle", "true", "policy.lend_idle", "true or false"),
    ("policy.lend_idle", 1, "policy.lend_idle", "true or false"),
    ("policy.pull_forward", "later", "policy.pull_forward", "must be 'start_now', 'hold_oldest', 'hold_when_busy' or 'compact'"),
    ("pools.0.gpus_per_node", 0, "pools.0.gpus_per_node", "greater than or equal to 1"),
    ("pools.0.gpus_per_node", 32, "pools.0.gpus_per_node", "more than the pool's gpus"),
    ("pools.0.gpu_type", "", "pools.0.gpu_type", "at least 1 character"),
    ("pools.0.name", "h100/a", "pools.0.name", "no '/'"),
    ("pools.0.name", "../h100", "pools.0.name", "'..'"),
    ("pools.0.colour", "red", "pools.0.colour", "unknown key"),
    ("pools.1", {"name": "h100", "gpu_type": "H100", "gpus": 8}, "pools.1.name", "duplicate name 'h100'"),
    ("teams.0.name", "a team", "teams.0.name", "spaces"),
    ("teams.0.allowance_gpu_hours", -1, "teams.0.allowance_gpu_hours", "greater than or equal to 0"),
    ("teams.0.allowance_gpu_hours", "1500", "teams.0.allowance_gpu_hours", "number"),
    ("teams.0.allowance_gpu_hours", True, "teams.0.allowance_gpu_hours", "number"),
    ("teams.0.period", "week", "teams.0.period", "'month', 'quarter', 'year' or 'none'"),
    ("teams.0.max_gpus", 0, "teams.0.max_gpus", "greater than or equal to 1"),
    ("teams.0.members", "alice", "teams.0.members", "must be a list of user names, got a string \"alice\""),
    ("teams.0.budget", 1, "teams.0.budget", "unknown key"),
    ("teams.1", {"name": "interp", "allowance_gpu_hours": 1}, "teams.1.name", "duplicate name 'interp'"),
    ("admins", "root", "admins", "must be a list of user names, got a string \"root\""),
    ("policy.grace_s", -1, "policy.grace_s", "greater than or equal to 0"),
    ("policy.min_notice_s", 1.5, "policy.min_notice_s", "whole number"),
    ("policy.grace_s", "60", "policy.grace_s", "whole number"),
    ("policy.max_grant_hours", 0, "policy.max_grant_hours", "greater than 0"),
    ("policy.horizon_days", 0, "policy.horizon_days", "greater than or equal to 1"),
    ("policy.lend_idle", "maybe", "policy.lend_idle", "true or false"),
    ("policy.max_grant", 1, "policy.max_grant", "unknown key"),
    ("teams.0.best_effort_gpu_hours", -1, "teams.0.best_effort_gpu_hours", "greater than or equal to 0"),
    ("teams.0.best_effort_gpu_hours", "10", "teams.0.best_effort_gpu_hours", "number"),
    ("policy.best_effort_rate", 0, "policy.best_effort_rate", "greater than 0"),
    ("policy.best_effort_rate", "1", "policy.best_effort_rate", "number"),
    ("policy.lend_grace_s", -1, "policy.lend_grace_s", "greater than or equal to 0"),
    ("policy.lend_grace_s", 2.5, "policy.lend_grace_s", "whole number"),
    ("colour", "red", "colour", "unknown key"),
]


@pytest.mark.parametrize(("field", "value", "named", "words"), INVALID,
                         ids=[f"{f}={v!r}"[:40] for f, v, _, _ in INVALID])
def test_invalid_field(field: str, value: Any, named: str, words: str) -> None:
    doc = make_cluster()
    if field.startswith("teams.1") or field.startswith("pools.1"):
        kind = field.split(".")[0]
        doc = {**doc, kind: [*doc[kind], value]}
    else:
        doc = put(doc, field, value)
    msg = bad(doc)
    assert msg.startswith(f"cluster.toml: {named}: "), msg
    assert words in msg


@pytest.mark.parametrize("field", ["pools", "pools.0.name", "pools.0.gpu_type", "pools.0.gpus",
                                   "teams.0.name", "teams.0.allowance_gpu_hours"])
def test_required_keys(field: str) -> None:
    assert bad(drop(make_cluster(), field)) == f"cluster.toml: {field}: required key is missing"


def test_the_starter_template_is_a_valid_config(tmp_path: Path) -> None:
    text = files("cellsched").joinpath("templates/cluster.toml").read_text()
    path = tmp_path / "cluster.toml"
    path.write_text(text.replace("{user}", "alice"))
    c = load_cluster(path)
    assert {p.name for p in c.pools} and {t.name for t in c.teams}
    assert all("alice" in t.members for t in c.teams) and c.admins == ("alice",)


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".json"])
def test_cluster_config_loads_from_each_format(tmp_path: Path, suffix: str) -> None:
    import json

    import yaml
    from spec_builders import to_toml

    doc = make_cluster()
    text = {".toml": to_toml, ".yaml": yaml.safe_dump, ".json": json.dumps}[suffix](doc)
    path = tmp_path / f"cluster{suffix}"
    path.write_text(text)
    assert load_cluster(path) == validate(ClusterConfig, doc, "c")
