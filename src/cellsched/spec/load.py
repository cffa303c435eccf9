"""Reading specs and cluster configs from TOML, YAML or JSON files.

Every way a file can be wrong becomes one :class:`BadInput` line naming the file and,
where there is one, the field: ``projects/x.toml: budget.gpus: must be at least 1``.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from cellsched.errors import BadInput, NotFound
from cellsched.spec.cluster import ClusterConfig
from cellsched.spec.models import ProjectSpec

MAX_BYTES = 1_000_000
SUFFIXES = {".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".json": "json"}

M = TypeVar("M", bound=BaseModel)

if TYPE_CHECKING:
    from cellsched.spec.code import Snapshot


def read_text(path: Path) -> str:
    """The file's text, or a clear error: missing, a directory, too big, not UTF-8, empty."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise NotFound(f"{path}: no such file") from None
    except OSError as e:
        raise BadInput(f"{path}: cannot read: {e.strerror}") from None
    if path.is_dir():
        raise BadInput(f"{path}: is a directory, not a file")
    if size > MAX_BYTES:
        raise BadInput(f"{path}: {size:,} bytes is too large (limit {MAX_BYTES:,})")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise BadInput(f"{path}: cannot read: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInput(f"{path}: not UTF-8 text (bad byte at offset {e.start})") from None
    if not text.strip():
        raise BadInput(f"{path}: file is empty")
    return text


def parse_document(text: str, kind: str, where: str) -> dict[str, Any]:
    """Parse TOML/YAML/JSON text into a mapping; syntax errors name the file."""
    try:
        if kind == "toml":
            data: Any = tomllib.loads(text)
        elif kind == "json":
            data = json.loads(text)
        else:
            import yaml  # lazy: only YAML users pay for it

            data = yaml.safe_load(text)
    except Exception as e:  # every parser has its own error types; all mean "bad syntax"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadInput(f"{where}: not valid {kind.upper()}: {first}") from None
    if not isinstance(data, dict):
        raise BadInput(f"{where}: expected a table of keys at the top, got {type(data).__name__}")
    return data


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top)"


_FIELD_PREFIX = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*): (.*)$", re.S)


def _echo(err: Any) -> bool:
    ctx = err.get("ctx") or {}
    return (
        err["type"] == "too_short"
        and isinstance(err.get("input"), (list, tuple))
        and len(err["input"]) > ctx.get("actual_length", len(err["input"]))
    )


def describe(e: ValidationError) -> str:
    """One line for the first problem in a pydantic error (and how many more there are)."""
    errors = e.errors(include_url=False)
    # A list whose items failed is also reported "too short after validation": that is the
    # same problem again, and would show as a misleading "(and 1 more)".
    errors = [x for x in errors if not _echo(x)] or errors
    # A misspelt key also shows as the right key missing: name the misspelling first.
    errors.sort(key=lambda x: x["type"] != "extra_forbidden")
    err = errors[0]
    loc = _loc(tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))))
    kind = err["type"]
    if kind == "extra_forbidden":
        msg = "unknown key"
    elif kind == "missing":
        msg = "required key is missing"
    else:
        msg = err["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
        # Model-level validators name the field themselves: "deadline: window is too short".
        m = _FIELD_PREFIX.match(msg)
        if m:
            loc = m.group(1) if loc == "(top)" else f"{loc}.{m.group(1)}"
            msg = m.group(2)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return " ".join(f"{loc}: {msg}".split()) + more


def validate(model: type[M], data: dict[str, Any], where: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise BadInput(f"{where}: {describe(e)}") from None
    except (ValueError, TypeError, OverflowError) as e:  # e.g. times out of range
        raise BadInput(f"{where}: {' '.join(str(e).split())}") from None


def load_mapping(path: Path) -> dict[str, Any]:
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise BadInput(f"{path}: unknown file type {path.suffix!r} (use .toml, .yaml, .yml or .json)")
    return parse_document(read_text(path), kind, str(path))


@dataclass(frozen=True)
class Sealed:
    """A spec ready to seal, and its code's snapshot (None for a spec without ``code``)."""

    spec: ProjectSpec
    code: Snapshot | None


def load_written(path: str | Path) -> ProjectSpec:
    """Load and validate a spec as written: its ``code`` (if any) not yet snapshotted, so
    it cannot be sealed. For comparing a file with a sealed spec; otherwise use
    :func:`load_spec`."""
    p = Path(path)
    return validate(ProjectSpec, load_mapping(p), str(p))


def load_sealed(path: str | Path) -> Sealed:
    """Load and validate a spec and snapshot its code (relative to the file's directory);
    raises :class:`BadInput` with one clear line, before anything is written anywhere."""
    p = Path(path)
    spec = load_written(p)
    if spec.code is None:
        return Sealed(spec, None)
    from cellsched.spec.code import snapshot

    code, snap = snapshot(spec.code, p.parent, str(p))
    return Sealed(spec.model_copy(update={"code": code}), snap)


def load_spec(path: str | Path) -> ProjectSpec:
    """Load and validate a project spec, its code snapshotted (so it can be sealed); raises
    :class:`BadInput` with one clear line."""
    return load_sealed(path).spec


def load_cluster(path: str | Path) -> ClusterConfig:
    """Load and validate ``cluster.toml`` (or .yaml/.json)."""
    p = Path(path)
    return validate(ClusterConfig, load_mapping(p), str(p))
