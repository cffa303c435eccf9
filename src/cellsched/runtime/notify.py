"""Tell someone a project finished: run the spec's ``notify`` command, or POST the report to
its HTTP(S) URL. A failure is returned as text (logged and recorded by the caller), never
raised: the report is already safe in the ledger and on disk before anyone is told.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Sequence

from cellsched.executor.base import job_environment

log = logging.getLogger("cellsched.daemon")

HTTP_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 30.0


def is_url(target: str) -> bool:
    return target.startswith(("http://", "https://"))


def notify(target: str, report: dict[str, Any], report_path: Path | None,
           pass_env: Sequence[str] = ()) -> str | None:
    """Deliver ``report`` to ``target``; ``None`` on success, else why it failed."""
    body = json.dumps(report, sort_keys=True).encode("utf-8")
    if is_url(target):
        req = urllib.request.Request(
            target, data=body, method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "cellsched"},
        )
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:  # noqa: S310
                resp.read(65536)
            return None
        except urllib.error.HTTPError as e:
            return f"POST {target}: HTTP {e.code}"
        except (urllib.error.URLError, OSError, ValueError) as e:
            return f"POST {target}: {getattr(e, 'reason', e)}"
    # The command comes from a spec: it gets what a job gets, never the daemon's secrets.
    env = job_environment(os.environ, pass_env, {}, {
        "CELLSCHED_PROJECT": str(report.get("project", "")),
        "CELLSCHED_STATE": str(report.get("state", "")),
        "CELLSCHED_REPORT": str(report_path or ""),
    })
    log = (report_path.parent / "notify.log") if report_path else None
    try:
        out = subprocess.run(
            ["/bin/sh", "-c", target], input=body, env=env, capture_output=True,
            timeout=COMMAND_TIMEOUT_S, cwd=str(report_path.parent) if report_path else None,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        return f"command timed out after {COMMAND_TIMEOUT_S:.0f} s: {target}"
    except OSError as e:
        return f"command could not run: {e}"
    if log is not None:
        try:
            with open(log, "ab") as f:
                f.write(out.stdout + out.stderr)
        except OSError:
            pass
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).decode(errors="replace").strip().splitlines()[-1:]
        return f"command exited {out.returncode}: {target}" + (f" ({tail[0]})" if tail else "")
    return None


def redact(target: str) -> str:
    """URLs may carry tokens: keep scheme and host only in logs and events."""
    if is_url(target):
        scheme, _, rest = target.partition("://")
        return f"{scheme}://{rest.split('/', 1)[0].split('@')[-1]}/…"
    return target


def write_report_files(log_dir: str, data: dict[str, Any], md: str) -> Path | None:
    """``report.json`` and ``report.md`` in the grant's log directory (atomically; rewritten
    only when changed); None if the directory cannot be written (the ledger has the report)."""
    d = Path(log_dir)
    try:
        d.mkdir(parents=True, exist_ok=True)
        p = d / "report.json"
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        if not p.exists() or p.read_text() != text:
            tmp = d / ".report.json.tmp"
            tmp.write_text(text)
            tmp.replace(p)
            (d / "report.md").write_text(md)
        return p
    except OSError as e:
        log.warning("cannot write report files in %s: %s (the ledger has the report)", d, e)
        return None


class Notifier:
    """Tells each finished grant's ``notify`` target once, in a background thread (the
    daemon) or inline (tests, ``--once``); ``done(gid, target, error)`` records the outcome."""

    def __init__(self, done: Callable[[int, str, str | None], None], background: bool,
                 pass_env: Sequence[str] = ()) -> None:
        self._done = done
        self._background = background
        self._pass_env = tuple(pass_env)
        self._busy: set[int] = set()
        self._threads: list[threading.Thread] = []

    def tell(self, gid: int, project_id: str, target: str, data: dict[str, Any], path: Path | None) -> bool:
        """Start telling ``target`` (False if already under way for ``gid``)."""
        if gid in self._busy:
            return False
        self._busy.add(gid)

        def run() -> None:
            try:
                err = notify(target, data, path, self._pass_env)
                self._done(gid, redact(target), err)
                if err is None:
                    log.info("notified %s: %s", project_id, redact(target))
                else:
                    log.warning("notify for %s failed (report kept in the ledger and %s): %s",
                                project_id, path, err)
            finally:
                self._busy.discard(gid)

        if self._background:
            t = threading.Thread(target=run, name=f"notify-{gid}", daemon=True)
            self._threads.append(t)
            t.start()
        else:
            run()
        return True

    def drain(self, timeout: float = 60.0) -> None:
        for t in list(self._threads):
            t.join(timeout)
        self._threads = [t for t in self._threads if t.is_alive()]
