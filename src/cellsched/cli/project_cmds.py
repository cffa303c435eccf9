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
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Decide and print the answer; write nothing.")] = False,
    replace: Annotated[bool, typer.Option("--replace", help="Replace the live grant of the spec's name.")] = False,
    take: Annotated[Optional[int], typer.Option(
        "--take", metavar="N", min=1,
        help="Write the spec with the refusal's alternative N applied next to it (shown as a diff), "
             "then submit that file.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Submit a spec: granted with a guaranteed window (exit 0) or refused with the reason
    and the nearest things that would be granted (exit 1).

    A spec with kind = "best-effort" is queued instead (exit 0): no window, its tasks run on
    idle GPUs and may be preempted; refused (exit 1) if the team has no best-effort
    allowance left (docs/lending.md).

    Submitting the same spec again returns the existing grant. Another version of a project
    with a live grant is refused (name_in_use) unless it replaces it: replaces =
    "name@digest" in the spec, or --replace. The old grant is swapped for the new one
    atomically, or left. A spec with code has it snapshotted now and stored with the grant:
    later edits to the directory change nothing about what runs.

    --dry-run (or `cellsched plan`) gives the same answer and writes nothing. --take N
    writes SPEC.altN.toml with alternative N of the refusal applied (the change printed as
    a diff) and submits it as a new sealed spec.

    **Example**: cellsched submit projects/pythia-ablation.toml
    """
    if take is not None:
        if dry_run:
            from cellsched.errors import BadInput

            raise BadInput("--take and --dry-run: take submits the changed spec; plan it with `cellsched plan` first")
        _take(spec, take, replace, json_out)
        return
    spec_in, snap = read_spec(spec)  # bad input (the code's too) fails here, before the ledger is opened
    b = backend()
    data = b.submit(spec_in, snap, dry_run=dry_run, replace=replace)
    if json_out:
        emit_json(data)
    else:
        print_answer(b, data, spec)
    if data["decision"] not in ("granted", "queued"):  # queued: best-effort work accepted
        raise typer.Exit(1)


@handled
def plan(
    spec: Annotated[Path, typer.Argument(help="The project spec to plan.")],
    replace: Annotated[bool, typer.Option("--replace", help="As if it replaced the live grant of its name.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """What submit would answer now (window or refusal, alternatives, charge), with nothing
    written: `cellsched submit --dry-run`. Exit 0 if it would be granted, 1 if refused.

    **Example**: cellsched plan projects/pythia-ablation.toml
    """
    submit(spec, dry_run=True, replace=replace, take=None, json_out=json_out)


def print_answer(b: Any, data: dict, spec: Path | None = None) -> None:  # type: ignore[type-arg]
    """A submit's answer for people (granted, or refused with its alternatives; best-effort
    work queued or refused)."""
    if data.get("kind") == "best-effort":
        from cellsched.cli import best_effort

        best_effort.print_submit(data, b.cluster())
        return
    would = data.get("dry_run")
    if data["decision"] == "granted":
        g = data["grant"]
        facts = b.cluster()
        pool = facts["pools"].get(g["pool"])
        gpu_type = pool["gpu_type"] if pool else g["pool"]
        again = "  (already granted)" if data["existing"] else ""
        word = "would be granted" if would and not data["existing"] else "granted"
        print(f"{word}  {data['project']}   {g['width']} × {gpu_type}  {fmt.span(g['start'], g['end'])}{again}")
        line = expected_line(data.get("expected_start"), data.get("expected_start_basis"), g["start"])
        if line:
            print(f"  {line}")
        delay = data.get("delay")
        if delay:
            print(f"  {delay['message']}")
            if delay["sooner"]:
                print("  to start sooner: " + "; or ".join(a["message"] for a in delay["sooner"]))
        if data.get("remaining_gpu_hours") is not None and data.get("allowance_gpu_hours") is not None:
            # What remains is of the period the window starts in (the service names it).
            when = data.get("remaining_period")
            if when is None:  # (a server from before it named it)
                team = facts["teams"].get(g["team"])
                period = team["period"] if team else "period"
                when = "in total" if period == "none" else f"this {period}"
            charged = "would be charged" if would and not data["existing"] else "charged"
            print(f"  {gpu_hours(g['gpu_hours'])} GPU-hours {charged} to team {g['team']} "
                  f"(remaining {when}: {gpu_hours(data['remaining_gpu_hours'])} "
                  f"of {gpu_hours(data['allowance_gpu_hours'])})")
        if data.get("replaced"):
            print(f"  replaces {data['replaced']} (its unheld GPU-hours refunded)")
        code = data.get("code")
        if code is not None and "files" in code:
            print(f"  {_code_line(code)}")
        if would and not data["existing"]:
            print("  nothing written (dry run): submit it to be granted")
        else:
            print(f"  receipt: grant {g['id']}, signed; check with `cellsched verify {data['project']}`")
    else:
        r = data["refusal"]
        word = "would be refused" if would else "refused"
        print(f"{word}  {data['project']}  {r['reason']}: {r['message']}")
        alts = r["alternatives"]
        if len(alts) == 1:
            print("  would be granted now: " + alts[0]["message"])
        elif alts:
            print("  would be granted now:")
            for i, a in enumerate(alts, 1):
                print(f"    {i}. {a['message']}")
        if alts and spec is not None:
            print(f"  take one: cellsched submit {spec} --take N")


def expected_line(expected: int | None, basis: str | None, start: int) -> str:
    """Beside a waiting grant's window, when it will probably start and on what that rests
    (``cellsched.expected``); nothing for a window that has begun (its basis says so)."""
    if expected is None or basis in ("starts now", "started"):
        return ""
    if basis is not None and basis.startswith("not estimated"):
        return f"expected start {basis}"
    ahead = start - expected
    rel = f"{fmt.duration(ahead)} before the guaranteed start" if ahead > 0 else "the guaranteed start"
    return f"expected start {fmt.when(expected)} ({rel}) — {basis}"


def _take(spec: Path, n: int, replace: bool, json_out: bool) -> None:
    """``submit --take N``: plan the spec, write alternative N into a copy, submit the copy."""
    from cellsched import ops
    from cellsched.cli import take
    from cellsched.errors import BadInput

    spec_in, snap = read_spec(spec)
    take.check_target(spec, n)  # before the ledger or the server is asked anything
    b = backend()
    first = b.submit(spec_in, snap, dry_run=True, replace=replace)
    if first["decision"] != "refused":
        raise BadInput(f"{spec}: --take {n}: the spec would be {first['decision']} as it is; submit it")
    alts = first["refusal"]["alternatives"]
    if n > len(alts):
        offered = "no alternative" if not alts else f"alternatives 1 to {len(alts)}" if len(alts) > 1 else "alternative 1"
        raise BadInput(f"{spec}: --take {n}: the refusal ({first['refusal']['reason']}) offers {offered}")
    alt = alts[n - 1]
    kind = ops.spec_kind(str(spec))
    new, diff = take.write_taken(spec, spec_in.text, kind, ops.written_spec(spec_in), alt["changes"], n)
    new_in, new_snap = read_spec(new)
    data = b.submit(new_in, new_snap, dry_run=False, replace=replace)
    if json_out:
        emit_json({**data, "took": {"alternative": n, "kind": alt["kind"], "from": str(spec), "file": str(new),
                                    "changes": alt["changes"], "diff": diff}})
    else:
        print(f"took alternative {n} ({alt['kind']}): {alt['message']}")
        print(f"wrote {new}")
        sys.stdout.write(diff if diff.endswith("\n") else diff + "\n")
        print_answer(b, data)
    if data["decision"] != "granted":
        raise typer.Exit(1)


@handled
def cancel(
    project: Annotated[str, typer.Argument(help="Project name (or name@digest).")],
    json_out: JsonFlag = False,
) -> None:
    """Cancel a project's grant: its GPUs are free at once, what was not held is refunded.

    A best-effort submission: its queued tasks are cancelled at once; running ones are
    stopped by the daemon (SIGTERM, then SIGKILL after the grace), charged for what they held.

    Only members of the owning team and admins may cancel.

    **Example**: cellsched cancel pythia-ablation
    """
    out = backend().cancel(project)
    if json_out:
        emit_json(out)
        return
    if out.get("kind") == "best-effort":
        from cellsched.cli import best_effort

        best_effort.print_cancel(out)
        return
    g = out["grant"]
    print(f"cancelled  {out['project']}  grant {g['id']} ({g['width']} × {g['pool']} from {fmt.when(g['start'])}); "
          f"refunded {gpu_hours(out['refunded_gpu_hours'])} GPU-hours")


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
