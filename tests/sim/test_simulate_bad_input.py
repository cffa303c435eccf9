"""Bad input to ``cellsched simulate``, through the command line: exit 2, exactly one line on
stderr naming the option, file or column, no traceback, nothing written, and refused before
the replay starts. The progress bar (forced on with ``FORCE_COLOR``, on a trace of 5,000
jobs) is the witness of a replay: where it never appears, nothing was replayed."""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_simulate_cli import CLUSTER, invoke, trace_file  # noqa: F401 (trace_file: a fixture)

import cellsched
from cellsched.sim.limits import MAX_SECONDS
from cellsched.sim.trace import parse_trace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))
from test_foundation_bad_input import assert_one_clean_line  # noqa: E402

HEADER = "job_id,submit_s,duration_s,gpus,team"
REPLAYING = "replaying fifo"  # the progress bar's words (5,000 jobs or more, on a terminal)


def rows(n: int) -> list[str]:
    return [f"j{i},{i * 30},{600 + 37 * (i % 11)},{[1, 1, 2, 4, 8][i % 5]},t{i % 3}" for i in range(n)]


@pytest.fixture(scope="module")
def big_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5,000 jobs: enough for the progress bar, a fifo replay of a fraction of a second."""
    p = tmp_path_factory.mktemp("big") / "jobs.csv"
    p.write_text("\n".join([HEADER, *rows(5000)]) + "\n")
    return p


@pytest.fixture(autouse=True)
def _terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich takes stderr for a terminal: the bar shows
    for var in ("CELLSCHED_DB", "CELLSCHED_CLUSTER"):
        monkeypatch.delenv(var, raising=False)


def simulate(trace: Path, *args: str):  # type: ignore[no-untyped-def]
    return invoke("--trace", str(trace), "--cluster", str(CLUSTER), "--gpus", "16", "-p", "fifo", *args)


def assert_refused(r, words: str) -> None:  # type: ignore[no-untyped-def]
    """Exit 2, nothing on stdout, one line ``cellsched: ...`` with ``words``, no replay."""
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    assert r.stdout == "", r.stdout
    assert r.stderr.startswith("cellsched: ") and r.stderr.count("\n") == 1, repr(r.stderr)
    assert words in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and 'File "' not in r.stderr
    assert REPLAYING not in r.stderr


def test_the_witness_shows_on_a_good_run(big_trace: Path) -> None:
    r = simulate(big_trace, "--json")
    assert r.exit_code == 0, r.output
    assert REPLAYING in r.stderr


# ---------------------------------------------------------------- 1. options out of range

OPTIONS = [
    ("--estimate-factor", "1e308", "--estimate-factor must be a number from 1 to 100, got 1e+308"),
    ("--estimate-factor", "1e20", "--estimate-factor must be a number from 1 to 100, got 1e+20"),
    ("--estimate-factor", "100.5", "from 1 to 100"),
    ("--estimate-factor", "inf", "got inf"),
    ("--estimate-factor", "nan", "got nan"),
    ("--estimate-noise", "1000", "--estimate-noise must be a number from 0 to 5, got 1000"),
    ("--estimate-noise", "nan", "--estimate-noise must be a number from 0 to 5, got nan"),
    ("--estimate-noise", "-0.5", "--estimate-noise must be a number from 0 to 5"),
    ("--allowance-scale", "inf", "--allowance-scale must be a number above 0 and at most 1,000,000, got inf"),
    ("--allowance-scale", "1e308", "--allowance-scale must be a number above 0 and at most 1,000,000"),
    ("--allowance-scale", "nan", "--allowance-scale must be a number above 0"),
    ("--allowance-scale", "0", "--allowance-scale must be a number above 0"),
    ("--gpus", "1000000000000", "--gpus must be at least 1 and at most 1,000,000, got 1000000000000"),
    ("--gpus", "9" * 30, "--gpus must be at least 1 and at most 1,000,000"),
    ("--gpus", "1000001", "--gpus must be at least 1 and at most 1,000,000"),
    ("--noise-seed", "-1", "--noise-seed must be at least 0 and at most 9,223,372,036,854,775,807 (2^63 - 1)"),
    ("--noise-seed", str(2**63), "--noise-seed must be at least 0"),
    ("--best-effort-seed", "9" * 30, "--best-effort-seed must be at least 0"),
    ("--best-effort-share", "nan", "--best-effort-share must be a number from 0 to 1, got nan"),
    ("--best-effort-share", "inf", "--best-effort-share must be a number from 0 to 1, got inf"),
    ("--checkpoint-interval", "9" * 30, "--checkpoint-interval must be at least 0 seconds and at most "
                                        "3,155,760,000 seconds (100 years)"),
    ("--checkpoint-interval", str(MAX_SECONDS + 1), "--checkpoint-interval must be at least 0 seconds"),
    ("--expect-every", "1000000001", "--expect-every must be at least 0 and at most 1,000,000,000"),
    ("--expect-every", "-1", "--expect-every must be at least 0"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("option, value, words", OPTIONS, ids=[f"{o}={v[:12]}" for o, v, _ in OPTIONS])
def test_an_option_out_of_range_is_refused_before_the_replay(big_trace: Path, option: str, value: str,
                                                             words: str) -> None:
    t0 = time.monotonic()
    r = simulate(big_trace, option, value)
    assert_refused(r, words)
    assert time.monotonic() - t0 < 10  # 1e20 used to replay for minutes, 1e308 to die in one


def test_every_option_at_the_top_of_its_range_is_taken(trace_file: Path) -> None:  # noqa: F811
    r = invoke("--trace", str(trace_file), "--cluster", str(CLUSTER), "--gpus", "16", "-p", "cellsched",
               "--estimate-factor", "100", "--estimate-noise", "5", "--noise-seed", str(2**63 - 1),
               "--allowance-scale", "1e6", "--expect-every", "1000000000", "--best-effort-share", "1",
               "--best-effort-seed", str(2**63 - 1), "--checkpoint-interval", str(MAX_SECONDS), "--json")
    assert r.exit_code == 0, r.output


def test_a_computed_request_is_at_most_100_years() -> None:
    """A 100-year job times the largest factor, or the largest noise, asks for 100 years: the
    replay's cost grows with its longest window."""
    text = f"{HEADER}\na,0,{MAX_SECONDS},8,t\nb,0,10,1,t\n"
    tr = parse_trace(io.StringIO(text), "t.csv", estimate_factor=100)
    assert [j.requested for j in tr.jobs] == [MAX_SECONDS, 1000]
    from cellsched.sim.trace import add_estimate_noise

    noisy = add_estimate_noise(tr, 5.0, seed=3)
    assert all(j.duration <= j.requested <= MAX_SECONDS for j in noisy.jobs)


