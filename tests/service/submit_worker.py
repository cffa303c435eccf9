"""One OS process of the concurrency test: open the ledger, wait for the others, submit."""

from __future__ import annotations

from typing import Any

from service_specs import H, T0, spec

MEMBER = {"interp": "alice", "evals": "carol", "pretraining": "dave"}
TEAMS = ("interp", "evals", "pretraining")
ROUNDS = 5


def plan(worker: int) -> list[dict[str, Any]]:
    """This worker's submissions: one shared by every worker (same digest), then its own."""
    out: list[dict[str, Any]] = [dict(name="shared", team="interp", gpus=4, hours=8)]
    for k in range(ROUNDS):
        team = TEAMS[(worker + k) % 3]
        gpus = (4, 8, 12, 6, 16)[(worker * 3 + k) % 5]
        hours = gpus * (2 + (worker + 2 * k) % 5)
        item: dict[str, Any] = dict(name=f"w{worker}-{k}", team=team, gpus=gpus, hours=hours)
        if (worker + k) % 2:
            item["deadline"] = T0 + (6 + worker % 4) * H
        out.append(item)
    return out


def work(cluster_path: str, url: str, worker: int, barrier: Any, results: Any) -> None:
    from cellsched import service

    env = service.open_env(cluster_path, url)
    done: list[tuple[str, str]] = []
    try:
        barrier.wait(timeout=120)
        first_own = None
        for item in plan(worker):
            team = item["team"]
            out = service.submit(env, spec(owner=MEMBER[team], **item), MEMBER[team], T0)
            kind = "refused" if not out.granted else ("existing" if out.existing else "granted")
            done.append((out.project_id, kind))
            if kind == "granted" and item["name"] != "shared" and first_own is None:
                first_own = (item["name"], MEMBER[team])
        if first_own is not None:  # cancel frees capacity for the others' later submits
            service.cancel(env, first_own[0], first_own[1], T0)
            done.append((first_own[0], "cancelled"))
        results.put((worker, done, None))
    except BaseException as e:  # report, don't hang the parent
        results.put((worker, done, repr(e)))
    finally:
        env.ledger.dispose()
