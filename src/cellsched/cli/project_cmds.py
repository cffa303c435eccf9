"""Project commands: validate, submit, cancel, verify.

Each reads its spec file here (the code snapshot too: the code is on this machine), asks
the backend (``cli/state.py``) and prints from the JSON it answers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from cellsched import fmt
from cellsched.cli.errors import handled
from cellsched.cli.state import JsonFlag, backend
from cellsched.fmt import emit_json, gpu_hours

if TYPE_CHECKING:
    from cellsched.ops import SpecIn
    from cellsched.spec.code import Snapshot


def read_spec(path: Path) -> tuple[SpecIn, Snapshot | None]:
    """A spec file as the backends take it, its code snapshotted (relative to the file's
    directory): ``load_sealed``'s checks in its order, with its lines."""
    from cellsched import ops
    from cellsched.spec.load import read_text

    ops.spec_kind(str(path))
    spec = ops.SpecIn(file=str(path), text=read_text(path))
    written = ops.written_spec(spec)
    if written.code is None:
        return spec, None
    from cellsched.spec.code import snapshot

    code, snap = snapshot(written.code, path.parent, str(path))
    commit = code.commit if written.code.git is not None else None
    return spec.model_copy(update={"code": ops.CodeRef.of(snap, commit)}), snap


@handled
def validate(
    files: Annotated[list[Path], typer.Argument(help="Spec files (.toml, .yaml, .yml, .json).")],
    json_out: JsonFlag = False,
) -> None:
    """Check and seal project specs; print each one's id and digest.

    A spec with code also gets its code snapshotted: the code's digest, files and size are
    printed under it. Nothing is written. Every file is checked: each bad one is one line on
    stderr naming the file and field (with --json, an item with its "error"), and the exit
    code is 2 if any was bad.

    **Example**: cellsched validate projects/*.toml
    """
    from cellsched.errors import CellschedError

    out: list[dict[str, Any]] = []
    worst = 0
    b = backend()
    for f in files:
        try:
            out.extend(b.validate([read_spec(f)[0]]))
        except CellschedError as e:
            worst = max(worst, e.exit_code)
            out.append({"file": str(f), "error": e.message, "exit_code": e.exit_code})
    if json_out:
        emit_json(out)
    else:
        for item in out:
            if "error" in item:
                print(f"cellsched: {item['error']}", file=sys.stderr, flush=True)
                continue
            print(f"ok  {item['id']}  {item['file']}  sha256:{item['digest']}", flush=True)
            if "code" in item:
                print("    " + _code_line(item["code"]), flush=True)
    if worst:
        raise typer.Exit(worst)


def _code_line(code: dict) -> str:  # type: ignore[type-arg]
    return (f"code sha256:{code['digest']}  {fmt.plural(code['files'], 'file')}, {fmt.size(code['bytes'])} "
            f"({fmt.size(code['packed_bytes'])} packed)  from {code['source']}")


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
    spec_in, snap = read_spec(spec)  # bad input (the code's too) fails here, before the ledger is opened
    b = backend()
    data = b.submit(spec_in, snap)
    if json_out:
        emit_json(data)
    elif data["decision"] == "granted":
        g = data["grant"]
        facts = b.cluster()
        pool = facts["pools"].get(g["pool"])
        gpu_type = pool["gpu_type"] if pool else g["pool"]
        again = "  (already granted)" if data["existing"] else ""
        print(f"granted  {data['project']}   {g['width']} × {gpu_type}  {fmt.span(g['start'], g['end'])}{again}")
        if data.get("remaining_gpu_hours") is not None and data.get("allowance_gpu_hours") is not None:
            team = facts["teams"].get(g["team"])
            period = team["period"] if team else "period"
            when = "in total" if period == "none" else f"this {period}"
            print(f"  {gpu_hours(g['gpu_hours'])} GPU-hours charged to team {g['team']} "
                  f"(remaining {when}: {gpu_hours(data['remaining_gpu_hours'])} "
                  f"of {gpu_hours(data['allowance_gpu_hours'])})")
        if data.get("replaced"):
            print(f"  replaces {data['replaced']} (its unheld GPU-hours refunded)")
        code = data.get("code")
        if code is not None and "files" in code:
            print(f"  {_code_line(code)}")
        print(f"  receipt: grant {g['id']}, signed; check with `cellsched verify {data['project']}`")
    else:
        r = data["refusal"]
        print(f"refused  {data['project']}  {r['reason']}: {r['message']}")
        if r["alternatives"]:
            print("  would be granted now: " + "; or ".join(a["message"] for a in r["alternatives"]))
    if data["decision"] != "granted":
        raise typer.Exit(1)


@handled
def cancel(
    project: Annotated[str, typer.Argument(help="Project name (or name@digest).")],
    json_out: JsonFlag = False,
) -> None:
    """Cancel a project's grant: its GPUs are free at once, what was not held is refunded.

    Only members of the owning team and admins may cancel.

    **Example**: cellsched cancel pythia-ablation
    """
    out = backend().cancel(project)
    if json_out:
        emit_json(out)
        return
    print(f"cancelled  {out['project']}  refunded {gpu_hours(out['refunded_gpu_hours'])} GPU-hours")


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
    spec_in, code_now = (None, None) if spec is None else _spec_today(spec)
    out = backend().verify(project, spec_in, code_now)
    if json_out:
        emit_json(out)
        return
    p = out["receipt"]
    print(f"valid  {out['project']}  sha256:{out['digest']}")
    print(f"  signed grant {p['grant']}: {fmt.plural(p['width'], 'GPU')} of {p['pool']} {fmt.span(p['start'], p['end'])}")
    code = out.get("code")
    if code is not None:
        print(f"  code sha256:{code['digest']}  {fmt.plural(code['files'], 'file')}, {fmt.size(code['bytes'])}: "
              "the stored snapshot is intact")
        if code.get("now") == "unchanged":
            print("  the spec file's code is unchanged since submit")
        elif "note" in code:
            print(f"  note: {code['note']}")


def _spec_today(path: Path) -> tuple[SpecIn, Any]:
    """``verify --spec``: the file's words, and its code's snapshot digest today (or why
    it cannot be snapshotted: no failure, the job runs the sealed snapshot)."""
    from cellsched import ops
    from cellsched.errors import BadInput
    from cellsched.spec.load import read_text

    ops.spec_kind(str(path))
    spec = ops.SpecIn(file=str(path), text=read_text(path))
    written = ops.written_spec(spec)
    if written.code is None:
        return spec, None
    from cellsched.spec.code import snapshot

    try:
        _code, snap = snapshot(written.code, path.parent, str(path))
    except BadInput as e:
        return spec, ops.CodeNow(problem=e.message)
    return spec, ops.CodeNow(digest=snap.digest)
