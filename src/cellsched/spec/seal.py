"""The seal: canonical JSON of a validated spec and its SHA-256 digest.

Canonical means: sorted keys, no insignificant whitespace, UTF-8, times as UTC
``YYYY-MM-DDTHH:MM:SSZ``, GPU-hours as integer GPU-seconds, defaults written out, and
``after`` sorted (its order carries no meaning). Anything that changes meaning changes it.

A spec with ``code`` seals its code too: the ``code`` key (its fields, ``exclude`` sorted,
``commit`` the full SHA, and the snapshot's ``digest``) is present only then, so specs
without code keep the digests they always had. Likewise ``kind`` is present only for
best-effort work (``"kind": "best-effort"``) and a job's ``count`` only when it is not 1, so
every spec written before best-effort work existed keeps its digest.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

from cellsched.errors import BadInput
from cellsched.spec.models import Code, ProjectSpec

DIGEST_SHORT = 12


def _time(value: dt.datetime | None) -> str | None:
    # isoformat, not strftime("%Y"): the C library does not pad years before 1000.
    return None if value is None else value.astimezone(dt.timezone.utc).replace(tzinfo=None).isoformat() + "Z"


def _code(code: Code) -> dict[str, Any]:
    if code.digest is None:
        raise BadInput("code: not snapshotted yet (specs with code are sealed from their file: "
                       "cellsched.spec.load.load_sealed)")
    return {
        "dir": code.dir,
        "git": code.git,
        "commit": code.commit,
        "exclude": list(code.exclude),
        "max_mib": code.max_mib,
        "requirements": code.requirements,
        "digest": code.digest,
    }


def canonical_dict(spec: ProjectSpec) -> dict[str, Any]:
    out = _canonical_words(spec)
    if spec.kind != "guaranteed":
        out["kind"] = spec.kind
    for job, item in zip(spec.jobs, out["jobs"]):
        if job.count != 1:
            item["count"] = job.count
    if spec.code is not None:
        out["code"] = _code(spec.code)
    return out


def _canonical_words(spec: ProjectSpec) -> dict[str, Any]:
    b = spec.budget
    return {
        "name": spec.name,
        "team": spec.team,
        "owner": spec.owner,
        "problem": spec.problem,
        "replaces": spec.replaces,
        "notify": spec.notify,
        "budget": {
            "gpu_seconds": b.gpu_seconds,
            "gpus": b.gpus,
            "pool": b.pool,
            "gpu_type": b.gpu_type,
            "not_before": _time(b.not_before),
            "deadline": _time(b.deadline),
        },
        "jobs": [
            {
                "name": j.name,
                "run": j.run if isinstance(j.run, str) else list(j.run),
                "gpus": j.gpus,
                "cpus": j.cpus,
                "after": sorted(j.after),
                "retries": j.retries,
                "env": dict(j.env),
            }
            for j in spec.jobs
        ],
    }


def canonical_json(spec: ProjectSpec) -> str:
    return json.dumps(canonical_dict(spec), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(spec: ProjectSpec) -> str:
    return hashlib.sha256(canonical_json(spec).encode("utf-8")).hexdigest()


def project_id(spec: ProjectSpec, spec_digest: str | None = None) -> str:
    return f"{spec.name}@{(spec_digest or digest(spec))[:DIGEST_SHORT]}"


def from_canonical(text: str) -> ProjectSpec:
    """Rebuild the spec from its sealed JSON (as stored in the ledger)."""
    data = json.loads(text)
    budget = dict(data["budget"])
    budget["gpu_hours"] = budget.pop("gpu_seconds") / 3600
    data["budget"] = {k: v for k, v in budget.items() if v is not None}
    data = {k: v for k, v in data.items() if v is not None}
    return ProjectSpec.model_validate(data, context={"sealed": True})
