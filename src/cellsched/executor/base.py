"""The executor contract: plain data in, plain data out, and a small poll-based Protocol.

A reconciler drives an executor in two phases each tick: it *observes* (``reservation_state``,
``running``, ``poll``) and then *acts* (``reserve``, ``lend``, ``launch``, ``ack``,
``terminate``, ``kill``, ``release``). Every action is idempotent so that a tick repeated after a crash is
harmless, and every observation is cheap and non-blocking (bounded by a short timeout at most).

Results are handed over in two steps: ``poll`` shows every ended gang that has not been
acknowledged (again and again, without side effects), and ``ack`` marks some delivered once
the caller has stored them durably. A caller that dies in between loses nothing: the next
``poll`` (or ``release``) shows the same results again.

Two implementations share this contract: :class:`cellsched.executor.memory.MemoryExecutor`
(virtual clock, for unit tests and the simulator) and
:class:`cellsched.executor.ray_adapter.RayExecutor` (real Ray). Nothing here imports ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Literal, Mapping, Protocol, Sequence, runtime_checkable

Outcome = Literal["succeeded", "failed", "killed", "lost"]
"""How a gang attempt ended.

- ``succeeded``: every rank exited 0 on its own.
- ``failed``: some rank exited non-zero (or could not start) without being asked to stop;
  its peers were then stopped by the executor.
- ``killed``: the executor was asked to stop it (``terminate``/``kill``/``release``) while it
  ran, whatever the exit codes (a job that checkpoints and exits 0 on SIGTERM is ``killed``:
  it did not finish its work, it was stopped).
- ``lost``: a rank vanished with its node (or its rank actor died); the survivors were killed.
"""

ReservationState = Literal["pending", "placed", "ready", "rescheduling", "missing"]
"""``pending``: not placed yet (possibly forever: Ray never fails an infeasible group);
``placed``: the group holds its GPUs but its rank workers are still starting (or restarting
on the same GPUs), so ``launch`` would raise ``NotReady``; not a shortfall of hardware;
``ready``: placed and every rank worker answers, so ``launch`` is fast;
``rescheduling``: was placed, lost a node (or a rank is unreachable), Ray is re-placing
bundles; ``missing``: no such group.

