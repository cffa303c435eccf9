"""Tell someone a project finished: run the spec's ``notify`` command, or POST the report to
its HTTP(S) URL. A failure is returned as text (logged and recorded by the caller), never
raised: the report is already safe in the ledger and on disk before anyone is told.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HTTP_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 30.0


def is_url(target: str) -> bool:
    return target.startswith(("http://", "https://"))


def notify(target: str, report: dict[str, Any], report_path: Path | None) -> str | None:
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
    env = dict(
        os.environ,
        CELLSCHED_PROJECT=str(report.get("project", "")),
        CELLSCHED_STATE=str(report.get("state", "")),
        CELLSCHED_REPORT=str(report_path or ""),
    )
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