# ---------------------------------------------------------------- 2. trace rows out of range

HUGE_ROWS = [
    ("gpus", "z{k},0,10,99999999999999999999,t", "gpus 99999999999999999999 is above 1,000,000"),
    ("gpus", "z{k},0,10,1000001,t", "gpus 1000001 is above 1,000,000"),
    ("submit_s", "z{k},1e308,10,1,t", "submit_s 1e308 is above 3,155,760,000 (100 years)"),
    ("duration_s", "z{k},0,1e300,1,t", "duration_s 1e300 is above 3,155,760,000 (100 years)"),
    ("duration_s", "z{k},0," + "9" * 5000 + ",1,t", "duration_s 99999999999999999999... (5,000 characters) is above"),
    ("requested_s", "z{k},0,10,1,t,1e300", "requested_s 1e300 is above 3,155,760,000 (100 years)"),
    ("submit_s", "z{k},-1e400,10,1,t", "submit_s -1e400 is below 0"),
]


def huge_trace(tmp_path: Path, row: str, bad: int) -> tuple[Path, int]:
    """5,000 good jobs and ``bad`` huge rows after them; returns the file and its first bad line."""
    header = HEADER + (",requested_s" if row.count(",") == 5 else "")
    good = [r + ("," if row.count(",") == 5 else "") for r in rows(5000)]
    p = tmp_path / "huge.csv"
    p.write_text("\n".join([header, *good, *(row.format(k=k) for k in range(bad))]) + "\n")
    return p, 5002


@pytest.mark.timeout(60)
@pytest.mark.parametrize("column, row, words", HUGE_ROWS, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(HUGE_ROWS)])
def test_too_many_huge_rows_stop_the_run_naming_file_line_and_column(tmp_path: Path, column: str, row: str,
                                                                     words: str) -> None:
    path, line = huge_trace(tmp_path, row, 51)  # over 1% of 5,051 rows
    r = simulate(path)
    assert_refused(r, f"cellsched: {path}:{line}: {words}")
    assert r.stderr.startswith(f"cellsched: {path}:{line}: {column} ")
    assert "(51 bad rows of 5,051; first shown)" in r.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("column, row, words", HUGE_ROWS, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(HUGE_ROWS)])
def test_one_huge_row_is_skipped_and_reported_like_any_bad_row(tmp_path: Path, column: str, row: str,
                                                               words: str) -> None:
    """The documented rule for bad rows: skipped, named with its line in the summary line; the
    replay never sees it (it used to run 100 s and die of MemoryError)."""
    path, line = huge_trace(tmp_path, row, 1)
    t0 = time.monotonic()
    r = simulate(path, "--json")
    assert r.exit_code == 0, r.stderr
    assert time.monotonic() - t0 < 20
    assert f"skipped 1 bad rows: line {line} ({words}" in r.stderr
    assert json.loads(r.stdout)["trace"]["jobs"] == 5000


# ---------------------------------------------------------------- 3. a trace that is not a regular file

@pytest.mark.timeout(20)  # a FIFO opened for reading used to wait for a writer forever
def test_a_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "t.csv"
    os.mkfifo(fifo)
    r = simulate(fifo)
    assert r.exit_code == 2
    assert_one_clean_line(r.stderr, fifo, "is a FIFO (named pipe), not a regular file")


