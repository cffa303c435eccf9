"""Times and Ray addresses given on the command line: anything that is not one is bad input
(one line, exit 2), never a ValueError from deeper down."""

from __future__ import annotations

import pytest

from cellsched.errors import BadInput
from cellsched.runtime.clock import LATEST, parse_time
from cellsched.runtime.daemon import check_address


@pytest.mark.parametrize(("value", "expected"), [
    ("1764547200", 1764547200), (" 0 ", 0), (str(LATEST), LATEST),
    ("2026-12-01", 1796083200), ("2026-12-01T01:00:00+01:00", 1796083200),
])
def test_times_that_are_times(value: str, expected: int) -> None:
    assert parse_time(value, "--since") == expected


@pytest.mark.parametrize(("value", "words"), [
    ("\u00b2", "is not a time"), ("\uff11\uff12", "is not a time"), ("-5", "out of range"),
    (str(LATEST + 1), "out of range"), ("9" * 40, "out of range"), ("2026-13-01", "is not a time"),
])
def test_anything_else_is_one_line_naming_the_option(value: str, words: str) -> None:
    with pytest.raises(BadInput, match=rf"^--since: .* {words}"):
        parse_time(value, "--since")


@pytest.mark.parametrize("port", ["\u00b2", "0", "65536", "99999"])
def test_an_address_whose_port_is_not_a_port_is_bad_input(port: str) -> None:
    with pytest.raises(BadInput, match=rf"^--address 10.0.0.1:{port}: '{port}' is not a port number"):
        check_address(f"10.0.0.1:{port}", timeout_s=0.1)
