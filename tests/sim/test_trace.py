from __future__ import annotations

import io

import pytest

from cellsched.errors import BadInput
from cellsched.sim.trace import load_trace, parse_trace


def parse(text: str, **kw):  # noqa: ANN003
    return parse_trace(io.StringIO(text), "t.csv", **kw)


def test_reads_rows_sorted_by_submit_with_estimates():
    tr = parse("job_id,submit_s,duration_s,gpus,team,extra\nb,5,100,2,x,zz\na,0,7,1,y,zz\n")
    assert [(j.job_id, j.submit, j.duration, j.gpus, j.team, j.requested) for j in tr.jobs] == [
        ("a", 0, 7, 1, "y", 11),  # ceil(7 * 1.5)
        ("b", 5, 100, 2, "x", 150),
    ]
    assert [j.seq for j in tr.jobs] == [0, 1]
    s = tr.summary()
    assert s["jobs"] == 2 and s["teams"] == 2 and s["bad_rows"] == 0


def test_requested_column_wins_and_run_is_capped_by_it():
    tr = parse("job_id,submit_s,duration_s,gpus,team,requested_s\na,0,100,1,x,60\nb,0,10,1,x,\n")
    a, b = tr.jobs
    assert a.requested == 60 and a.run == 60
    assert b.requested == 15 and b.run == 10
    assert tr.requested_column


def test_bad_rows_are_reported_with_line_numbers():
    good = "".join(f"j{i},{i},10,1,x\n" for i in range(100))
    tr = parse("job_id,submit_s,duration_s,gpus,team\n" + good + "bad,1,ten,1,x\nshort,1\nz,1,10,0,x\n")
    assert [n for n, _ in tr.bad_rows] == [102, 103, 104]
    assert "duration_s 'ten' is not a number" in tr.bad_rows[0][1]
    assert "line 102" in tr.summary_line()
    assert len(tr.jobs) == 100


def test_too_many_bad_rows_is_bad_input_naming_the_first_line():
    rows = "".join(f"j{i},{i},x,1,t\n" for i in range(20))
    with pytest.raises(BadInput, match=r"^t\.csv:2: duration_s 'x' is not a number"):
        parse("job_id,submit_s,duration_s,gpus,team\n" + rows)


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "file is empty"),
        ("job_id,submit_s,gpus,team\n1,2,3,4\n", r"t\.csv:1: header lacks column\(s\) duration_s"),
        ("job_id,submit_s,duration_s,gpus,team\n", "no usable rows"),
    ],
)
def test_unusable_traces(text, match):
    with pytest.raises(BadInput, match=match):
        parse(text)


def test_duplicate_ids_and_bad_factor():
    tr = parse("job_id,submit_s,duration_s,gpus,team\na,0,1,1,x\na,1,1,1,x\n")
    assert len(tr.jobs) == 1 and "duplicate job_id" in tr.bad_rows[0][1]
    with pytest.raises(BadInput, match="estimate-factor"):
        parse("job_id,submit_s,duration_s,gpus,team\na,0,1,1,x\n", estimate_factor=0.5)


def test_missing_file(tmp_path):
    with pytest.raises(BadInput, match="no such file"):
        load_trace(tmp_path / "nope.csv")
    with pytest.raises(BadInput, match="is a directory"):
        load_trace(tmp_path)
