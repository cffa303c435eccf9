"""``/metrics``: Prometheus text that parses, whose ledger figures equal the ledger's (the
report computation and, independently, ``service.budget``), whose process counters move with
``observe_submit``, and whose daemon figures are the lease row's. SQLite and PostgreSQL.

The ledger is made by the service layer (submits, a cancel) and the real reconciler over the
in-memory executor (a grant run to an early finish); the server's clock is pinned to a time
inside the period so the "current period" is known.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from cellsched import service
from cellsched.executor import Behaviour, MemoryExecutor
from cellsched.ledger import lease
from cellsched.ledger.tables import GrantRow, LeaseRow
from cellsched.runtime.reconciler import Reconciler, Settings
from cellsched.server.app import create_app
from cellsched.server.metrics import Cached, Metrics, Reports, current_period
from cellsched.server.state import ServerState
from cellsched.service import Env, open_env
from cellsched.spec.cluster import ClusterConfig
from cellsched.spec.models import ProjectSpec

H = 3600
DAY = 86400
T0 = int(dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc).timestamp())
DEC = (T0, int(dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc).timestamp()))
NOW = T0 + 3 * H  # the server's clock while it is scraped

CLUSTER = """
admins = ["root-admin"]
[policy]
grace_s = 5
[[pools]]
name = "h100"
gpu_type = "H100"
gpus = 16
gpus_per_node = 8
[[pools]]
name = "a100"
gpu_type = "A100"
gpus = 8
[[teams]]
name = "interp"
members = ["alice"]
allowance_gpu_hours = 1500
[[teams]]
name = "evals"
members = ["carol"]
allowance_gpu_hours = 100
"""


def spec(name: str, team: str, gpus: int, hours: float, pool: str, not_before: int | None = None,
         deadline: int | None = None) -> ProjectSpec:
    budget: dict[str, Any] = {"gpu_hours": gpus * hours, "gpus": gpus, "pool": pool}
    for key, t in (("not_before", not_before), ("deadline", deadline)):
        if t is not None:
            budget[key] = dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat()
    return ProjectSpec.model_validate({
        "name": name, "team": team, "owner": "o", "problem": "Does it hold up?", "budget": budget,
        "jobs": [{"name": "train", "gpus": gpus, "run": "true"}],
    })


@pytest.fixture
def env2(tmp_path: Path, ledger_url: str) -> Iterator[Env]:
    """Two pools, two teams, on SQLite and PostgreSQL."""
    from cellsched.receipt import create_keys, key_paths

    path = tmp_path / "cluster.toml"
    path.write_text(CLUSTER)
    create_keys(*key_paths(path))
    e = open_env(path, ledger_url)
    yield e
    e.ledger.dispose()


def server(env: Env, now: int = NOW) -> tuple[TestClient, Metrics]:
    state = ServerState(env)
    app = create_app(state)
    state.metrics.reports.clock = lambda: now
    return TestClient(app), state.metrics


def scrape(client: TestClient) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """sample name -> {sorted labels: value}, from the parsed exposition."""
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(r.text):
        assert fam.name.startswith("cellsched_"), fam.name
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def one(m: dict, name: str, **labels: str) -> float:
    return m[name][tuple(sorted(labels.items()))]


def fill(env: Env, metrics: Metrics, tmp_path: Path) -> dict[str, int]:
    """interp: "alpha" 4 x h100 for 2 h, run to an early finish by the reconciler (its job
    takes 10 min); "gamma" 8 x a100 for 5 h tomorrow, cancelled an hour in. evals: "beta"
    2 x h100 for 10 h in two days; "greedy" refused (160 GPU-hours due this month, over its
    allowance of 100).
    Every submit's outcome goes through ``observe_submit`` as the submit endpoint's does."""
    ids: dict[str, int] = {}

    def submit(sp: ProjectSpec, who: str, t: int) -> service.SubmitOutcome:
        out = service.submit(env, sp, who, t)
        metrics.observe_submit(0.003, out.to_json())
        if out.grant is not None:
            ids[sp.name] = out.grant.id  # type: ignore[assignment]
        return out

    assert submit(spec("alpha", "interp", 4, 2, "h100"), "alice", T0).granted
    assert submit(spec("gamma", "interp", 8, 5, "a100", not_before=T0 + DAY), "alice", T0).granted
    assert submit(spec("beta", "evals", 2, 10, "h100", not_before=T0 + 2 * DAY), "carol", T0).granted
    refused = submit(spec("greedy", "evals", 8, 20, "a100", deadline=T0 + 3 * DAY), "carol", T0)
    assert refused.refusal is not None and refused.refusal.reason == "over_allowance"
    assert submit(spec("alpha", "interp", 4, 2, "h100"), "alice", T0).existing  # the same spec again

    ex = MemoryExecutor({"train": Behaviour(600)}, capacity=16, now=T0)
    rec = Reconciler(env, ex, clock=lambda: int(ex.now), settings=Settings(
        strict=True, notify_in_background=False, logs_root=tmp_path / "logs"))
    for t in (T0, T0 + 5, T0 + 10, T0 + 700, T0 + 710, T0 + 720):
        ex.advance(t)
        rec.tick(t)
    service.cancel(env, "gamma", "alice", T0 + H)
    with env.ledger.write() as s:  # a breach as an older daemon recorded it (no BreachRow)
        g = s.get(GrantRow, ids["alpha"])
        assert g is not None and g.state == "completed"
        g.breach_gs = 4 * 300
        s.add(g)
    return ids


def grant(env: Env, gid: int) -> GrantRow:
    with env.ledger.read() as s:
        g = s.get(GrantRow, gid)
        assert g is not None
        return g


def test_ledger_figures_equal_the_ledger(env2: Env, tmp_path: Path) -> None:
    client, metrics = server(env2)
    ids = fill(env2, metrics, tmp_path)
    m = scrape(client)

    assert one(m, "cellsched_ledger_up") == 1
    assert (one(m, "cellsched_period_start_timestamp_seconds"), one(m, "cellsched_period_end_timestamp_seconds")) == DEC

    # By hand, from the grants as the ledger holds them.
    alpha = grant(env2, ids["alpha"])
    assert alpha.start == T0 and alpha.state == "completed" and T0 + 600 <= alpha.end <= T0 + 720
    held_alpha = 4 * (alpha.end - alpha.start) / H
    expect = {
        ("interp", "h100"): {"booked": 8, "granted": held_alpha, "held": held_alpha, "used": 4 * 600 / H,
                             "refunded": 8 - held_alpha, "committed": 0},
        ("interp", "a100"): {"booked": 40, "granted": 0, "held": 0, "used": 0, "refunded": 40, "committed": 0},
        ("evals", "h100"): {"booked": 20, "granted": 20, "held": 0, "used": 0, "refunded": 0, "committed": 20},
        ("evals", "a100"): {"booked": 0, "granted": 0, "held": 0, "used": 0, "refunded": 0, "committed": 0},
    }
    for (team, pool), figures in expect.items():
        for name, value in figures.items():
            got = one(m, f"cellsched_{name}_gpu_hours", team=team, pool=pool)
            assert got == pytest.approx(value, abs=1e-9), (team, pool, name)
    assert one(m, "cellsched_idle_reserved_gpu_hours", team="interp", pool="h100") == pytest.approx(held_alpha - 4 * 600 / H)
    assert one(m, "cellsched_guarantee_breached_grants", team="interp", pool="h100") == 1
    assert one(m, "cellsched_guarantee_breach_gpu_hours", team="interp", pool="h100") == pytest.approx(4 * 300 / H)
    assert one(m, "cellsched_guarantee_breach_gpu_hours", team="evals", pool="h100") == 0
    assert m["cellsched_grants"] == {
        (("pool", "h100"), ("state", "completed"), ("team", "interp")): 1,
        (("pool", "a100"), ("state", "cancelled"), ("team", "interp")): 1,
        (("pool", "h100"), ("state", "granted"), ("team", "evals")): 1,
    }
    assert one(m, "cellsched_period_decisions", decision="granted") == 3
    assert one(m, "cellsched_period_decisions", decision="cancelled") == 1
    assert one(m, "cellsched_period_refusals", reason="over_allowance") == 1
    assert one(m, "cellsched_period_refusals", reason="no_capacity_in_window") == 0
    assert one(m, "cellsched_pool_gpus", pool="a100") == 8
    assert one(m, "cellsched_elapsed_capacity_gpu_hours", pool="h100") == 16 * 3
    assert one(m, "cellsched_team_allowance_gpu_hours", team="evals", period="month") == 100

    # Independently, what `cellsched budget` says for each team (its own SQL and sums):
    # held and used agree; its "refunded" counts breaches too; "granted" is net of cuts in both.
    for team in ("interp", "evals"):
        b = service.budget(env2, team, NOW)
        assert (b.period_start, b.period_end) == DEC

        def total(name: str, team: str = team) -> float:
            return sum(one(m, f"cellsched_{name}_gpu_hours", team=team, pool=p) for p in ("h100", "a100"))

        assert total("held") == pytest.approx(b.total("held_gs") / H)
        assert total("used") == pytest.approx(b.total("used_gs") / H)
        assert total("committed") == pytest.approx(b.total("committed_gs") / H)
        assert total("refunded") + total("guarantee_breach") == pytest.approx(b.total("all_refunded_gs") / H)
        assert total("granted") == pytest.approx(b.total("granted_gs") / H)
        assert total("booked") - total("refunded") == pytest.approx(b.total("granted_gs") / H)
        assert one(m, "cellsched_team_remaining_gpu_hours", team=team) == pytest.approx(b.remaining_gs / H)

    # This process's counters: what observe_submit saw.
    assert one(m, "cellsched_submits_total", outcome="granted") == 3
    assert one(m, "cellsched_submits_total", outcome="existing") == 1
    assert one(m, "cellsched_submits_total", outcome="refused") == 1
    assert one(m, "cellsched_refusals_total", reason="over_allowance") == 1
    assert one(m, "cellsched_refusals_total", reason="deadline_passed") == 0
    assert one(m, "cellsched_admission_seconds_count") == 5
    assert one(m, "cellsched_admission_seconds_bucket", le="0.0025") == 0
    assert one(m, "cellsched_admission_seconds_bucket", le="0.005") == 5


def test_observe_submit_moves_the_counters_and_the_histogram(env: Env) -> None:
    client, metrics = server(env)
    before = scrape(client)
    assert one(before, "cellsched_admission_seconds_count") == 0
    assert one(before, "cellsched_refusals_total", reason="no_capacity_in_window") == 0
    metrics.observe_submit(0.02, {"decision": "refused", "refusal": {"reason": "no_capacity_in_window"}})
    metrics.observe_submit(0.3, {"decision": "refused", "refusal": {"reason": "no_capacity_in_window"}})
    metrics.observe_submit(0.004, {"decision": "granted", "grant": {"team": "interp", "pool": "h100"}})
    metrics.observe_submit(7.0, {"granted": False, "refusal": {"reason": "over_allowance"}})
    after = scrape(client)
    assert one(after, "cellsched_refusals_total", reason="no_capacity_in_window") == 2
    assert one(after, "cellsched_refusals_total", reason="over_allowance") == 1
    assert one(after, "cellsched_submits_total", outcome="refused") == 3
    assert one(after, "cellsched_submits_total", outcome="granted") == 1
    assert one(after, "cellsched_admission_seconds_count") == 4
    assert one(after, "cellsched_admission_seconds_sum") == pytest.approx(7.324)
    buckets = {dict(k)["le"]: v for k, v in after["cellsched_admission_seconds_bucket"].items()}
    assert (buckets["0.005"], buckets["0.025"], buckets["0.5"], buckets["5.0"], buckets["10.0"], buckets["+Inf"]) == \
        (1, 2, 3, 3, 4, 4)
    # Another app in the same process has its own registry: nothing carried over.
    other, _ = server(env)
    assert one(scrape(other), "cellsched_admission_seconds_count") == 0


def test_daemon_lease_figures_are_the_lease_rows(env: Env) -> None:
    client, _ = server(env)
    m = scrape(client)
    assert one(m, "cellsched_daemon_up") == 0
    assert "cellsched_daemon_lease_info" not in m  # no daemon ever served this ledger

    held = lease.acquire(env.ledger, host="head-1", pid=4242)
    lease.renew(env.ledger, held, pass_ms=12.5)
    m = scrape(client)
    assert one(m, "cellsched_daemon_up") == 1
    ((labels, value),) = m["cellsched_daemon_lease_info"].items()
    assert dict(labels) == {"holder": held.holder, "host": "head-1", "pid": "4242", "epoch": str(held.epoch)}
    assert value == 1
    assert one(m, "cellsched_daemon_lease_epoch") == held.epoch
    assert one(m, "cellsched_reconcile_pass_seconds") == pytest.approx(0.0125)
    assert 0 <= one(m, "cellsched_daemon_heartbeat_age_seconds") < 5
    st = lease.state(env.ledger)
    assert one(m, "cellsched_daemon_last_heartbeat_timestamp_seconds") == pytest.approx(st.renewed_at)

    lease.release(env.ledger, held)
    m = scrape(client)
    assert one(m, "cellsched_daemon_up") == 0
    assert one(m, "cellsched_daemon_lease_epoch") == held.epoch  # the last holder stays visible


def test_figures_are_cached_until_the_ledger_moves(env: Env) -> None:
    client, metrics = server(env)
    reports = metrics.reports
    reports.min_age_s = reports.cost_factor = 0  # recompute as soon as the sequence moves
    scrape(client)
    first = reports.figures()
    assert reports.figures() is first  # nothing written: the same computation
    assert one(scrape(client), "cellsched_granted_gpu_hours", team="interp", pool="h100") == 0

    out = service.submit(env, spec("new", "interp", 2, 3, "h100"), "alice", NOW)
    assert out.granted
    second = reports.figures()
    assert second is not first and second.seq > first.seq
    m = scrape(client)
    assert one(m, "cellsched_granted_gpu_hours", team="interp", pool="h100") == 6
    assert one(m, "cellsched_ledger_events_total") == second.seq
    assert one(m, "cellsched_report_compute_seconds") == pytest.approx(second.took_s)

    reports.min_age_s = 3600  # within the minimum age a write is not looked for
    service.cancel(env, "new", "alice", NOW)
    assert reports.figures() is second


def test_a_slow_computation_is_reused_longer_and_made_once(env: Env) -> None:
    reports = Reports(env, clock=lambda: NOW, min_age_s=0, max_age_s=3600, cost_factor=100)
    calls: list[int] = []

    def slow(now: int) -> int:
        calls.append(now)
        time.sleep(0.05)
        return len(calls)

    got: list[Cached] = []
    threads = [threading.Thread(target=lambda: got.append(reports.get(("k",), slow))) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(calls) == 1 and all(c is got[0] for c in got)  # one computation, four answers

    assert service.submit(env, spec("moves", "interp", 2, 1, "h100"), "alice", NOW).granted
    assert reports.get(("k",), slow) is got[0]  # the ledger moved, but 100 x 0.05 s have not passed
    reports.cost_factor = 0
    again = reports.get(("k",), slow)
    assert again.value == 2 and again.seq > got[0].seq


def test_an_unreadable_ledger_is_ledger_up_0_not_a_failed_scrape(cluster_file: Path, tmp_path: Path) -> None:
    e = open_env(cluster_file, f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'ledger.db'}")
    client, _ = server(e)
    m = scrape(client)
    assert one(m, "cellsched_ledger_up") == 0
    assert "cellsched_granted_gpu_hours" not in m
    assert one(m, "cellsched_admission_seconds_count") == 0  # the process's own figures still there
    e.ledger.dispose()


def cluster(*periods: str) -> ClusterConfig:
    return ClusterConfig.model_validate({
        "pools": [{"name": "p", "gpu_type": "H100", "gpus": 8}],
        "teams": [{"name": f"t{i}", "allowance_gpu_hours": 10, "period": p} for i, p in enumerate(periods)],
    })


@pytest.mark.parametrize("periods, bounds", [
    (("month", "month"), ("2026-12-01", "2027-01-01")),
    (("quarter",), ("2026-10-01", "2027-01-01")),
    (("year", "none"), ("2026-01-01", "2027-01-01")),
    (("month", "quarter"), ("2026-12-01", "2027-01-01")),  # mixed: the calendar month
    (("none",), ("2026-12-01", "2027-01-01")),
    ((), ("2026-12-01", "2027-01-01")),
])
def test_current_period_is_the_teams_allowance_period(periods: tuple[str, ...], bounds: tuple[str, str]) -> None:
    def t(day: str) -> int:
        return int(dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc).timestamp())

    assert current_period(cluster(*periods), NOW) == (t(bounds[0]), t(bounds[1]))


def test_docs_list_every_metric_exposed(env: Env) -> None:
    """docs/metrics.md's tables and a full scrape name the same metrics."""
    import re

    doc = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
    documented = {name for line in doc.splitlines() if line.startswith("| `cellsched_")
                  for name in re.findall(r"`(cellsched_[a-z_]+)`", line.split("|")[1])}
    held = lease.acquire(env.ledger, host="h", pid=1)
    lease.renew(env.ledger, held, pass_ms=1.0)
    lease.record_gpus(env.ledger, held, 16, 16)
    with env.ledger.write() as s:  # what the daemon's census writes
        row = s.get(LeaseRow, 1)
        assert row is not None
        row.pool_gpus = '{"h100": 16}'
        s.add(row)
    client, _ = server(env)
    assert one(scrape(client), "cellsched_daemon_pool_ray_gpus", pool="h100") == 16
    text = client.get("/metrics").text
    exposed = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    assert exposed - {n for n in exposed if n.endswith("_created")} == documented
