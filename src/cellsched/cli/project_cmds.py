"""Project commands: validate, submit, cancel, verify."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cellsched.cli.errors import handled
from cellsched.cli.render import emit_json, hours, iso, local
from cellsched.cli.state import JsonFlag, caller, env


@handled
def validate(
    files: Annotated[list[Path], typer.Argument(help="Spec files (.toml, .yaml, .yml, .json).")],
    json_out: JsonFlag = False,
) -> None:
    """Check and seal project specs; print each one's id and digest.

    A spec with code also gets its code snapshotted: the code's digest, files and size are
    printed under it. Nothing is written. Exit 2 at the first bad file, with one line naming
    the file and field.

    **Example**: cellsched validate projects/*.toml
    """
    from cellsched.spec.load import load_sealed
    from cellsched.spec.seal import digest, project_id

    out = []
    for f in files:
        sealed = load_sealed(f)
        d = digest(sealed.spec)
        item = {"file": str(f), "name": sealed.spec.name, "id": project_id(sealed.spec, d), "digest": d}
        if sealed.code is not None:
            item["code"] = sealed.code.to_json()
        out.append(item)
    if json_out:
        emit_json(out)
        return
    for item in out:
        print(f"ok  {item['id']}  {item['file']}  sha256:{item['digest']}")
        if "code" in item:
            print("    " + _code_line(item["code"]))


def _files(n: int) -> str:
    return f"{n} file{'s' if n != 1 else ''}"


def _code_line(code: dict) -> str:  # type: ignore[type-arg]
    return (f"code sha256:{code['digest']}  {_files(code['files'])}, {_size(code['bytes'])} "
            f"({_size(code['packed_bytes'])} packed)  from {code['source']}")


def _size(n: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


@handled
def submit(
    spec: Annotated[Path, typer.Argument(help="The project spec to submit.")],
    json_out: JsonFlag = False,
) -> None:
    """Submit a spec: granted with a guaranteed window (exit 0) or refused with the reason
    and the nearest thing that would be granted (exit 1).

    Submitting the same spec again returns the existing grant. A spec with
    replaces = "name@digest" swaps the old grant for the new one atomically, or leaves it.
    A spec with code has it snapshotted now and stored with the grant: later edits to the
    directory change nothing about what runs.

    **Example**: cellsched submit projects/pythia-ablation.toml
    """
    from cellsched import service
    from cellsched.runtime.clock import now_s
    from cellsched.spec.load import load_sealed

    parsed = load_sealed(spec)  # bad input (the code's too) fails here, before the ledger is opened
    e = env()
    outcome = service.submit(e, parsed, caller(), now_s())
    if json_out:
        data = outcome.to_json()
        _iso_times(data)
        emit_json(data)
    elif outcome.granted:
        g = outcome.grant
        assert g is not None
        pool = e.cluster.pool(g.pool)
        gpu_type = pool.gpu_type if pool else g.pool
        again = "  (already granted)" if outcome.existing else ""
        print(f"granted  {outcome.project_id}   {g.width} × {gpu_type}  {local(g.start)} → {local(g.end)}{again}")
        if outcome.remaining_gs is not None and outcome.allowance_gs is not None:
            team = e.cluster.team(g.team)
            period = team.period if team else "period"
            when = "in total" if period == "none" else f"this {period}"
            print(f"  {hours(g.charged_gs / 3600)} GPU-hours charged to team {g.team} "
                  f"(remaining {when}: {hours(outcome.remaining_gs / 3600)} of {hours(outcome.allowance_gs / 3600)})")
        if outcome.replaced:
            print(f"  replaces {outcome.replaced} (its unheld GPU-hours refunded)")
        if outcome.code is not None and "files" in outcome.code:
            print(f"  {_code_line(outcome.code)}")
        print(f"  receipt: grant {g.id}, signed; check with `cellsched verify {outcome.project_id}`")
    else:
        r = outcome.refusal
        assert r is not None
        print(f"refused  {outcome.project_id}  {r.reason}: {r.message}")
        if r.alternatives:
            print("  would be granted now: " + "; or ".join(a.message for a in r.alternatives))
    if not outcome.granted:
        raise typer.Exit(1)


def _iso_times(data: dict) -> None:  # type: ignore[type-arg]
    """Add ISO UTC beside every epoch field so programs need not convert."""
    for obj in (data.get("grant"), data.get("refusal")):
        if not obj:
            continue
        for k in ("start", "end", "promised_start", "promised_end", "started_at", "ended_at", "earliest_start"):
            if k in obj:
                obj[k + "_utc"] = iso(obj[k])
        for alt in obj.get("alternatives", []):
            alt["start_utc"], alt["end_utc"] = iso(alt["start"]), iso(alt["end"])


@handled
def cancel(
    project: Annotated[str, typer.Argument(help="Project name (or name@digest).")],
    json_out: JsonFlag = False,
) -> None:
    """Cancel a project's grant: its GPUs are free at once, what was not held is refunded.

    Only members of the owning team and admins may cancel.

    **Example**: cellsched cancel pythia-ablation
    """
    from cellsched import service
    from cellsched.runtime.clock import now_s

    out = service.cancel(env(), project, caller(), now_s())
    if json_out:
        _iso_times(out)
        emit_json(out)
        return
    print(f"cancelled  {out['project']}  refunded {hours(out['refunded_gpu_hours'])} GPU-hours")


@handled
def verify(
    project: Annotated[str, typer.Argument(help="Project name (or name@digest).")],
    spec: Annotated[Optional[Path], typer.Option("--spec", help="Also check this spec file is the sealed one.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Check a grant's receipt signature (cluster public key) and the sealed spec's digest;
    for a spec with code, that the stored code snapshot has the sealed digest.

    With --spec, also that the file is the sealed spec, and whether its code has changed
    since submit (not a failure: the job runs the sealed snapshot). Exit 1 if anything
    does not match.

    **Example**: cellsched verify pythia-ablation --spec projects/pythia-ablation.toml
    """
    from cellsched import service

    out = service.verify(env(), project, spec)
    if json_out:
        # Beside the receipt, not inside it: the signed payload stays exactly as signed.
        for k in ("start", "end", "issued_at"):
            out[k + "_utc"] = iso(out["receipt"].get(k))
        emit_json(out)
        return
    p = out["receipt"]
    print(f"valid  {out['project']}  sha256:{out['digest']}")
    print(f"  signed grant {p['grant']}: {p['width']} GPUs of {p['pool']} {local(p['start'])} → {local(p['end'])}")
    code = out.get("code")
    if code is not None:
        print(f"  code sha256:{code['digest']}  {_files(code['files'])}, {_size(code['bytes'])}: "
              "the stored snapshot is intact")
        if code.get("now") == "unchanged":
            print("  the spec file's code is unchanged since submit")
        elif "note" in code:
            print(f"  note: {code['note']}")
