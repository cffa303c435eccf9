"""``submit --take N``: a refusal's alternative N written into a copy of the spec file.

The copy keeps the file's words, comments and layout: only the budget lines the alternative
changes are rewritten (a key it adds goes after the budget's last key, a key it drops is
removed), and jobs wider than a narrower window are narrowed to it. The result is checked
by loading it: it must be the spec with exactly those changes, else the file is not written
and the line says what to change by hand. JSON files are written again whole (they have no
comments to keep).
"""

from __future__ import annotations

import difflib
import json
import os
import re
from pathlib import Path
from typing import Any

from cellsched.errors import BadInput, one_line
from cellsched.files import check_writable, read_bytes

ORDER = ("gpu_hours", "gpus", "pool", "gpu_type", "deadline")


def target_path(path: Path, n: int) -> Path:
    """``spec.toml`` → ``spec.alt1.toml``, next to the original."""
    return path.with_name(f"{path.stem}.alt{n}{path.suffix}")


def changed_spec(spec: Any, changes: dict[str, Any]) -> Any:
    """The ProjectSpec with the alternative's ``changes`` (JSON keys) made; jobs wider
    than the new width narrowed to it."""
    from cellsched.spec.models import ProjectSpec

    data = spec.model_dump(mode="json", exclude_none=True)
    budget = data["budget"]
    for k, v in changes.items():
        if v is None:
            budget.pop(k, None)
        else:
            budget[k] = v
    width = budget["gpus"]
    for job in data.get("jobs", []):
        if job.get("gpus", 1) > width:
            job["gpus"] = width
    return ProjectSpec.model_validate(data)


def _value(k: str, v: Any, kind: str) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, str):
        return json.dumps(v)  # a quoted string reads the same in TOML and YAML
    return repr(v) if isinstance(v, float) else str(v)


def _section(lines: list[str], kind: str) -> tuple[int, int] | None:
    """[first, end) of the budget's key lines, or None if the layout is not a plain table."""
    if kind == "toml":
        head = next((i for i, l in enumerate(lines) if re.match(r"\s*\[budget\]\s*(#.*)?$", l)), None)
        if head is None:
            return None
        end = next((i for i in range(head + 1, len(lines)) if re.match(r"\s*\[", lines[i])), len(lines))
        return head + 1, end
    head = next((i for i, l in enumerate(lines) if re.match(r"budget:\s*(#.*)?$", l)), None)
    if head is None:
        return None
    end = next((i for i in range(head + 1, len(lines)) if lines[i].strip() and not lines[i][0].isspace()),
               len(lines))
    return head + 1, end


def _edit(text: str, kind: str, changes: dict[str, Any], width: int) -> str | None:
    lines = text.splitlines(keepends=True)
    sec = _section(lines, kind)
    if sec is None:
        return None
    a, b = sec
    sep = "=" if kind == "toml" else ":"
    indent = "" if kind == "toml" else next(
        (re.match(r"\s*", lines[i]).group(0) for i in range(a, b) if lines[i].strip()), "  ")  # type: ignore[union-attr]
    for k in ORDER:
        if k not in changes:
            continue
        v = changes[k]
        pat = re.compile(rf"^(\s*{k}\s*{sep}[ \t]*)([^#\n]*?)([ \t]*(#.*)?)(\n?)$")
        hit = next((i for i in range(a, b) if pat.match(lines[i].rstrip("\r\n") + "\n")), None)
        if v is None:
            if hit is not None:
                del lines[hit]
                b -= 1
            continue
        if hit is not None:
            m = pat.match(lines[hit].rstrip("\r\n") + "\n")
            assert m is not None
            lines[hit] = f"{m.group(1)}{_value(k, v, kind)}{m.group(3)}\n"
        else:
            last = max((i for i in range(a, b) if lines[i].strip() and not lines[i].lstrip().startswith("#")),
                       default=a - 1)
            lines.insert(last + 1, f"{indent}{k}{' = ' if kind == 'toml' else ': '}{_value(k, v, kind)}\n")
            b += 1
    # Jobs wider than the new width: narrowed to it.
    job_pat = re.compile(r"^(\s*-?\s*gpus\s*[=:]\s*)(\d+)(.*)$" if kind != "toml" else r"^(\s*gpus\s*=\s*)(\d+)(.*)$")
    for i, line in enumerate(lines):
        if a <= i < b:
            continue
        m = job_pat.match(line.rstrip("\n"))
        if m and int(m.group(2)) > width:
            lines[i] = f"{m.group(1)}{width}{m.group(3)}\n"
    return "".join(lines)


def write_taken(path: Path, text: str, kind: str, spec: Any, changes: dict[str, Any], n: int) -> tuple[Path, str]:
    """Write the spec with alternative ``n``'s ``changes`` next to ``path``; (the new
    file, the unified diff). BadInput when the layout cannot be edited or the file exists
    with other words."""
    want = changed_spec(spec, changes)
    width = want.budget.gpus
    if kind == "json":
        data = json.loads(text)
        budget = data.setdefault("budget", {})
        for k in ORDER:
            if k in changes:
                if changes[k] is None:
                    budget.pop(k, None)
                else:
                    budget[k] = changes[k]
        for job in data.get("jobs", []):
            if isinstance(job, dict) and job.get("gpus", 1) > width:
                job["gpus"] = width
        new: str | None = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    else:
        new = _edit(text, kind, changes, width)
    out = target_path(path, n)
    if new is not None and _loads_as(new, kind, str(out)) != want:
        new = None
    if new is None:
        said = ", ".join(f"{k} = {json.dumps(v)}" for k, v in changes.items())
        raise BadInput(f"{path}: --take {n}: cannot edit this layout of the budget; change it by hand: {said}")
    if os.path.lexists(out):
        if not out.is_file():
            check_writable(out)  # a directory, a pipe, a device, a link to nothing: one line
        try:
            same = read_bytes(out, len(new.encode()), str(out)).decode("utf-8", "replace") == new
        except BadInput:  # larger than what would be written, or unreadable
            same = False
        if not same:
            raise BadInput(f"{out}: exists with other words; remove it or rename it to take alternative {n} again")
    else:
        _write(out, new)
    diff = "".join(difflib.unified_diff(text.splitlines(keepends=True), new.splitlines(keepends=True),
                                        fromfile=str(path), tofile=str(out)))
    return out, diff


def check_target(path: Path, n: int) -> None:
    """BadInput naming ``SPEC.altN.EXT`` if it could not be written (checked before the
    spec is planned, so that nothing at all is done). A regular file there is compared
    with what would be written, later, by :func:`write_taken`."""
    target = target_path(path, n)
    if not target.is_file():
        check_writable(target)


def _write(out: Path, text: str) -> None:
    """Write a new file (never one that is there: made with O_EXCL); one line naming it
    if that fails, and no part of it left behind."""
    data = text.encode("utf-8")
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        raise BadInput(f"{one_line(str(out))}: cannot write: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except OSError as e:
        out.unlink(missing_ok=True)
        raise BadInput(f"{one_line(str(out))}: cannot write: {e.strerror}") from None


def _loads_as(text: str, kind: str, where: str) -> Any:
    from cellsched.spec.load import parse_document, validate
    from cellsched.spec.models import ProjectSpec

    try:
        return validate(ProjectSpec, parse_document(text, kind, where), where)
    except BadInput:
        return None