Only ``pending``, ``rescheduling`` and ``missing`` mean the cluster is not providing the GPUs."""

ResultKey = tuple[str, int]
"""``(job, attempt)``: how results are acknowledged."""

Fate = Literal["alive", "dead", "unknown"]
"""What ``attempt_fate`` can say about an attempt nobody sees any more: ``dead`` only with
proof (then the next attempt may start), ``unknown`` means "not now: ask again later"."""

# Variables the executor sets for every rank; they win over a gang's own ``env`` because
# they carry the allocator's isolation and rendezvous (a spec must not point a rank at
# another project's GPU).
RESERVED_ENV = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "NODE_RANK",
    "NNODES",
    "MASTER_ADDR",
    "MASTER_PORT",
    "CELLSCHED_PROJECT",
    "CELLSCHED_JOB",
    "CELLSCHED_ATTEMPT",
    "CELLSCHED_CODE_DIR",
    "CELLSCHED_CODE_DIGEST",
    "CUDA_VISIBLE_DEVICES",
)

# The exit code of an attempt that was declared dead (``attempt_fate``) before it could run:
# launching it later refuses to run it (``_supervisor.REFUSED_CODE`` is the same number: the
# supervisor imports nothing of cellsched).
REFUSED_CODE = 125
# The exit code of a rank whose code snapshot could not be had (wrong bytes for the digest,
# or no bytes): the job never started. Not 126/127, which say the command could not run.
CODE_FAILED_CODE = 123

# What a job inherits from its Ray worker's environment (see ``job_environment``). Nothing
# else: the worker's environment is the daemon's (or ``ray start``'s) and may hold the
# ledger's URL, keys and tokens.
BASE_ENV = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM")
BASE_ENV_PREFIXES = ("LC_",)
# Device selection Ray sets per worker (ray/_private/accelerators/*: one variable per kind
# of accelerator), and NVIDIA_VISIBLE_DEVICES from container runtimes.
ACCELERATOR_ENV = (
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "ONEAPI_DEVICE_SELECTOR",
    "NEURON_RT_VISIBLE_CORES",
    "TPU_VISIBLE_CHIPS",
    "TPU_CHIPS_PER_HOST_BOUNDS",
    "ASCEND_RT_VISIBLE_DEVICES",
    "HABANA_VISIBLE_MODULES",
    "TT_VISIBLE_DEVICES",
    "MBLT_RT_VISIBLE_DEVICES",
    "RBLN_RT_VISIBLE_DEVICES",
    "QBRUNTIME_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",  # Ray sets it from the worker's CPUs when unset
)
# What Ray's runtime_env puts in a worker's environment: working_dir/py_modules prepend
# PYTHONPATH; pip/uv run the worker from a virtualenv it activates (VIRTUAL_ENV, PATH);
# conda activates an environment (CONDA_*). LD_LIBRARY_PATH is how CUDA libraries are found.
# PYTHONHOME is not passed: activation unsets it and a stale one breaks every interpreter.
RUNTIME_ENV = (
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "CONDA_DEFAULT_ENV",
    "CONDA_SHLVL",
    "CONDA_EXE",
    "CONDA_PYTHON_EXE",
    "LD_LIBRARY_PATH",
)


def job_environment(
    worker_env: Mapping[str, str],
    pass_env: Iterable[str],
    gang_env: Mapping[str, str],
    rank_env: Mapping[str, str],
) -> dict[str, str]:
    """The whole environment of a job's process, built from an allowlist.

    From ``worker_env`` (the Ray worker's ``os.environ``) only ``BASE_ENV`` (+ ``LC_*``),
    ``ACCELERATOR_ENV``, ``RUNTIME_ENV`` and the names in ``pass_env`` (the cluster
    config's explicit pass-through); then the spec's ``gang_env``, except ``RESERVED_ENV``
    names; then ``rank_env`` (the executor's rank variables), which wins over everything.
    """
    wanted = set(BASE_ENV) | set(ACCELERATOR_ENV) | set(RUNTIME_ENV) | set(pass_env)
    env = {
        k: v
        for k, v in sorted(worker_env.items())
        if k in wanted or k.startswith(BASE_ENV_PREFIXES)
    }
    env.update((k, str(v)) for k, v in gang_env.items() if k not in RESERVED_ENV)
    env.update((k, str(v)) for k, v in rank_env.items())
    return env


@dataclass(frozen=True)
class Placement:
    """Where a reservation's bundles go: the caller (admission's node calendar, through the
    daemon) has already chosen the nodes.

    ``nodes[i]`` is the Ray node id bundle ``i`` must be placed on (one entry per bundle: a
    grant no wider than a node repeats one id, a wider one names whole nodes).
    ``label_selector`` is what every bundle's node must also carry (the pool's node type,
    e.g. ``{"ray.io/accelerator-type": "H100"}``); ``bundle_resources`` are extra resources
    each bundle holds (a pool declared by a custom node resource, one unit per GPU).
    A node that does not exist, or does not match, keeps the group ``pending``: Ray never
    moves a pinned bundle elsewhere, not even after its node is lost (the group stays
    ``rescheduling`` until released).
    """

    nodes: tuple[str, ...]
    label_selector: Mapping[str, str] = field(default_factory=dict)
    bundle_resources: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "label_selector", dict(self.label_selector))
        object.__setattr__(self, "bundle_resources", dict(self.bundle_resources))
        if not self.nodes or not all(isinstance(n, str) and n for n in self.nodes):
            raise ValueError(f"placement needs one node id per bundle, got {self.nodes!r}")


@dataclass(frozen=True)
class NodeInfo:
    """One node of the cluster as the executor sees it now (``Executor.nodes()``).

    ``gpus``: whole GPUs the node has in all (not what is free); ``labels``: its node labels
    (Ray sets ``ray.io/node-id`` and, when it detects one, ``ray.io/accelerator-type``;
    ``ray start --labels`` adds more); ``resources``: every resource it declares."""

    node_id: str
    ip: str
    gpus: int
    labels: Mapping[str, str] = field(default_factory=dict)
    alive: bool = True
    resources: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class GangSpec:
    """One attempt of one job: ``len(bundles)`` one-GPU ranks, rank ``r`` on ``bundles[r]``.

    ``run`` is an argv list, or a string run with ``/bin/sh -c``. Rank ``r``'s stdout and
    stderr end up in ``<log_dir>/<job>/attempt-<attempt>/rank-<r>.log`` on the caller's host:
    written there directly by a rank on the caller's own node, pulled there through Ray
    (``pull_logs``) from a node-local copy by a rank on any other node; ``log_dir`` must be
    absolute and need not exist on the other nodes.

    ``code_digest``: the job runs the sealed code snapshot of that digest (``_codepack``):
    each rank's working directory is the snapshot unpacked on its node (read-only, shared
    by every job of that digest on the node; a relative ``cwd`` is taken inside it), with
    ``CELLSCHED_CODE_DIR`` and ``CELLSCHED_CODE_DIGEST`` in its environment. ``code_blob``
    is the snapshot's archive: needed unless ``Executor.has_code(code_digest)`` is true
    (then None is fine). It takes no part in comparisons or ``repr``.
    """

    reservation: str
    project: str
    job: str
    attempt: int
    run: Sequence[str] | str
    bundles: Sequence[int]
    log_dir: str
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None  # working directory of every rank (None: the worker's)
    # The window, enforced by each rank itself even with no daemon alive (executor-clock
    # seconds: wall clock for Ray, virtual for the twin): SIGTERM to the whole job tree at
    # ``term_at``, SIGKILL at ``kill_at``. None: no limit.
    term_at: float | None = None
    kill_at: float | None = None
    # Extra variable names copied from the worker's environment (the cluster config's
    # ``policy.pass_env``); see ``job_environment``.
    pass_env: tuple[str, ...] = ()
    code_digest: str | None = None
    code_blob: bytes | None = field(default=None, compare=False, repr=False, hash=False)
    # The sealed lock file inside the snapshot (its path there): the ranks run in a Python
    # environment made from it on their node (``_pyenv``).
    code_requirements: str | None = None

    def __post_init__(self) -> None:
        # Normalise so specs built from lists, tuples or ranges compare equal and ship to Ray.
        if not isinstance(self.run, str):
            object.__setattr__(self, "run", tuple(self.run))
        object.__setattr__(self, "bundles", tuple(self.bundles))
        object.__setattr__(self, "env", dict(self.env))
        object.__setattr__(self, "pass_env", tuple(self.pass_env))

    @property
    def width(self) -> int:
        return len(self.bundles)

    @property
    def key(self) -> tuple[str, int]:
        return (self.job, self.attempt)

    def argv(self) -> list[str]:
        """The argv each rank executes."""
        if isinstance(self.run, str):
            return ["/bin/sh", "-c", self.run]
        return list(self.run)

    def log_path(self, rank: int) -> str:
        """Where rank ``rank`` writes its output (relative to nothing: ``log_dir`` decides)."""
        return attempt_path(self.log_dir, self.job, self.attempt, rank, "log")

    def lock_path(self, rank: int) -> str:
        """The lock file rank ``rank``'s supervisor holds while anything of the job lives
        (the local proof of death; see ``Executor.attempt_fate``)."""
        return attempt_path(self.log_dir, self.job, self.attempt, rank, "lock")


def attempt_path(log_dir: str, job: str, attempt: int, rank: int, ext: str) -> str:
    """``<log_dir>/<job>/attempt-<attempt>/rank-<rank>.<ext>``: per-rank files of an attempt."""
    return rank_path(f"{log_dir}/{job}/attempt-{attempt}", rank, ext)


def rank_path(attempt_dir: str, rank: int, ext: str) -> str:
    """``<attempt_dir>/rank-<rank>.<ext>``: one rank's file in an attempt's directory."""
    return f"{attempt_dir}/rank-{rank}.{ext}"


@dataclass(frozen=True)
class GangResult:
    """How one gang attempt ended. Shown by ``poll`` until acknowledged with ``ack``; what was
    never acknowledged is returned by ``release``.

    ``exit_codes[r]`` is rank r's exit status (negative = killed by that signal, ``None`` =
    unknown because the rank was lost). ``started_at``/``ended_at`` are seconds on the
    executor's clock (wall clock of the rank workers for Ray, virtual for the twin): first
    rank start, last rank end. ``gpu_seconds`` is the sum over ranks of (end − start),
    rounded to the nearest integer. ``gpu_ids[r]`` is the device id rank r was given.
    """

    reservation: str
    job: str
    attempt: int
    outcome: Outcome
    exit_codes: tuple[int | None, ...]
    started_at: float
    ended_at: float
    gpu_seconds: int
    gpu_ids: tuple[str, ...]
    detail: str = ""

    @property
    def key(self) -> ResultKey:
        """What ``ack`` takes: ``(job, attempt)``."""
        return (self.job, self.attempt)


@dataclass(frozen=True)
class RunningGang:
    """A gang some of whose ranks are still running (others may already have exited).

    ``bundles`` lets a restarted reconciler rebuild which bundles are busy.
    """

    job: str
    attempt: int
    bundles: tuple[int, ...]
    started_at: float


class ExecutorError(Exception):
    """A misuse of the executor (not a job failure: those are ``GangResult``s)."""

    def __init__(self, reservation: str, message: str) -> None:
        super().__init__(f"{reservation}: {message}")
        self.reservation = reservation


class UnknownReservation(ExecutorError):
    """No live group of that name."""


class NotReady(ExecutorError):
    """The group exists but is not ``ready`` (pending, rescheduling, rank workers starting)."""


class ReservationConflict(ExecutorError):
    """A group of that name exists with a different shape."""


class InvalidGang(ExecutorError):
    """Bundles out of range, repeated, or busy with another gang."""


class Fenced(ExecutorError):
    """A command carried an epoch older than one the ranks have seen: a newer daemon has
    taken over (``fence``), and this executor must not act any more."""


@runtime_checkable
class Executor(Protocol):
    """What the reconciler (and the simulator) may do with reserved GPUs."""

    prefix: str
    """Every reservation name starts with it; ``reservations()`` lists only names with it."""

    epoch: int
    """The fencing token every command carries (0 until set by ``fence``). Ranks refuse
    ``launch``/``terminate``/``kill``/``ack``/``release`` with an epoch older than the newest
    they have seen (``Fenced``); a command with a newer one raises what they remember."""

    def reserve(self, name: str, width: int, cpus_per_gpu: int = 0,
                placement: Placement | None = None) -> None:
        """Ask for ``width`` one-GPU bundles named ``name``; returns at once.

        ``placement``: pin bundle ``i`` to node ``placement.nodes[i]`` (and to nodes matching
        its label selector); None: anywhere (packed). Idempotent: a live group of that name
        is adopted (``ReservationConflict`` if its shape differs, or if it is placed on
        other nodes than ``placement`` names). Watch ``reservation_state`` for ``placed``
        (GPUs held) then ``ready``.
        """
        ...

    def nodes(self) -> list[NodeInfo]:
        """The cluster's nodes now, alive or not, sorted by node id."""
        ...

    def pull_logs(self, name: str) -> int:
        """Copy what the ranks of ``name`` have written on other nodes since the last pull
        into each gang's ``log_dir`` on this host; returns the bytes copied. Cheap enough to
        call every tick for a reservation with running gangs; ``release`` pulls a last time
        itself. Never raises for an unknown name (0)."""
        ...

    def reservation_state(self, name: str) -> ReservationState:
        """Current state of the group; never raises for an unknown name (``missing``)."""
        ...

    def reservations(self) -> list[str]:
        """Names of live groups owned by this executor's prefix, sorted (for re-adoption)."""
        ...

    def has_code(self, digest: str) -> bool:
        """True if a ``launch`` with ``code_digest=digest`` may leave ``code_blob`` None:
        this executor holds that snapshot's bytes already (it was given them by an earlier
        launch in this process and has not dropped them). False after a restart, or once
        dropped: then read the blob from the ledger and pass it. Cheap, never raises."""
        ...

    def launch(self, gang: GangSpec) -> None:
        """Start every rank of ``gang``; returns once each rank has it (``running`` shows
        it from then on; on Ray the job's own process starts tens of ms later, under its
        supervisor).

        Idempotent on ``(reservation, job, attempt)``: launching a gang that already started
        (or already ended and was reported) does nothing. A command that cannot be executed is
        not an error here: it ends as a ``failed`` result (exit code 127); nor is a code
        snapshot that cannot be had (``code_blob`` whose content is not ``code_digest``, or
        None while neither the executor nor the rank's node has it): the attempt ends
        ``failed`` with exit code ``CODE_FAILED_CODE`` (123) and the reason in its log.
        Raises ``UnknownReservation``, ``NotReady`` or ``InvalidGang``.
        """
        ...

    def lend(self, owner: str, bundles: Sequence[int], name: str) -> None:
        """Lend bundles ``bundles`` of the live group ``owner`` to a new group ``name`` (a
        best-effort borrower's; ``name`` carries this executor's prefix).

        Only idle bundles can be lent: ``InvalidGang`` if a running gang of ``owner`` uses
        one, or one is lent already, or an ended gang of ``owner`` that used one is not
        acknowledged yet (poll and ack first: the rank worker that holds its result is
        stopped); ``InvalidGang`` too for bundles out of range or repeated, or an ``owner``
        that is itself a borrower; ``UnknownReservation`` if ``owner`` is not live;
        ``NotReady`` if ``owner`` is not placed (``placed`` and ``ready`` may lend);
        ``ReservationConflict`` if ``name`` is a live group, or a borrower of other bundles.
        The owner's rank workers on those bundles are stopped (so the owner's code,
        environment and working directory are never in the borrower's processes), and
        ``name`` then behaves exactly like a reservation of ``len(bundles)`` bundles of its
        own (bundle ``i`` of ``name`` is bundle ``bundles[i]`` of ``owner``, on the same node
        and GPU): ``reservation_state`` (``placed`` until its own rank workers answer, then
        ``ready``; ``rescheduling`` while ``owner`` is; ``missing`` once released),
        ``launch``, ``running``, ``poll``, ``ack``, ``terminate``, ``kill``, ``release``,
        ``attempt_fate``, ``fence`` all work on it, and ``reservations()`` lists it. While
        lent, launching an ``owner`` gang on one of those bundles raises ``InvalidGang``.

        ``release(name)`` kills the borrower's gangs (returning their un-acknowledged
        results, as for any group) and gives the bundles back to ``owner``: its rank workers
        on them start again (``owner`` is ``placed``, not ``ready``, until they answer; its
        other bundles' running gangs are not disturbed). ``release(owner)`` releases its
        borrowers first (their results are then lost to the caller; the caller releases
        borrowers itself before that if it cares). Idempotent: lending the same bundles of
        the same owner to the same ``name`` again does nothing (after a daemon restart, the
        borrower is found again: ``reservations()`` lists it and every operation works on
        it, as for a re-adopted group). ``Fenced`` if the ranks have seen a newer epoch.
        """
        ...

    def running(self, name: str) -> list[RunningGang]:
        """Gangs with a rank still running (so their bundles are busy), sorted by (job, attempt)."""
        ...

    def poll(self, name: str) -> list[GangResult]:
        """Gangs that ended and are not acknowledged yet, sorted by (job, attempt).

        No side effects: the same results are returned by every poll until ``ack``ed (the
        caller must tolerate seeing a result it already stored, e.g. after a crash between
        storing and acknowledging)."""
        ...

    def ack(self, name: str, keys: Iterable[ResultKey]) -> None:
        """Mark the results of these ``(job, attempt)``s delivered: ``poll`` and ``release``
        no longer return them. Call it only after they are stored durably. Idempotent;
        unknown names, unknown keys and gangs still running are ignored."""
        ...

    def terminate(self, name: str, job: str | None = None) -> None:
        """SIGTERM every running job's process group (or only ``job``'s). No escalation."""
        ...

    def kill(self, name: str, job: str | None = None) -> None:
        """SIGKILL every running job's process group (or only ``job``'s)."""
        ...

    def stop(self, name: str) -> list[GangResult]:
        """Kill every job of the group and return every result not acknowledged yet (jobs
        killed here are ``killed``), as ``release`` would, but forget nothing: the group stays
        and ``poll`` shows the same results until they are ``ack``ed. So a caller stores them
        first and releases after: a crash or a failed write in between loses nothing.
        Idempotent; an unknown name has no results."""
        ...

    def release(self, name: str) -> list[GangResult]:
        """Kill everything, free the GPUs, forget the group; idempotent.

        Returns every result not acknowledged yet, whether ``poll`` showed it before or not
        (jobs killed here are ``killed``), so no launched gang goes unreported. Nothing is
        kept afterwards: the caller must store these results (there is nothing to ack).
        """
        ...

    def fence(self, epoch: int) -> None:
        """Push ``epoch`` to every rank of every live reservation with this prefix, and take
        it as this executor's own ``epoch``. Afterwards commands carrying an older epoch
        (a deposed daemon's) are refused with ``Fenced``. Bounded in time: a rank that does
        not answer is not fenced (and ``attempt_fate`` then takes nothing it says as proof).
        Never lowers anything."""
        ...

    def attempt_fate(self, name: str, job: str, attempt: int, width: int, log_dir: str) -> Fate:
        """For an attempt the caller's ledger says may be running but which neither
        ``running`` nor ``poll`` shows: is anything of it still alive?

        ``dead`` only with proof, for every rank ``0..width-1`` of the attempt: its rank
        reports it stopped, or (after ``fence``) answers and does not know it; or its node
        is declared dead; or, on this host, the rank's lock file (``GangSpec.lock_path``) is
        free or marked dead (it is then marked dead so that a late start never runs).
        ``alive`` if some rank still runs it; ``unknown`` otherwise: do not start the next
        attempt, ask again later. ``log_dir`` is the attempt's ``GangSpec.log_dir``."""
        ...


