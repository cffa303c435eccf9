"""A usage error (an unknown option, a missing argument, a value of the wrong type, an
unknown command) is bad input like any other: one line naming the command and what is
wrong, exit 2, no usage text or boxed panel, nothing on stdout. Through the installed
``cellsched`` in its own process."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from test_errors_one_line import cellsched_exe

CASES = [
    (["report", "--last", "3"], "cellsched: report: No such option: --last (see cellsched report --help)"),
    (["budget"], "cellsched: budget: Missing argument 'name'. (see cellsched budget --help)"),
    (["simulate", "--gpus", "many"], "cellsched: simulate: Invalid value for '--gpus': "),
    (["token", "create"], "cellsched: token create: Missing option '--user'"),
    (["bogus"], "cellsched: No such command 'bogus'."),
    # --db "$LEDGER" with the variable unset: not the default ledger, written to unasked
    (["--db", "", "status"], "cellsched: Invalid value for --db: empty: give a ledger URL, or leave --db out"),
]


@pytest.mark.parametrize(("args", "line"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_a_usage_error_is_one_line_and_exit_2(tmp_path: Path, args: list[str], line: str) -> None:
    out = subprocess.run([cellsched_exe(), *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith(line), out.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_help_and_version_still_exit_0(tmp_path: Path) -> None:
    for args in (["--version"], ["status", "--help"]):
        out = subprocess.run([cellsched_exe(), *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and out.stdout and out.stderr == ""