@pytest.mark.timeout(20)
@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_a_device_even_through_a_link_is_refused_without_reading_it(tmp_path: Path, device: str) -> None:
    link = tmp_path / "t.csv"
    link.symlink_to(device)
    r = simulate(link)
    assert r.exit_code == 2
    assert_one_clean_line(r.stderr, link, "is a character device, not a regular file")


def test_a_link_to_a_regular_file_is_fine(trace_file: Path, tmp_path: Path) -> None:  # noqa: F811
    link = tmp_path / "link.csv"
    link.symlink_to(trace_file)
    r = simulate(link, "--json")
    assert r.exit_code == 0, r.stderr


def test_a_directory_is_refused(tmp_path: Path) -> None:
    r = simulate(tmp_path)
    assert r.exit_code == 2
    assert_one_clean_line(r.stderr, tmp_path, "is a directory, not a trace file")


def test_a_trace_over_2_gib_is_refused_before_reading(tmp_path: Path) -> None:
    huge = tmp_path / "huge.csv"
    with huge.open("wb") as f:
        f.write((HEADER + "\n").encode())
        f.truncate(2 * 1024**3 + 1)  # sparse: 2 GiB on paper, quick to make
    t0 = time.monotonic()
    r = simulate(huge)
    assert r.exit_code == 2
    assert_one_clean_line(r.stderr, huge, "2,147,483,649 bytes is too large (a trace is at most 2 GiB)")
    assert time.monotonic() - t0 < 10


# ---------------------------------------------------------------- 4. --html checked up front

HTML_CASES = [
    ("missing directory", "nowhere/sim.html", "directory {d}/nowhere does not exist"),
    ("a directory", "", "is a directory; give a file name like sim.html"),
    ("a device", "/dev/full", "is not a regular file"),
    ("a FIFO", "pipe.html", "is not a regular file"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case, name, words", HTML_CASES, ids=[c for c, _, _ in HTML_CASES])
def test_a_bad_html_target_fails_before_the_replay(big_trace: Path, tmp_path: Path, case: str, name: str,
                                                    words: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    if case == "a FIFO":
        os.mkfifo(out / name)
    target = name if name.startswith("/") else str(out / name) if name else str(out)
    before = sorted(os.listdir(out))
    r = simulate(big_trace, "--html", target)
    assert r.exit_code == 2
    assert_one_clean_line(r.stderr, "--html", words.format(d=out))  # type: ignore[arg-type]
    assert target in r.stderr
    assert r.stdout == "" and REPLAYING not in r.stderr
    assert sorted(os.listdir(out)) == before  # nothing written


def test_an_empty_html_name_is_refused(big_trace: Path) -> None:
    r = simulate(big_trace, "--html", "")
    assert r.exit_code == 2
    assert_one_clean_line(r.stderr, "--html", "empty file name")  # type: ignore[arg-type]
    assert REPLAYING not in r.stderr


def test_the_html_page_still_lands_through_a_link(trace_file: Path, tmp_path: Path) -> None:  # noqa: F811
    page = tmp_path / "real.html"
    page.write_text("old")
    link = tmp_path / "sim.html"
    link.symlink_to(page)
    r = invoke("--trace", str(trace_file), "--cluster", str(CLUSTER), "--gpus", "16", "-p", "fifo",
               "--html", str(link))
    assert r.exit_code == 0, r.stderr
    assert link.is_symlink() and "wait-time CDF" in page.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["real.html", "sim.html", "jobs.csv"])


def test_a_write_that_fails_at_the_end_is_one_line_and_leaves_nothing(trace_file: Path,  # noqa: F811
                                                                     tmp_path: Path) -> None:
    """A real process whose files may not grow past 20 kB (RLIMIT_FSIZE; Python ignores
    SIGXFSZ): the trace is read, the replay runs, the page cannot be written. stderr ends
    with that one error line after what was read (said before the replay: a long replay
    shows it at once), no traceback, and no half page."""
    out = tmp_path / "out"
    out.mkdir()
    page = out / "sim.html"

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    env = {**os.environ, "PYTHONPATH": str(Path(cellsched.__file__).parents[1]), "NO_COLOR": "1"}
    env.pop("FORCE_COLOR", None)
    p = subprocess.run(
        [sys.executable, "-c", "from cellsched.cli.app import main; main()", "simulate", "--trace", str(trace_file),
         "--cluster", str(CLUSTER), "--gpus", "16", "-p", "fifo", "--html", str(page)],
        capture_output=True, text=True, env=env, preexec_fn=small_files, timeout=120, check=False)
    assert p.returncode == 2, (p.stdout, p.stderr)
    read, error = p.stderr.splitlines()
    assert read.startswith(f"{trace_file.name}: ") or "jobs" in read, read
    assert_one_clean_line(error + "\n", "--html", f"cannot write {page}: File too large")  # type: ignore[arg-type]
    assert p.stdout == ""
    assert list(out.iterdir()) == []