def check_name(name: str, prefix: str) -> None:
    """Names must carry the executor's prefix: ``reservations()`` finds groups by it and
    must never adopt (or release) someone else's."""
    if not name.startswith(prefix) or len(name) == len(prefix):
        raise ValueError(f"reservation name {name!r} must start with {prefix!r}")


def check_gang(gang: GangSpec, width: int, busy: set[int]) -> None:
    """Validate ``gang`` against a group of ``width`` bundles of which ``busy`` are taken
    (running another gang, or lent)."""
    check_bundles(gang.reservation, gang.job, gang.bundles, width, busy)


def check_bundles(reservation: str, what: str, bundles: Sequence[int], width: int,
                  busy: set[int]) -> None:
    """``InvalidGang`` unless ``bundles`` (for ``what``: a job, or a lending) are some, none
    repeated, all in ``0..width-1`` and none in ``busy``."""
    b = list(bundles)
    if not b:
        raise InvalidGang(reservation, f"{what}: needs at least one bundle")
    if len(set(b)) != len(b):
        raise InvalidGang(reservation, f"{what}: repeated bundles {b}")
    out = [i for i in b if not 0 <= i < width]
    if out:
        raise InvalidGang(reservation, f"{what}: bundles {out} outside 0..{width - 1}")
    taken = sorted(set(b) & busy)
    if taken:
        raise InvalidGang(reservation, f"{what}: bundles {taken} are busy")


