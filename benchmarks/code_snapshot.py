"""Code snapshot benchmark: a 50 MB project directory snapshotted and stored at submit, then
read back and unpacked as a node would; prints one JSON object.

    python benchmarks/code_snapshot.py                  # SQLite ledger
    python benchmarks/code_snapshot.py --db postgres    # a fresh schema on the test PostgreSQL
    python benchmarks/code_snapshot.py --check          # exit 1 if a figure misses its target

The tree (``--mib`` MiB, 50): half source-like text (2,000 files of pseudo-random words,
which compress about 3×) and half random bytes (25 files of 1 MiB, incompressible, like
small checkpoints or data), plus a spec file with ``code = {}``.

Figures (median of ``--rounds`` rounds, 3; each round a fresh ledger and a changed file, so
the snapshot is new every time):

- ``snapshot_s``: ``load_sealed`` on the spec file: walk, read, hash, pack (gzip level 1).
- ``store_s``: ``service.submit`` of the sealed spec (admission plus the ``cs_code`` row in
  the grant's transaction) minus the same submit of a spec without code.
- ``submit_total_s``: ``snapshot_s`` + the submit: what ``cellsched submit`` adds for code.
- ``read_s``: ``service.code_blob`` (what the daemon does); ``unpack_first_s``:
  ``_codepack.unpack`` into an empty node cache (digest checked first); ``unpack_cached_s``:
  the same call once it is there; ``verify_s``: ``service.verify`` (the blob's digest).
- ``content_mib``, ``packed_mib``: sizes.
- ``*_cpu_s``: this process's CPU time for the same steps (``time.process_time``), for a
  loaded machine where wall time says more about the neighbours; ``load_avg`` is the
  1-minute load average at the end.

Target (issue 12, point 3): ``submit_total_s`` ≤ 10 for 50 MB (the first-ship budget).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "runtime"))

TARGETS = {"submit_total_s": 10.0}
T0 = 1_800_000_000
USER = "bench"
MIB = 1024 * 1024

CLUSTER = f"""
admins = ["{USER}"]
[[pools]]
name = "h100"
gpu_type = "H100"
gpus = 64
gpus_per_node = 8
[[teams]]
name = "bench"
members = ["{USER}"]
allowance_gpu_hours = 100000
"""

SPEC = """
name = "{name}"
team = "bench"
owner = "{user}"
problem = "How long does a 50 MB code snapshot take?"
{code}
[budget]
gpu_hours = 1
gpus = 1
[[jobs]]
name = "train"
run = ["python3", "train.py"]
"""

WORDS = [f"w{i}" for i in range(5000)] + ["def", "return", "import", "self", "for", "in", "if", "(", ")", ":"]


def make_tree(root: Path, mib: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    text_bytes = mib * MIB // 2
    per_file = text_bytes // 2000
    for i in range(2000):
        d = root / "src" / f"pkg{i % 40}"
        d.mkdir(parents=True, exist_ok=True)
        body = " ".join(rng.choice(WORDS) for _ in range(per_file // 4))
        (d / f"mod{i}.py").write_text(body[:per_file])
    data = root / "data"
    data.mkdir()
    for i in range(mib // 2):
        (data / f"blob{i}.bin").write_bytes(os.urandom(MIB))


def one_round(url: str | None, work: Path, mib: int, round_no: int) -> dict[str, float]:
    from cellsched import service
    from cellsched.executor import _codepack
    from cellsched.receipt import create_keys, key_paths
    from cellsched.spec.load import load_sealed

    cluster = work / f"cluster{round_no}.toml"
    cluster.write_text(CLUSTER)
    create_keys(*key_paths(cluster))
    env = service.open_env(cluster, url or f"sqlite:///{work / f'ledger{round_no}.db'}")
    try:
        proj = work / "proj"
        (proj / "src" / "pkg0" / "mod0.py").write_text(f"round {round_no}\n")  # a new snapshot each round
        spec = proj / "spec.toml"
        spec.write_text(SPEC.format(name=f"code{round_no}", user=USER, code="code = {}"))
        plain = work / "plain.toml"
        plain.write_text(SPEC.format(name=f"plain{round_no}", user=USER, code=""))
        service.submit(env, load_sealed(work / "plain.toml"), USER, T0)  # warm: schema, keys, connection
        plain.write_text(SPEC.format(name=f"plain{round_no}b", user=USER, code=""))
        t = time.perf_counter()
        service.submit(env, load_sealed(plain), USER, T0)
        plain_s = time.perf_counter() - t

        t, c = time.perf_counter(), time.process_time()
        sealed = load_sealed(spec)
        snapshot_s, snapshot_cpu_s = time.perf_counter() - t, time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        out = service.submit(env, sealed, USER, T0)
        submit_s, submit_cpu_s = time.perf_counter() - t, time.process_time() - c
        assert out.granted and sealed.code is not None
        digest = sealed.code.digest

        t = time.perf_counter()
        blob = service.code_blob(env, digest)
        read_s = time.perf_counter() - t
        cache = work / f"node{round_no}"
        t, c = time.perf_counter(), time.process_time()
        _codepack.unpack(blob, cache, digest)
        unpack_first_s, unpack_first_cpu_s = time.perf_counter() - t, time.process_time() - c
        t = time.perf_counter()
        _codepack.unpack(blob, cache, digest)
        unpack_cached_s = time.perf_counter() - t
        t = time.perf_counter()
        service.verify(env, out.project_id)
        verify_s = time.perf_counter() - t
        return {
            "snapshot_s": snapshot_s, "store_s": max(0.0, submit_s - plain_s), "submit_s": submit_s,
            "submit_total_s": snapshot_s + submit_s, "read_s": read_s, "unpack_first_s": unpack_first_s,
            "unpack_cached_s": unpack_cached_s, "verify_s": verify_s,
            "content_mib": sealed.code.content_bytes / MIB, "packed_mib": sealed.code.size / MIB,
            "snapshot_cpu_s": snapshot_cpu_s, "submit_cpu_s": submit_cpu_s, "unpack_first_cpu_s": unpack_first_cpu_s,
        }
    finally:
        env.ledger.dispose()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--mib", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--check", action="store_true", help="exit 1 if a figure misses its target")
    a = ap.parse_args()

    from chaos_harness import fresh_pg_url

    rounds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="cellsched-bench-") as tmp:
        work = Path(tmp)
        make_tree(work / "proj", a.mib)
        for i in range(a.rounds):
            with fresh_pg_url() if a.db == "postgres" else nullcontext(None) as url:
                rounds.append(one_round(url, work, a.mib, i))
    figures: dict[str, Any] = {"db": a.db, "mib": a.mib, "rounds": a.rounds}
    for key in rounds[0]:
        figures[key] = round(statistics.median(r[key] for r in rounds), 3)
    figures["load_avg"] = round(os.getloadavg()[0], 1)
    print(json.dumps(figures))
    if a.check:
        missed = [k for k, v in TARGETS.items() if figures[k] > v]
        if missed:
            print(f"missed targets: {', '.join(f'{k} {figures[k]} > {TARGETS[k]}' for k in missed)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
