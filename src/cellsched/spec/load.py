"""Reading specs and cluster configs from TOML, YAML or JSON files.

Every way a file can be wrong becomes one :class:`BadInput` line naming the file and,
where there is one, the field: ``projects/x.toml: budget.gpus: must be at least 1``.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import re
import tomllib
import types
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from cellsched.errors import BadInput, one_line
from cellsched.files import read_bytes
from cellsched.spec.cluster import ClusterConfig
from cellsched.spec.models import ProjectSpec, Problems

MAX_BYTES = 1_000_000
MAX_PROBLEMS = 10  # shown on the error's one line; the count says how many there are
BOM = "\ufeff"
SUFFIXES = {".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".json": "json"}

M = TypeVar("M", bound=BaseModel)

if TYPE_CHECKING:
    from cellsched.spec.code import Snapshot


def read_text(path: Path) -> str:
    """The file's text, or a clear error: missing, a directory, a named pipe or a device
    (only a regular file is read, never more than :data:`MAX_BYTES` of it, and a pipe never
    blocks), too big, not UTF-8, empty. A UTF-8 byte order mark at the start is kept (the
    text goes as it is to the server); :func:`parse_document` drops it."""
    where = one_line(str(path))
    raw = read_bytes(path, MAX_BYTES, where)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInput(f"{where}: not UTF-8 text (bad byte at offset {e.start})") from None
    if not text.removeprefix(BOM).strip():
        raise BadInput(f"{where}: file is empty")
    return text


def parse_document(text: str, kind: str, where: str) -> dict[str, Any]:
    """Parse TOML/YAML/JSON text into a mapping; syntax errors name the file, the line and
    the column. One byte order mark at the start is dropped: editors on Windows write one,
    it is not part of the text, and a spec seals the same with it or without it."""
    where = one_line(where)
    text = text.removeprefix(BOM)
    if not text.strip():
        raise BadInput(f"{where}: file is empty")
    try:
        if kind == "toml":
            data: Any = tomllib.loads(text)
        elif kind == "json":
            data = json.loads(text, object_pairs_hook=_unique_pairs)
        else:  # (yaml is imported there, lazily: only YAML users pay for it)
            data = _yaml_load(text)
    except Exception as e:  # every parser has its own error types; all mean "bad syntax"
        raise BadInput(f"{where}: not valid {kind.upper()}: {syntax_error(e, text)}") from None
    if not isinstance(data, dict):
        raise BadInput(f"{where}: expected a table of keys at the top, got {type(data).__name__}")
    return data


class DuplicateKey(ValueError):
    """A key written twice in one table of a JSON document (TOML refuses it itself)."""


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict, refusing a key it has twice: else the last one would win
    without a word, and the spec sealed would not be the one the reader sees."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(f"duplicate key {key!r}")
        out[key] = value
    return out


def _yaml_load(text: str) -> Any:
    """PyYAML's safe load (plain data only), refusing a key written twice in one mapping at
    any depth. Checked on the composed nodes, before anything is built: a key brought in by
    a merge (``<<: *base``) may be overridden, as YAML says (building merges rewrites the
    merged mappings in place, so a check while building would see their keys twice)."""
    import yaml
    from yaml.constructor import ConstructorError

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    seen_nodes: set[int] = set()
    twice = []  # every key written twice: the first in the text is the one named
    todo = [] if root is None else [root]
    while todo:
        node = todo.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[tuple[str, str]] = set()
            for key_node, value_node in node.value:
                todo.extend((key_node, value_node))
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = (key_node.tag, key_node.value)
                if key in keys:
                    twice.append(key_node)
                keys.add(key)
        elif isinstance(node, yaml.SequenceNode):
            todo.extend(node.value)
    if twice:
        first = min(twice, key=lambda n: (n.start_mark.line, n.start_mark.column))
        raise ConstructorError(None, None, f"duplicate key {first.value!r}", first.start_mark)
    return yaml.safe_load(text)


_TOML_AT = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|(end of document))\)\s*$")


def syntax_error(e: Exception, text: str) -> str:
    """A parser's error as ``line L, column C: what`` (both counted from 1), whichever of
    tomllib, json or PyYAML raised it; its first line when it says no place."""
    what = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    place = ""
    if isinstance(e, json.JSONDecodeError):
        what, place = e.msg, f"line {e.lineno}, column {e.colno}"
    elif isinstance(e, tomllib.TOMLDecodeError):
        m = _TOML_AT.search(what)
        if m:
            what = what[: m.start()]
            place = "at the end" if m.group(3) else f"line {m.group(1)}, column {m.group(2)}"
    else:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        problem = getattr(e, "problem", None) or getattr(e, "context", None)
        if mark is not None and problem:
            what, place = problem, f"line {mark.line + 1}, column {mark.column + 1}"
            context, cmark = getattr(e, "context", None), getattr(e, "context_mark", None)
            if context and cmark is not None and problem != context:
                what += f" ({context} from line {cmark.line + 1})"
        elif isinstance(getattr(e, "position", None), int):  # yaml's ReaderError: a bad character
            pos = e.position  # type: ignore[attr-defined]
            line = text.count("\n", 0, pos) + 1
            column = pos - (text.rfind("\n", 0, pos) + 1) + 1
            place = f"line {line}, column {column}"
            what = what.split(" in \"<", 1)[0]
    what = what.strip()
    if what[:1].isupper() and what[1:2].islower():
        what = what[0].lower() + what[1:]
    return one_line(f"{place}: {what}" if place else what)


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


# -- what the models expect, found by walking an error's location ---------------------------


def _unwrap(tp: Any) -> Any:
    """The type under ``Annotated`` and ``X | None`` (a model, if a union holds one)."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            if models:
                tp = models[0]
            elif len(args) == 1:
                tp = args[0]
            else:
                return tp
        else:
            return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[FieldInfo | None, Any]:
    """The field a location ends at (None if it ends inside one, at an item) and its type;
    ``(None, None)`` where the models have nothing there."""
    tp: Any = model
    field: FieldInfo | None = None
    for part in loc:
        tp = _unwrap(tp)
        field = None
        if isinstance(part, int):
            if get_origin(tp) not in (list, tuple, set, frozenset):
                return None, None
            tp = get_args(tp)[0] if get_args(tp) else None
        elif _is_model(tp) and part in tp.model_fields:
            field = tp.model_fields[part]
            tp = field.annotation
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        else:
            return None, None
    return field, _unwrap(tp)


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    tp = _walk(model, loc)[1] if loc else model
    return list(tp.model_fields) if _is_model(tp) else []


