"""Server benchmark: the CLI through ``cellsched server`` (the real command, its own process,
on 127.0.0.1 with a token). Prints one JSON object.

    python benchmarks/server.py                 # all figures (PostgreSQL: CELLSCHED_TEST_PG or --pg)
    python benchmarks/server.py --quick         # fewer repeats and submits (a smoke run)
    python benchmarks/server.py --check         # exit 1 if a figure misses its target
    python benchmarks/server.py --repeats 3     # the submit runs 3 times: medians, and each run's figure

Figures:

- ``status_via_server_s``: median wall time of a whole ``cellsched status`` process (python
  start-up, imports with their bytecode cached as an installed package has it, the request,
  the table) against a server on a small SQLite ledger
  (three projects); target ≤ 0.2 s. ``status_json_via_server_s`` the same with ``--json``.
- ``submits_per_s``: ``POST /api/submit`` answered per second with 32 concurrent clients,
  on a PostgreSQL ledger preloaded with 10,000 grants (a year of windows on a pool of
  2,048 GPUs, 20 teams, every one admitted by the core so the calendar is consistent);
  target ≥ 300/s. Each client submits new specs (a real admission each, not the idempotent
  path), one connection per request as the CLI makes (``cellsched submit`` is a process
  per request). ``granted`` / ``refused`` count the decisions.
- ``submit_p50_ms`` / ``submit_p99_ms``: one submit's latency seen by the client with 8
  concurrent clients on the same ledger; target p99 ≤ 100 ms.
- ``server_cpu_s_per_submit``: the server process's CPU time per submit in the 32-client
  run (the machine has 2 cores shared by the server, PostgreSQL and the clients).
  ``db_cpu_s_per_submit``: the same for the PostgreSQL backends of the server's connections
  (found by their ``application_name``), ``client_cpu_s_per_submit`` for this process (the
  32 client threads): the three shares of the two cores.
- ``waited``: of the 32-client run's grants, how many wait (start after now): each of them
  gets an expected start (docs/admission.md). With no ended grant in the ledger it is the
  promise (no replay); ``--history N`` preloads N grants that ended in the 30 days before
  now (each held 30 to 90% of its window), so that every waiting grant's expected start is
  a replay of the calendar (one per batch of submits).

With ``--repeats N`` the 32- and 8-client runs are made N times on the same server and
ledger (which grows by their grants); each figure is the median, ``*_runs`` lists every
run's, and ``load_avg_1m`` the machine's load average before and after (other work on the
machine takes cores from all three).

The clients are threads of this process (httpx); the server and PostgreSQL are other
processes on the same machine, so the figures are what 2 shared cores give all three.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("CELLSCHED_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TARGETS = {"status_via_server_s": ("<=", 0.2), "submits_per_s": (">=", 300), "submit_p99_ms": ("<=", 100)}
T0 = 1796083200  # 2026-12-01 00:00 UTC: the ledger's (and the server's) "now"
DAY = 86400
TEAMS = 20
# The installed command (its console script), as a user runs it.
_SCRIPT = Path(sys.executable).parent / "cellsched"
CELLSCHED = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-c", "from cellsched.cli import main; main()"]

SPEC = """name = "{name}"
team = "{team}"
owner = "{user}"
problem = "How fast does the server admit?"
[budget]
gpu_hours = {hours}
gpus = {gpus}
[[jobs]]
name = "train"
run = ["python", "train.py"]
gpus = {gpus}
"""


def cluster_text(gpus: int, teams: int) -> str:
    out = ['admins = ["root-admin"]', "[[pools]]", 'name = "big"', 'gpu_type = "H100"', f"gpus = {gpus}",
           "gpus_per_node = 8"]
    for i in range(teams):
        out += ["[[teams]]", f'name = "team{i}"', f'members = ["user{i}"]', "allowance_gpu_hours = 100000000",
                'period = "none"']
    return "\n".join(out) + "\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc; 0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def db_cpu_s(admin: Any, app_name: str) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend whose connection is ``app_name`` (the
    server's pool); empty where /proc does not show them (PostgreSQL on another machine)."""
    with admin.connect() as c:
        pids = [r[0] for r in c.exec_driver_sql(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %(n)s", {"n": app_name})]
    return {pid: proc_cpu_s(pid) for pid in pids}


class Server:
    """``cellsched server --listen http://127.0.0.1:PORT`` for a cluster and a ledger."""

    def __init__(self, cluster: Path, db: str, now: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "CELLSCHED_NOW": str(now), "CELLSCHED_DB": db}
        env.pop("CELLSCHED_SERVER", None)
        self.proc = subprocess.Popen(
            # (the per-user submit rate lifted: the clients here are a few users submitting flat out)
            [*CELLSCHED, "--cluster", str(cluster), "server", "--listen", self.url, "--submit-rate", "1000000/1000",
             "--log-level", "warning"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server did not start: {self.proc.stderr.read() if self.proc.stderr else ''}")
                time.sleep(0.05)

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server process so far (Linux /proc)."""
        return proc_cpu_s(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def setup(work: Path, db: str, gpus: int, teams: int) -> Any:
    from cellsched.receipt import create_keys, key_paths
    from cellsched.service import open_env

    os.umask(0o077)
    work.mkdir(parents=True, exist_ok=True)
    cluster = work / "cluster.toml"
    cluster.write_text(cluster_text(gpus, teams))
    cluster.chmod(0o644)
    create_keys(*key_paths(cluster))
    env = open_env(cluster, db)
    env.ledger.ensure_schema()
    return env


def token_env(env: Any, work: Path, url: str, user: str) -> dict[str, str]:
    """The environment of a CLI process talking to ``url`` as ``user`` (a token in its config)."""
    from cellsched.server.tokens import issue

    _tid, secret = issue(env, user, "root-admin", T0 - 60)
    home = work / f"xdg-{user}"
    (home / "cellsched").mkdir(parents=True, exist_ok=True)
    cfg = home / "cellsched" / "client.toml"
    cfg.write_text(f'server = "{url}"\ntoken = "{secret}"\n')
    cfg.chmod(0o600)
    env_vars = {k: v for k, v in os.environ.items() if not k.startswith("CELLSCHED_")}
    return {**env_vars, "XDG_CONFIG_HOME": str(home), "CELLSCHED_SERVER": url}


# -- status through the server ------------------------------------------------------------


def bench_status(repeats: int) -> dict[str, Any]:
    from cellsched import service
    from cellsched.ops import SpecIn, sealed_spec

    with tempfile.TemporaryDirectory(prefix="cs-bench-status-") as tmp:
        work = Path(tmp)
        env = setup(work, f"sqlite:///{work / 'cellsched.db'}", 16, 2)
        for i in range(3):
            text = SPEC.format(name=f"p{i}", team="team0", user="user0", hours=16, gpus=4)
            service.submit(env, sealed_spec(SpecIn(file=f"p{i}.toml", text=text)), "user0", T0)
        server = Server(work / "cluster.toml", env.ledger.url, T0)
        try:
            # as a user's CLI runs: with its bytecode cached (pip compiles an installed
            # package; PYTHONDONTWRITEBYTECODE, set on some machines, would recompile every
            # module of an editable install at every start, ~0.07 s of the figure); the first
            # run writes the cache and is not counted
            cli_env = {k: v for k, v in token_env(env, work, server.url, "user0").items()
                       if k != "PYTHONDONTWRITEBYTECODE"}
            out: dict[str, Any] = {}
            for key, args in (("status_via_server_s", ["status"]), ("status_json_via_server_s", ["status", "--json"])):
                times = []
                for _ in range(repeats + 1):
                    t = time.perf_counter()
                    r = subprocess.run([*CELLSCHED, *args], env=cli_env,
                                       capture_output=True, text=True)
                    times.append(time.perf_counter() - t)
                    if r.returncode != 0 or "p2@" not in r.stdout:
                        raise SystemExit(f"status failed: {r.stderr}")
                out[key] = round(statistics.median(times[1:]), 3)  # the first warms the caches
            return out
        finally:
            server.stop()
            env.ledger.dispose()


# -- submits on a busy PostgreSQL ledger ----------------------------------------------------


def preload(env: Any, grants: int, seed: int = 1, history: int = 0) -> None:
    """``grants`` grants over the year from T0, each admitted by the core (so the ledger's
    calendar is one admission could have made), written in bulk; and ``history`` grants that
    ended (``completed``) in the 30 days before T0, each having held 30 to 90% of its window."""
    from sqlalchemy import insert

    from cellsched.core.admission import Grant, Request, Schedule
    from cellsched.ledger import events
    from cellsched.ledger.snapshot import nodes_json
    from cellsched.ledger.tables import GrantRow, ProjectRow

    sched = Schedule.empty(env.cluster)
    rng = random.Random(seed)
    projects, rows = [], []
    for n in range(grants):
        team = f"team{n % TEAMS}"
        width = rng.choice((1, 2, 4, 8, 8, 16, 32, 64))
        hours = rng.randrange(1, 48)
        start = T0 + rng.randrange(365 * DAY)
        req = Request(f"pre{n}", team, width, width * hours * 3600, not_before=start)
        g = sched.admit(req, T0)
        if not isinstance(g, Grant):
            continue
        g = sched.commit(g)
        digest = uuid.uuid4().hex * 2
        pid = f"pre{n}@{digest[:12]}"
        projects.append({"id": pid, "name": f"pre{n}", "digest": digest, "team": team, "owner": "bench",
                         "submitted_by": "bench", "spec_json": "{}", "created_at": T0 - 3600})
        rows.append({"project_id": pid, "project": f"pre{n}", "digest": digest, "team": team, "pool": g.pool,
                     "width": g.width, "start": g.start, "end": g.end, "promised_start": g.start,
                     "promised_end": g.end, "charged_gs": g.gpu_seconds, "created_at": T0 - 3600,
                     "nodes": nodes_json(g.nodes), "state": "granted", "receipt": ""})
    for n in range(history):  # in the past: they hold nothing ahead, only the ratios read them
        team = f"team{n % TEAMS}"
        width, hours = rng.choice((1, 2, 4, 8, 16)), rng.randrange(1, 48)
        start = T0 - rng.randrange(2 * DAY, 29 * DAY)
        held = max(1, int(hours * 3600 * rng.uniform(0.3, 0.9)))
        digest = uuid.uuid4().hex * 2
        pid = f"old{n}@{digest[:12]}"
        projects.append({"id": pid, "name": f"old{n}", "digest": digest, "team": team, "owner": "bench",
                         "submitted_by": "bench", "spec_json": "{}", "created_at": start - 3600})
        rows.append({"project_id": pid, "project": f"old{n}", "digest": digest, "team": team, "pool": "big",
                     "width": width, "start": start, "end": start + held, "promised_start": start,
                     "promised_end": start + hours * 3600, "charged_gs": width * hours * 3600,
                     "refunded_gs": width * (hours * 3600 - held), "created_at": start - 3600,
                     "ended_at": start + held, "started_at": start, "state": "completed", "receipt": ""})
    with env.ledger.write() as s:
        for i in range(0, len(rows), 2000):
            s.execute(insert(ProjectRow), projects[i:i + 2000])
            s.execute(insert(GrantRow), rows[i:i + 2000])
        events.append(s, T0 - 3600, "preloaded", "bench", "bench", {"grants": len(rows)})
    if len(rows) != grants + history:
        raise SystemExit(f"only {len(rows) - history} of {grants} grants fitted")


def run_clients(url: str, tokens: list[str], clients: int, per_client: int, tag: str) -> tuple[float, list[float], Any]:
    """``clients`` threads, each ``per_client`` submits of new specs: (wall s, latencies s, decisions)."""
    import httpx

    barrier = threading.Barrier(clients + 1)
    latencies: list[float] = []
    decisions: dict[str, int] = {}
    errors: list[str] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        team, user = i % TEAMS, f"user{i % TEAMS}"
        rng = random.Random(i)
        headers = {"authorization": f"Bearer {tokens[i % TEAMS]}"}
        mine: list[float] = []
        seen: dict[str, int] = {}
        barrier.wait()
        for k in range(per_client):
            gpus = rng.choice((1, 2, 4, 8))
            text = SPEC.format(name=f"{tag}-{i}-{k}", team=f"team{team}", user=user, hours=gpus * rng.randrange(1, 24),
                               gpus=gpus)
            t = time.perf_counter()
            try:
                with httpx.Client(base_url=url, headers=headers, timeout=120, verify=False) as c:
                    r = c.post("/api/submit", json={"file": f"{tag}-{i}-{k}.toml", "text": text})
                mine.append(time.perf_counter() - t)
                if r.status_code != 200:
                    raise RuntimeError(f"{r.status_code} {r.text[:200]}")
                answer = r.json()
                d = answer["decision"]
                seen[d] = seen.get(d, 0) + 1
                if d == "granted" and answer["grant"]["start"] > T0:
                    seen["waited"] = seen.get("waited", 0) + 1
            except Exception as e:  # noqa: BLE001 - counted, reported
                with lock:
                    errors.append(repr(e))
        with lock:
            latencies.extend(mine)
            for d, n in seen.items():
                decisions[d] = decisions.get(d, 0) + n

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{len(errors)} submits failed, first: {errors[0]}")
    return wall, latencies, decisions


def bench_submits(pg: str, grants: int, per_client_32: int, per_client_8: int, repeats: int = 1,
                  history: int = 0) -> dict[str, Any]:
    from sqlalchemy import create_engine

    from cellsched.server.tokens import issue

    schema = "bench_" + uuid.uuid4().hex[:10]
    admin = create_engine(pg, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in pg else "?"
    app_name = f"cs-{schema}"  # the server's backends, for their CPU time
    url = f"{pg}{sep}options=-csearch_path%3D{schema}&application_name={app_name}"
    try:
        with tempfile.TemporaryDirectory(prefix="cs-bench-submit-") as tmp:
            work = Path(tmp)
            env = setup(work, url, 2048, TEAMS)
            t = time.perf_counter()
            preload(env, grants, history=history)
            preload_s = time.perf_counter() - t
            tokens = [issue(env, f"user{i}", "root-admin", T0 - 60)[1] for i in range(TEAMS)]
            server = Server(work / "cluster.toml", url, T0)
            runs: list[dict[str, Any]] = []
            try:
                run_clients(server.url, tokens, 2, 3, "warm")  # the first submit builds the snapshot
                for r in range(repeats):
                    cpu0, db0, me0 = server.cpu_s(), db_cpu_s(admin, app_name), time.process_time()
                    wall32, lat32, dec32 = run_clients(server.url, tokens, 32, per_client_32, f"c32r{r}")
                    cpu, me = server.cpu_s() - cpu0, time.process_time() - me0
                    db = sum(t - db0.get(pid, 0.0) for pid, t in db_cpu_s(admin, app_name).items())
                    _wall8, lat8, _dec8 = run_clients(server.url, tokens, 8, per_client_8, f"c8r{r}")
                    runs.append(_submit_figures(wall32, lat32, dec32, (cpu, db, me), lat8))
            finally:
                server.stop()
            env.ledger.dispose()
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = [run[key] for run in runs]
        out[key] = statistics.median(values) if isinstance(values[0], float) else values[0]
        if repeats > 1 and key in ("submits_per_s", "submit_p99_ms", "submit_p50_ms", "server_cpu_s_per_submit",
                                   "db_cpu_s_per_submit", "client_cpu_s_per_submit"):
            out[key + "_runs"] = values
    if repeats > 1:
        out["granted"] = sum(run["granted"] for run in runs)
        out["refused"] = sum(run["refused"] for run in runs)
        out["waited"] = sum(run["waited"] for run in runs)
    return {**out, "preloaded_grants": grants, "preloaded_history": history, "preload_s": round(preload_s, 1)}


def _submit_figures(wall32: float, lat32: list[float], dec32: dict[str, int], cpu: tuple[float, float, float],
                    lat8: list[float]) -> dict[str, Any]:
    """The figures of one 32-client and one 8-client run; ``cpu``: the 32-client run's CPU
    seconds in the server, its database backends and this process."""
    lat8 = sorted(lat8)
    n = len(lat32)
    return {
        "submits_per_s": round(n / wall32, 1),
        "submits_32_clients": n,
        "granted": dec32.get("granted", 0),
        "refused": dec32.get("refused", 0),
        "waited": dec32.get("waited", 0),
        "submit_p50_ms_32_clients": round(statistics.median(lat32) * 1000, 1),
        "submit_p50_ms": round(statistics.median(lat8) * 1000, 1),
        "submit_p99_ms": round(lat8[min(len(lat8) - 1, int(0.99 * len(lat8)))] * 1000, 1),
        "submits_8_clients": len(lat8),
        "server_cpu_s_per_submit": round(cpu[0] / n, 5),
        "db_cpu_s_per_submit": round(cpu[1] / n, 5),
        "client_cpu_s_per_submit": round(cpu[2] / n, 5),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and submits")
    ap.add_argument("--check", action="store_true", help="exit 1 if a figure misses its target")
    ap.add_argument("--pg", default=PG_URL, help="PostgreSQL server URL (a schema of its own is made and dropped)")
    ap.add_argument("--grants", type=int, default=10_000, help="grants preloaded into the PostgreSQL ledger")
    ap.add_argument("--repeats", type=int, default=1, help="runs of the submit figures (medians reported)")
    ap.add_argument("--no-status", action="store_true", help="skip the status figures")
    ap.add_argument("--per-client", type=int, default=None,
                    help="submits per client in the 32-client run (default 40, --quick 10)")
    ap.add_argument("--history", type=int, default=0,
                    help="grants that ended in the 30 days before now, preloaded (the expected start's ratios)")
    args = ap.parse_args()
    out: dict[str, Any] = {"load_avg_1m": [round(os.getloadavg()[0], 2)]}
    if not args.no_status:
        out.update(bench_status(5 if args.quick else 11))
    per_client = args.per_client or (10 if args.quick else 40)
    out.update(bench_submits(args.pg, args.grants, per_client, 20 if args.quick else 100,
                             max(1, args.repeats), history=args.history))
    out["load_avg_1m"].append(round(os.getloadavg()[0], 2))
    out["targets"] = {k: f"{op} {v:g}" for k, (op, v) in TARGETS.items()}
    missed = [k for k, (op, v) in TARGETS.items() if k in out and not (out[k] <= v if op == "<=" else out[k] >= v)]
    out["missed"] = missed
    print(json.dumps(out, indent=2))
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
