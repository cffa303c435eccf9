"""Reading a docs page's console sessions, for the tests that run them as written
(test_cli_docs.py, test_pages_docs.py)."""

from __future__ import annotations

import re


def steps_of(block: str) -> list[tuple[str, list[str]]]:
    """A console block's commands (``$ `` lines, a trailing ``  # comment`` dropped) and
    the lines each prints."""
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:].split("  #")[0].strip(), []))
        else:
            steps[-1][1].append(line)
    return steps


def shape(lines: list[str]) -> list[str]:
    """What must agree: every word and figure; not the times, digests or column widths."""
    out = []
    for line in lines:
        line = re.sub(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}(:\d{2})?", "<time>", line)
        line = re.sub(r"[0-9a-f]{12,64}", "<hex>", line)
        line = re.sub(r"━+", "━", line)
        line = re.sub(r" +", " ", line).rstrip()
        out.append(line)
    return out