def _value_at(data: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _suggest(key: Any, model: type[BaseModel], parent: tuple[Any, ...], data: Any) -> str | None:
    """The field a misspelt key most likely stands for: the closest one at its level that
    the document does not already have (None if nothing is close)."""
    given = _value_at(data, parent)
    present = set(given) if isinstance(given, dict) else set()
    candidates = [f for f in _fields_at(model, parent) if f not in present]
    lowered = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(str(key).lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


# -- pydantic's errors in our words ---------------------------------------------------------

_EXPECTED = {
    **dict.fromkeys(("list_type", "tuple_type", "set_type", "frozen_set_type", "iterable_type"), "a list"),
    **dict.fromkeys(("string_type", "string_unicode"), "a string"),
    **dict.fromkeys(("dict_type", "mapping_type", "model_type", "model_attributes_type"), "a table of keys"),
    **dict.fromkeys(("bool_type", "bool_parsing"), "true or false"),
    **dict.fromkeys(("int_type", "int_parsing", "int_from_float"), "a whole number"),
    **dict.fromkeys(("float_type", "float_parsing"), "a number"),
}


def _noun(field: FieldInfo | None, tp: Any) -> str:
    """What a list holds, for ``must be a list of ...``: the field's description, else
    tables (a list of models) or strings."""
    if field is not None and field.description:
        return f" of {field.description}"
    item = _unwrap(get_args(tp)[0]) if get_origin(tp) in (list, tuple) and get_args(tp) else None
    if _is_model(item):
        return " of tables"
    if item is str:
        return " of strings"
    return ""


def got(value: Any) -> str:
    """A value the user wrote, briefly: ``a string "root"``, ``the number 5``, ``a table``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return "a string " + json.dumps(value if len(value) <= 40 else value[:40] + "…", ensure_ascii=False)
    if isinstance(value, (int, float)):
        text = repr(value) if isinstance(value, float) or abs(value) < 10**30 else f"{str(value)[:20]}…"
        return f"the number {text}"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return f"a time {value.isoformat()}"
    return f"a {type(value).__name__}"


def _position(data: Any, loc: tuple[Any, ...]) -> tuple[int, ...]:
    """Where a location is in the document, for listing problems in the order they are
    written: the key's place in each table (a missing key after the table's keys), the
    item's in each list."""
    out = []
    for part in loc:
        if isinstance(data, dict):
            keys = list(data)
            out.append(keys.index(part) if part in data else len(keys))
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            out.append(part)
            data = data[part]
        else:
            out.append(0)
            data = None
    return tuple(out)


def _problems_of(err: Any, model: type[BaseModel], data: Any) -> list[tuple[tuple[Any, ...], str]]:
    """One pydantic error as ``(location, "field: words")`` (a validator may report several)."""
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    kind = err["type"]
    if kind == "extra_forbidden":
        meant = _suggest(loc[-1], model, loc[:-1], data) if loc else None
        return [(loc, "unknown key" + (f" (did you mean {meant}?)" if meant else ""))]
    if kind == "missing":
        return [(loc, "required key is missing")]
    if kind in _EXPECTED:
        field, tp = _walk(model, loc)
        expected = _EXPECTED[kind] + (_noun(field, tp) if _EXPECTED[kind] == "a list" else "")
        return [(loc, f"must be {expected}, got {got(err.get('input'))}")]
    if kind == "literal_error":
        return [(loc, f"must be {(err.get('ctx') or {}).get('expected', '?')}, got {got(err.get('input'))}")]
    error = (err.get("ctx") or {}).get("error")
    messages = error.items if isinstance(error, Problems) else [err["msg"].removeprefix("Value error, ")]
    out = []
    for msg in messages:
        msg = msg.replace("Input should be", "must be")
        where = loc
        # Model-level validators name the field themselves: "deadline: window is too short".
        m = _FIELD_PREFIX.match(msg)
        if m:
            where = (*loc, *(int(p) if p.isascii() and p.isdigit() else p for p in m.group(1).split(".")))
            msg = m.group(2)
        out.append((where, msg))
    return out


def problems(e: ValidationError, model: type[BaseModel], data: Any = None) -> list[str]:
    """Every problem in a pydantic error, each ``field: words``, in the order the document
    has them (a missing key at the end of its table). A misspelt key says which key it
    likely stands for, and that key is then not also reported missing."""
    errors = e.errors(include_url=False)
    # A list whose items failed is also reported "too short after validation": that is the
    # same problem again.
    errors = [x for x in errors if not _echo(x)] or errors
    # "budget.gpu_hourz: unknown key (did you mean gpu_hours?)" already says that
    # budget.gpu_hours is missing: that line is not repeated.
    meant = set()
    for x in errors:
        if x["type"] == "extra_forbidden" and x["loc"]:
            key = _suggest(x["loc"][-1], model, x["loc"][:-1], data)
            if key is not None:
                meant.add((*x["loc"][:-1], key))
    out: list[tuple[tuple[Any, ...], str]] = []
    for err in errors:
        if not (err["type"] == "missing" and tuple(err["loc"]) in meant):
            out += _problems_of(err, model, data)
    out.sort(key=lambda item: _position(data, item[0]))
    return list(dict.fromkeys(one_line(f"{_loc(loc)}: {words}") for loc, words in out))


def describe(e: ValidationError, model: type[BaseModel], data: Any = None) -> str:
    """Every problem on one line: the problem alone if there is one, else ``N problems:``
    and the first :data:`MAX_PROBLEMS` joined by ``; `` (``; and K more`` after them)."""
    items = problems(e, model, data)
    if len(items) == 1:
        return items[0]
    shown = "; ".join(items[:MAX_PROBLEMS])
    rest = f"; and {len(items) - MAX_PROBLEMS} more" if len(items) > MAX_PROBLEMS else ""
    return f"{len(items)} problems: {shown}{rest}"


def validate(model: type[M], data: dict[str, Any], where: str) -> M:
    where = one_line(where)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise BadInput(f"{where}: {describe(e, model, data)}") from None
    except (ValueError, TypeError, OverflowError) as e:  # e.g. times out of range
        raise BadInput(f"{where}: {one_line(str(e))}") from None


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