def classify(
    exit_codes: Sequence[int | None],
    stopped_by_executor: bool,
    natural_failure: bool,
    lost: bool,
) -> Outcome:
    """The one rule turning rank facts into an outcome (shared by both executors).

    Precedence: lost > failed (a rank failed on its own) > killed (we stopped it) > succeeded.
    """
    if lost:
        return "lost"
    if natural_failure:
        return "failed"
    if stopped_by_executor:
        return "killed"
    return "succeeded" if all(c == 0 for c in exit_codes) else "failed"


def log_tail(path: str, max_bytes: int = 4096) -> str:
    """The last ``max_bytes`` of the log at ``path`` (decoded leniently, starting at a line
    boundary when one is in reach); ``""`` if there is no such file. For the completion
    report: call it after ``pull_logs`` (or ``release``), on ``GangSpec.log_path(r)``."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    if size > max_bytes and b"\n" in data[:-1]:
        data = data[data.index(b"\n") + 1:]
    return data.decode(errors="replace")


def attempt_tails(log_dir: str, job: str, attempt: int, width: int,
                  max_bytes: int = 4096) -> tuple[str, ...]:
    """``log_tail`` of each rank of one attempt, in rank order."""
    return tuple(log_tail(attempt_path(log_dir, job, attempt, r, "log"), max_bytes)
                 for r in range(width))


def round_seconds(x: float) -> int:
    """Round half up to integer seconds (units are integers; ``round`` would round to even)."""
    return int(x + 0.5) if x >= 0 else -int(-x + 0.5)
