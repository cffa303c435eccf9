"""The chaos harness's overlap check on hand-made stamps (no Ray, no daemon): an overlap is
reported only when a process of attempt N was seen alive strictly after attempt N+1 was, with
the read stamps taken around each pid's own ``/proc`` read (see ``chaos_harness.py``)."""

from __future__ import annotations

from chaos_harness import Proc, RankRun, Seen, find_overlaps, rank_keys


def run(attempt: int, rank: int, sh: int, start: float, end: float | None = None,
        seen: Seen | None = None, gone_by: float | None = None) -> RankRun:
    r = RankRun("w0-gang", "train", attempt, rank, sh, start, end, None if end is None else 0, seen)
    known = [t for t in (start, end) if t is not None]
    r.alive_from = min(known + ([seen.first_end] if seen else []))
    r.alive_to = max(known + ([seen.last_start] if seen else []))
    r.alive_until = max(end if end is not None else (gone_by or r.alive_to), r.alive_to,
                        seen.last_end if seen else 0.0)
    return r


def test_a_scan_that_ends_after_the_retry_began_but_read_the_rank_before_is_no_overlap() -> None:
    # the reported case: the scan that last saw rank 1 ended 4 ms after attempt 2's first
    # start, but the read of rank 1's pid itself was over before
    old = run(1, 1, 500, 100.0, seen=Seen(100.1, 101.20, 101.21, 500, 6), gone_by=101.45)
    new = run(2, 0, 600, 101.25, end=104.0)
    found, undecided = find_overlaps([old, new])
    assert found == []
    assert len(undecided) == 1 and "not proven" in undecided[0]


def test_a_read_that_starts_after_the_retry_began_is_an_overlap() -> None:
    old = run(1, 1, 500, 100.0, seen=Seen(100.1, 101.2501, 101.26, 501, 6), gone_by=101.45)
    new = run(2, 0, 600, 101.25, end=104.0)
    found, _ = find_overlaps([old, new])
    assert len(found) == 1 and "attempt 1 rank 1 and attempt 2 rank 0" in found[0]


def test_a_read_that_starts_exactly_when_the_retry_began_is_not_strictly_after() -> None:
    old = run(1, 1, 500, 100.0, seen=Seen(100.1, 101.25, 101.26, 501, 6), gone_by=101.45)
    found, _ = find_overlaps([old, run(2, 0, 600, 101.25, end=104.0)])
    assert found == []


def test_an_end_stamp_after_the_retry_began_is_an_overlap() -> None:
    found, undecided = find_overlaps([run(1, 3, 500, 100.0, end=102.0), run(2, 2, 600, 101.0, end=103.0)])
    assert len(found) == 1 and undecided == []


def test_the_retry_seen_by_a_read_counts_from_that_read_s_end() -> None:
    # attempt 2 never stamped start (signalled first): seen alive only by a read ending at 101.3
    old = run(1, 0, 500, 100.0, end=101.28)
    new = RankRun("w0-gang", "train", 2, 0, 600, None, seen=Seen(101.3, 101.5, 101.52, 600, 2))
    new.alive_from, new.alive_to, new.alive_until = 101.3, 101.5, 101.6
    assert find_overlaps([old, new]) == ([], [])
    old.end = old.alive_to = old.alive_until = 101.31
    assert len(find_overlaps([old, new])[0]) == 1


def test_two_copies_of_one_rank_proven_alive_at_once() -> None:
    a = run(1, 0, 500, 100.0, end=101.0)
    b = run(1, 0, 501, 100.5, end=100.9)
    found, _ = find_overlaps([a, b])
    assert len(found) == 1 and "ran twice at once" in found[0]


def test_one_instant_of_the_old_attempt_inside_the_new_one_is_an_overlap() -> None:
    # attempt 1's rank signalled before it stamped start: only its end stamp, inside attempt 2
    old = RankRun("w0-gang", "train", 1, 2, 500, None, 101.30, 143)
    old.alive_from = old.alive_to = old.alive_until = 101.30
    found, _ = find_overlaps([old, run(2, 0, 600, 101.25, end=104.0)])
    assert len(found) == 1


def test_processes_are_keyed_by_their_stamping_shell_and_supervisors_left_out() -> None:
    env = {"CELLSCHED_PROJECT": "p", "CELLSCHED_JOB": "j", "CELLSCHED_ATTEMPT": "1", "RANK": "2"}
    sup = Proc(10, "job", dict(env), "python -I -S /x/_supervisor.py", ppid=1)
    sh = Proc(11, "job", dict(env), "/bin/sh /w/job.sh 3 ok", ppid=10)
    sub = Proc(12, "job", dict(env), "/bin/sh /w/job.sh 3 ok", ppid=11)  # $(date) subshell
    date = Proc(13, "job", dict(env), "date +%s.%N", ppid=12)
    sleep = Proc(14, "job", dict(env, CHAOS_SH="11"), "sleep 3", ppid=1)  # orphaned, adopted
    ray = Proc(15, "ray", {}, "raylet", ppid=1)
    got = {p.pid: k for p, k in rank_keys([sup, sh, sub, date, sleep, ray])}
    assert got == dict.fromkeys((11, 12, 13, 14), ("p", "j", 1, 2, 11))
