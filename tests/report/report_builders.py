"""Builders for report tests: grants, job runs and events written straight into a ledger."""

from __future__ import annotations

import datetime as dt
from typing import Any

from cellsched.ledger import events
from cellsched.ledger.db import Ledger
from cellsched.ledger.tables import GrantRow, JobRunRow, ProjectRow

H = 3600
DAY = 86400
T0 = int(dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc).timestamp())


class LedgerBuilder:
    """``b.grant("a", "interp", 4, start, end, created=...)`` then ``b.run(...)``/``b.event(...)``;
    each call is its own write transaction, like the service's."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.ids: dict[str, int] = {}

    def grant(self, name: str, team: str, width: int, start: int, end: int, *, created: int,
              pool: str = "h100", cut_at: int | None = None, state: str | None = None,
              started_at: int | None = None, breach_gs: int = 0, event: bool = True) -> int:
        """A grant of [start, end) x width; ``cut_at`` ends it early there (refunding the rest),
        recorded as released at ``cut_at`` (or at ``created`` + 1 h if it never started)."""
        pid = f"{name}@{'0' * 12}"
        with self.ledger.write() as s:
            s.add(ProjectRow(id=pid, name=name, digest=name.ljust(64, "0"), team=team, owner="o", submitted_by="o",
                             spec_json="{}", created_at=created))
            s.flush()
            new_end, refunded, ended = end, 0, None
            if cut_at is not None:
                new_end = min(max(cut_at, start), end)
                refunded = width * (end - new_end)
                ended = cut_at
            row = GrantRow(project_id=pid, project=name, digest=name.ljust(64, "0"), team=team, pool=pool,
                           width=width, start=start, end=new_end, promised_start=start, promised_end=end,
                           charged_gs=width * (end - start), refunded_gs=refunded,
                           state=state or ("completed" if cut_at is not None else "granted"), created_at=created,
                           started_at=started_at, ended_at=ended, breach_gs=breach_gs)
            s.add(row)
            s.flush()
            assert row.id is not None
            self.ids[name] = row.id
            if event:
                events.append(s, created, "granted", pid, "o", {"grant": row.id, "team": team, "pool": pool,
                                                                "width": width, "start": start, "end": end})
            if cut_at is not None and event and state == "cancelled":
                events.append(s, cut_at, "cancelled", pid, "o", {"grant": row.id, "end": new_end,
                                                                  "refunded_gpu_seconds": refunded})
            return row.id

    def run(self, grant: str, gpus: int, started: int, ended: int | None, *, job: str = "main", attempt: int = 1,
            gpu_seconds: int | None = None) -> None:
        with self.ledger.write() as s:
            gs = gpu_seconds if gpu_seconds is not None else (0 if ended is None else gpus * (ended - started))
            s.add(JobRunRow(grant_id=self.ids[grant], job=job, attempt=attempt, gpus=gpus,
                            state="running" if ended is None else "succeeded", started_at=started, ended_at=ended,
                            gpu_seconds=gs))

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
