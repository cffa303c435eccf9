"""Builders for report tests: grants, job runs and events written straight into a ledger."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

from cellsched.ledger import events
from cellsched.ledger.db import Ledger
from cellsched.ledger.tables import BreachRow, GrantRow, JobRunRow, ProjectRow

H = 3600
DAY = 86400
T0 = int(dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc).timestamp())


class LedgerBuilder:
    """``b.grant("a", "interp", 4, start, end, created=...)`` then ``b.run(...)``/``b.event(...)``;
    each call is its own write transaction, like the service's. Rows come with the events the
    service and the daemon write for them (``ledger/lifecycle``), so the ledger audits."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.ids: dict[str, int] = {}

    def grant(self, name: str, team: str, width: int, start: int, end: int, *, created: int,
              pool: str = "h100", cut_at: int | None = None, state: str | None = None,
              started_at: int | None = None, breach_gs: int = 0, event: bool = True) -> int:
        """A grant of [start, end) x width; ``cut_at`` ends it early there (refunding the rest),
        recorded as released at ``cut_at`` (or at ``created`` + 1 h if it never started);
        ``breach_gs`` is lost from the window's start on. ``event=False`` writes the rows alone
        (a ledger that does not audit)."""
        spec_json = json.dumps({"name": name, "team": team}, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(spec_json.encode()).hexdigest()
        pid = f"{name}@{digest[:12]}"
        with self.ledger.write() as s:
            s.add(ProjectRow(id=pid, name=name, digest=digest, team=team, owner="o", submitted_by="o",
                             spec_json=spec_json, created_at=created))
            s.flush()
            new_end, refunded, ended = end, 0, None
            if cut_at is not None:
                new_end = min(max(cut_at, start), end)
                refunded = width * (end - new_end)
                ended = cut_at
            final = state or ("completed" if cut_at is not None else "active" if started_at is not None else "granted")
            row = GrantRow(project_id=pid, project=name, digest=digest, team=team, pool=pool,
                           width=width, start=start, end=new_end, promised_start=start, promised_end=end,
                           charged_gs=width * (end - start), refunded_gs=refunded,
                           state=final, created_at=created,
                           started_at=started_at, ended_at=ended, breach_gs=breach_gs, nodes="[]")
            s.add(row)
            s.flush()
            assert row.id is not None
            self.ids[name] = row.id
            payload = {"grant": row.id, "project": pid, "digest": digest, "team": team, "pool": pool,
                       "width": width, "start": start, "end": end, "gpu_seconds": width * (end - start),
                       "issued_at": created}
            row.receipt = json.dumps({"payload": payload, "signature": ""}, sort_keys=True)
            if not event:
                return row.id
            g = row.id
            events.append(s, created, "granted", pid, "o",
                          {**{k: v for k, v in payload.items() if k != "project"}, "nodes": []})
            if started_at is not None or breach_gs:
                events.append(s, start, "reserving", pid, "daemon", {"grant": g, "reservation": f"g{g}", "width": width,
                                                                    "late_s": 0})
            if breach_gs:
                events.append(s, start + breach_gs // width, "restored", pid, "daemon",
                              {"grant": g, "breach_gpu_seconds": breach_gs, "this_outage_gpu_seconds": breach_gs,
                               "message": "group placed"})
                s.add(BreachRow(grant_id=g, team=team, start=start, end=start + breach_gs // width, width=width,
                                gpu_seconds=breach_gs, recorded_at=start + breach_gs // width))
            if started_at is not None:
                events.append(s, started_at, "active", pid, "daemon", {"grant": g, "first": True, "breach_gpu_seconds":
                                                                       breach_gs, "reservation": f"g{g}"})
            if cut_at is not None:
                events.append(s, cut_at, final, pid, "o", {"grant": g, "end": new_end, "refunded_gpu_seconds": refunded})
            elif final == "expired":
                events.append(s, end, "expired", pid, "daemon", {"grant": g, "end": end, "breach_gpu_seconds": breach_gs})
                row.ended_at = end
            s.add(row)
            return row.id

    def run(self, grant: str, gpus: int, started: int, ended: int | None, *, job: str = "main", attempt: int = 1,
            gpu_seconds: int | None = None) -> None:
        with self.ledger.write() as s:
            gs = gpu_seconds if gpu_seconds is not None else (0 if ended is None else gpus * (ended - started))
            row = s.get(GrantRow, self.ids[grant])
            assert row is not None
            s.add(JobRunRow(grant_id=row.id, job=job, attempt=attempt, gpus=gpus,
                            state="running" if ended is None else "succeeded", started_at=started, ended_at=ended,
                            gpu_seconds=gs, exit_codes="[]" if ended is None else json.dumps([0] * gpus)))
            events.append(s, started, "attempt_started", row.project_id, "daemon",
                          {"grant": row.id, "job": job, "attempt": attempt, "bundles": list(range(gpus))})
            if ended is not None:
                events.append(s, ended, "attempt_ended", row.project_id, "daemon",
                              {"grant": row.id, "job": job, "attempt": attempt, "outcome": "succeeded",
                               "exit_codes": [0] * gpus, "gpu_seconds": gs, "detail": "", "late": False})

    def refused(self, at: int, name: str, team: str, reason: str) -> None:
        self.event(at, "refused", f"{name}@{'1' * 12}", {"team": team, "reason": reason, "message": reason})

    def event(self, at: int, kind: str, subject: str, data: dict[str, Any]) -> None:
        with self.ledger.write() as s:
            events.append(s, at, kind, subject, "o", data)


def fill_known(ledger) -> None:  # type: ignore[no-untyped-def]
    """The hand-built ledger whose report is worked out in ``test_compute.KNOWN``.

    Cluster: one pool of 16 H100s; interp 1500, evals 100, pretraining 20000 GPU-h a month.
    Period: [T0, T0 + 7 d) = 2026-11-01 .. 11-08; now = T0 + 10 d.
    """
    b = LedgerBuilder(ledger)
    # a: crosses the period's start; its job started 10 minutes after the window opened.
    b.grant("a", "interp", 4, T0 - 10 * H, T0 + 10 * H, created=T0 - 12 * H, started_at=T0 - 10 * H + 600)
    b.run("a", 4, T0 - 10 * H + 600, T0 + 6 * H)
    # b: released early (all jobs done at +29 h, window cut at +30 h of a 48 h window).
    b.grant("b", "evals", 2, T0 + 24 * H, T0 + 48 * H, created=T0 + 20 * H, cut_at=T0 + 30 * H,
            started_at=T0 + 24 * H)
    b.run("b", 2, T0 + 24 * H, T0 + 29 * H)
    # c: crosses the period's end; a node was lost for an hour (8 GPU-h breached).
    b.grant("c", "pretraining", 8, T0 + 6 * DAY, T0 + 9 * DAY, created=T0 + 2 * DAY, state="expired",
            breach_gs=8 * H)
    # d: cancelled an hour after it was granted, a day before it would have started.
    b.grant("d", "interp", 2, T0 + 4 * DAY, T0 + 5 * DAY, created=T0 + 3 * DAY, cut_at=T0 + 3 * DAY + H,
            state="cancelled")
    # e: wholly before the period (October); f: granted after the period, for Nov 21.
    b.grant("e", "interp", 1, T0 - 5 * DAY, T0 - 4 * DAY, created=T0 - 6 * DAY, state="expired")
    b.run("e", 1, T0 - 5 * DAY, T0 - 4 * DAY)
    b.grant("f", "interp", 1, T0 + 20 * DAY, T0 + 21 * DAY, created=T0 + 9 * DAY)
    b.refused(T0 + 1 * DAY, "x", "interp", "over_allowance")
    b.refused(T0 + 2 * DAY, "y", "evals", "over_allowance")
    b.refused(T0 + 3 * DAY, "z", "pretraining", "no_capacity_in_window")
    b.refused(T0 - 1 * DAY, "w", "interp", "wider_than_pool")  # before the period
