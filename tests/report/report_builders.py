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
