"""Builders for spec and cluster documents (plain dicts, as a loader would produce them).

``make_spec(...)`` gives a small valid spec; ``put(doc, "budget.gpus", 0)`` changes one
field by its dotted path (list positions are numbers), so a table of cases reads like the
error messages it expects.
"""

from __future__ import annotations

import copy
import json
from typing import Any


def make_job(name: str = "train", **fields: Any) -> dict[str, Any]:
    return {"name": name, "run": ["python3", "train.py"], **fields}


def make_spec(**fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "pythia-ablation",
        "team": "interp",
        "owner": "alice",
        "problem": "Which attention heads carry induction behaviour?",
        "budget": {"gpu_hours": 96, "gpus": 8, "pool": "h100"},
        "jobs": [make_job("ablate", gpus=8), make_job("probe", gpus=2, after=["ablate"])],
    }
    doc.update(fields)
    return doc


def make_cluster(**fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "admins": ["root-admin"],
        "policy": {"grace_s": 60},
        "pools": [{"name": "h100", "gpu_type": "H100", "gpus": 16, "gpus_per_node": 8}],
        "teams": [{"name": "interp", "members": ["alice"], "allowance_gpu_hours": 1500}],
    }
    doc.update(fields)
    return doc


def _step(key: str) -> str | int:
    return int(key) if key.isdigit() else key


def put(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``doc`` with the field at dotted ``path`` set to ``value``."""
    out = copy.deepcopy(doc)
    *parents, last = [_step(k) for k in path.split(".")]
    node: Any = out
    for k in parents:
        node = node[k]
    node[last] = value
    return out


def drop(doc: dict[str, Any], path: str) -> dict[str, Any]:
    """A copy of ``doc`` without the field at dotted ``path``."""
    out = copy.deepcopy(doc)
    *parents, last = [_step(k) for k in path.split(".")]
    node: Any = out
    for k in parents:
        node = node[k]
    del node[last]
    return out


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        # JSON string escapes are TOML basic-string escapes, except that TOML wants DEL escaped.
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_value(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    if hasattr(v, "isoformat"):
        return v.isoformat()  # a native TOML date-time
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def to_toml(doc: dict[str, Any]) -> str:
    """Enough of a TOML writer for specs: scalars, then ``[budget]``, then ``[[jobs]]``."""
    lines: list[str] = []
    tables = {k: v for k, v in doc.items() if isinstance(v, dict)}
    arrays = {k: v for k, v in doc.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)}
    for k, v in doc.items():
        if k not in tables and k not in arrays and v is not None:
            lines.append(f"{toml_value(k)} = {toml_value(v)}")
    for k, table in tables.items():
        lines.append(f"\n[{toml_value(k)}]")
        lines += [f"{toml_value(a)} = {toml_value(b)}" for a, b in table.items() if b is not None]
    for k, items in arrays.items():
        for item in items:
            lines.append(f"\n[[{toml_value(k)}]]")
            lines += [f"{toml_value(a)} = {toml_value(b)}" for a, b in item.items() if b is not None]
    return "\n".join(lines) + "\n"
