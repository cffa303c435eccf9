"""The executor on a real Ray cluster. The only module of cellsched that imports ray.

Mapping (see docs/executor.md):

- reservation ``name`` → one detached placement group named ``name`` in the fixed namespace,
  ``width`` × ``{"GPU": 1}`` (+ ``{"CPU": cpus_per_gpu}``), strategy PACK; with a
  ``Placement``, bundle ``i`` carries the label selector ``{"ray.io/node-id": nodes[i]}``
  plus the pool's labels (Ray sets ``ray.io/node-id`` on every node);
- bundle ``i`` → one detached named actor ``<name>/rank-<i>`` (``num_gpus=1, num_cpus=0``,
  pinned to bundle ``i``, restarted by Ray if its node dies), created together with the group
  so that it is warm when the group is placed;
- a gang of k ranks → one supervised subprocess per rank (``_supervisor.py``: it owns the
  job's whole process tree and enforces the window), started by the rank actors; results
  stay in the actors until the caller ``ack``s them (``poll`` only reads them);
- a borrower ``name`` of bundles ``bs`` of group ``owner`` (``lend``) → no group of its own:
  one detached actor ``<name>/rank-<i>`` in bundle ``bs[i]`` of the owner's group, whose own
  rank actors there are killed first; the lending is recorded in Ray's internal KV store
  (``lend_key``), where a restarted daemon finds it;
- epochs: every command carries ``epoch``; ranks refuse older ones (``Fenced``);
- workers need only Ray: the rank actors get ``runtime_env={"py_modules": [<gcs:// URI of
  cellsched/__init__.py + cellsched/executor/*.py>]}`` (uploaded once, content-addressed);
- logs: a rank writes node-local files (except on the driver's own node of a Ray the driver
  started), ``pull_logs`` copies them into the gang's ``log_dir`` by offset, through the
  rank actor.

The driver keeps only caches: everything it needs after a restart is in Ray (and the sizes
of the log copies it already has).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping

from ._rank import (
    EXECUTOR_REASONS,
    FENCED,
    RankWorker,
    claim_node_locks,
    epoch_key,
    stored_epoch,
)
from ._supervisor import claim_dead
from .base import (
    Fate,
    Fenced,
    GangResult,
    GangSpec,
    InvalidGang,
    NodeInfo,
    NotReady,
    Placement,
    ReservationConflict,
    ReservationState,
    ResultKey,
    RunningGang,
    UnknownReservation,
    attempt_path,
    check_bundles,
    check_gang,
    check_name,
    classify,
    rank_path,
    round_seconds,
)
from .pools import NODE_ID_LABEL

_STATES: dict[str, ReservationState] = {
    "PENDING": "pending",
    "CREATED": "ready",
    "RESCHEDULING": "rescheduling",
}

Key = tuple[str, int]


class _QuietPGRestartWarning(logging.Filter):
    """Ray warns that a restartable detached actor in a placement group dies with the group.
    That is exactly what we want (release removes the group; the restart is for node loss),
    so the warning, printed once per rank per reserve, is only noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "restartable detached actor with a placement group" not in record.getMessage()

_QUIET = _QuietPGRestartWarning()

# How often reserve re-checks that the shipped package is still in Ray's GCS (an unused
# package is deleted some minutes after its last user is gone; re-uploading is idempotent),
# and whether other nodes have joined a Ray this process started.
SHIP_CHECK_S = 60.0
# Log pulling: bytes per read call, and per rank log per pull_logs call (the rest waits for
# the next call, so one chatty job cannot stall a tick).
PULL_CHUNK = 1 << 20
PULL_BUDGET = 8 << 20
# Code snapshots kept in Ray's object store (one ``ray.put`` per digest, owned by this
# process): the least recently launched are dropped beyond this many bytes (``has_code``
# then says False and the caller passes the bytes again).
CODE_KEEP_BYTES = 1 << 30


# Where a lending lives in Ray's internal KV store (this executor's namespace): wholly in the
# key, so that one prefix listing gives every borrower with its owner and bundles (the store
# has no multi-get). ``lend`` writes it before it touches a rank, ``release`` deletes it.
LEND_PREFIX = "cellsched-lend:"


def lend_key(name: str, owner: str, bundles: Iterable[int]) -> str:
    """The KV key recording that borrower ``name`` has bundles ``bundles`` of ``owner``."""
    return LEND_PREFIX + json.dumps([name, owner, list(bundles)], separators=(",", ":"))


def _lend_prefix(name: str) -> str:
    """The start of ``lend_key(name, ...)`` for any owner and bundles (and of no other name's)."""
    return LEND_PREFIX + json.dumps([name], separators=(",", ":"))[:-1] + ","


def stage_package(root: str | None = None) -> str:
    """A copy of what the rank workers import (``cellsched/__init__.py`` and
    ``cellsched/executor/*.py``, marked ``SHIPPED``) in a directory named after its content;
    returns the path of its ``cellsched`` directory (for ``py_modules``)."""
    here = os.path.dirname(os.path.abspath(__file__))
    files = {"__init__.py": os.path.join(os.path.dirname(here), "__init__.py")}
    files.update({f"executor/{os.path.basename(f)}": f
                  for f in sorted(glob.glob(os.path.join(here, "*.py")))
                  if os.path.basename(f) != "testing.py"})  # testing imports pytest
    blobs = {rel: Path(path).read_bytes() for rel, path in files.items()}
    blobs["executor/SHIPPED"] = b"shipped to the Ray workers by cellsched's daemon\n"
    digest = hashlib.sha256()
    for rel in sorted(blobs):
        digest.update(rel.encode() + b"\0" + blobs[rel] + b"\0")
    base = root or os.path.join(tempfile.gettempdir(), f"cellsched-ship-{os.getuid()}")
    top = os.path.join(base, digest.hexdigest()[:16])
    pkg = os.path.join(top, "cellsched")
    if not os.path.isdir(pkg):
        os.makedirs(base, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=base)
        for rel, blob in blobs.items():
            os.makedirs(os.path.dirname(os.path.join(tmp, "cellsched", rel)), exist_ok=True)
            with open(os.path.join(tmp, "cellsched", rel), "wb") as f:
                f.write(blob)
        try:
            os.rename(tmp, top)
        except OSError:  # another process staged the same content meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    return pkg


# A member's status in a snapshot round: its snapshot, or one of these.
_DEAD = "dead"  # actor gone for good (or replaced by a new incarnation): its ranks are lost
_UNKNOWN = "unknown"  # unreachable right now (restarting, slow): decide on a later poll


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


class RayExecutor:
    """The executor Protocol on Ray.

    Connects on construction: if ray is already initialised (e.g. by a test fixture) it is
    used as is, provided its namespace is ``namespace``; otherwise ``ray.init(address=address,
    namespace=namespace, **ray_init)`` (``address=None`` honours ``RAY_ADDRESS`` or starts a
    local Ray). ``peer_grace_s``: when a rank fails, its peers get SIGTERM, then SIGKILL after
    this long. ``call_timeout_s`` bounds every observation call (a rank that does not answer
    in time counts as unreachable for that call); ``launch_timeout_s`` bounds ``launch``.
    """

    def __init__(
        self,
        address: str | None = None,
        namespace: str = "cellsched",
        *,
        prefix: str = "cellsched/",
        peer_grace_s: float = 3.0,
        call_timeout_s: float = 2.0,
        launch_timeout_s: float = 10.0,
        ray_init: Mapping[str, Any] | None = None,
        ship: bool | None = None,
    ) -> None:
        import ray

        if ray.is_initialized():
            ns = ray.get_runtime_context().namespace
            if ns != namespace:
                # Group and actor names are namespace-scoped: in another namespace we would
                # neither find nor protect our reservations.
                raise RuntimeError(f"ray is initialised in namespace {ns!r}, not {namespace!r}")
        else:
            ray.init(address=address, namespace=namespace, **dict(ray_init or {}))
        logging.getLogger("ray.actor").addFilter(_QUIET)
        self._ray = ray
        self.namespace = namespace
        self.prefix = prefix
        self.peer_grace_s = peer_grace_s
        self.call_timeout_s = call_timeout_s
        self.launch_timeout_s = launch_timeout_s
        self.epoch = 0
        self._rank_cls = ray.remote(RankWorker)
        self._claim_fn = ray.remote(claim_node_locks)
        try:
            self._node_id: str | None = ray.get_runtime_context().get_node_id()
        except Exception:  # noqa: BLE001 - a client-mode driver has no node of its own
            self._node_id = None
        # Did this process start the Ray (ray.init with no address)? Its workers then run
        # this very Python, as this very user.
        self._own_ray = bool(getattr(getattr(ray._private.worker, "_global_node", None),
                                     "ray_init_cluster", False))
        # Ranks on this node of a Ray this process started write logs and locks in place
        # (the same user, the same files); every other rank writes node-local files that
        # come home through Ray, so the Ray workers' user never writes the daemon's
        # directory (on a cluster reached by address, not even on the daemon's own node).
        self._home_node = self._node_id if self._own_ray else None
        # Ship the rank workers' code (py_modules) unless told (``ship``); by default
        # unless this process started the Ray itself and no other node has joined it. A
        # worker with a runtime_env cannot be one of Ray's prestarted ones: shipping costs
        # a worker start per rank (~0.5 s), which the single-host case is spared.
        self.ship = ship
        self._alone: tuple[float, bool] | None = None  # (checked at, no other node)
        self._shipped: tuple[float, dict[str, Any]] | None = None
        self._handles: dict[str, list[Any]] = {}
        self._pings: dict[str, list[Any]] = {}
        self._ready: set[str] = set()
        # Code snapshots shipped: digest -> (ObjectRef, bytes), least recently used first.
        self._code: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self.code_puts = 0  # how many ray.put of a snapshot this instance made (benchmarks)
        # Gangs this instance launched: the only memory of a gang all of whose ranks were lost
        # together (their records died with them): start, members, device ids, lock files.
        self._launched: dict[str, dict[Key, tuple[float, list[Any], list[str], list[str]]]] = (
            defaultdict(dict)
        )

    # -- groups --------------------------------------------------------------------------

    def _group(self, name: str) -> tuple[Any, dict[str, Any]] | None:
        """The live placement group of ``name`` and its table entry, or None. For a borrower:
        its owner's group and a view of the owner's entry on the borrowed bundles only
        (bundle ``i`` is the owner's ``lent[i]``), with ``lender`` and ``lent`` added."""
        found = self._placement_group(name)
        if found is not None:
            return found
        rec = self._lendings(name).get(name)
        found = None if rec is None else self._placement_group(rec[0])
        if found is None or rec is None:
            return None
        (owner, lent), (pg, entry) = rec, found
        where = entry.get("bundles_to_node_id") or {}
        return pg, {
            "state": entry["state"],
            "bundles": {i: entry["bundles"][b] for i, b in enumerate(lent)},
            "bundles_to_node_id": {i: where[b] for i, b in enumerate(lent) if b in where},
            "lender": owner,
            "lent": lent,
        }

    def _placement_group(self, name: str) -> tuple[Any, dict[str, Any]] | None:
        """The live placement group called ``name`` and its table entry, or None."""
        from ray.util import get_placement_group, placement_group_table

        try:
            pg = get_placement_group(name)
        except ValueError:
            return None
        entry = placement_group_table(pg)
        if not entry or entry.get("state") == "REMOVED":
            return None
        return pg, entry

    def _lendings(self, name: str | None = None) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Borrower -> (owner, the owner's bundles it has), as recorded in Ray's KV store;
        only ``name``'s record if given."""
        from ray.experimental.internal_kv import _internal_kv_list

        prefix = LEND_PREFIX if name is None else _lend_prefix(name)
        out = {}
        for key in sorted(_internal_kv_list(prefix, namespace=self.namespace)):
            borrower, owner, bundles = json.loads(key.decode()[len(LEND_PREFIX):])
            out[borrower] = (owner, tuple(bundles))
        return out

    def _lent_by(self, owner: str) -> dict[int, str]:
        """The bundles ``owner`` has lent, each to its borrower."""
        return {b: n for n, (o, bs) in self._lendings().items() if o == owner for b in bs}

    def reserve(self, name: str, width: int, cpus_per_gpu: int = 0,
                placement: Placement | None = None) -> None:
        from ray.util import placement_group

        check_name(name, self.prefix)
        if width < 1:
            raise ValueError(f"{name}: width must be >= 1, got {width}")
        if placement is not None and len(placement.nodes) != width:
            raise ValueError(f"{name}: placement names {len(placement.nodes)} nodes "
                             f"for {width} bundles")
        bundle: dict[str, float] = {"GPU": 1}
        if cpus_per_gpu:
            bundle["CPU"] = cpus_per_gpu
        if placement is not None:
            bundle.update((k, float(v)) for k, v in placement.bundle_resources.items())
        found = self._group(name)
        lent: dict[int, str] = {}
        if found is not None:
            pg, entry = found
            if "lender" in entry:
                raise ReservationConflict(name, f"is a borrower of {entry['lender']}")
            lent = self._lent_by(name)  # adopting: those bundles hold their borrowers' ranks
            bundles = [dict(b) for b in entry["bundles"].values()]
            if bundles != [bundle] * width:
                raise ReservationConflict(name, f"exists with bundles {bundles}")
            where = entry.get("bundles_to_node_id") or {}
            if placement is not None and entry.get("state") == "CREATED" and any(
                    where.get(i) != n for i, n in enumerate(placement.nodes)):
                raise ReservationConflict(name, "exists on other nodes: "
                                          f"{[where.get(i) for i in range(width)]}")
        else:
            # Pinning by label: Ray labels every node with its id ("ray.io/node-id"), and a
            # bundle's label selector must hold on the node it is placed on; so bundle i can
            # only go to nodes[i], and only if that node also has the pool's labels.
            # (STRICT_PACK/STRICT_SPREAD cannot say "these 4 here, those 4 there", node
            # affinity applies to tasks and actors, not bundles, and a per-node custom
            # resource would need every node started with one.)
            selectors = None
            if placement is not None:
                selectors = [dict(placement.label_selector, **{NODE_ID_LABEL: n})
                             for n in placement.nodes]
            pg = placement_group([dict(bundle) for _ in range(width)], strategy="PACK",
                                 name=name, lifetime="detached",
                                 bundle_label_selector=selectors)
        # Rank actors are created right away: Ray holds them until the group is placed and
        # then starts them at once, which saves a driver round trip on the critical path.
        self._handles[name] = [None if i in lent else self._rank_actor(name, pg, i)
                               for i in range(width)]

    def _runtime_env(self) -> dict[str, Any] | None:
        """The rank workers' runtime_env: this package shipped as a gcs:// py_modules
        package (Ray accepts local paths only at job level, so it is uploaded here)."""
        now = time.monotonic()
        if self.ship is None:
            if self._own_ray:
                if self._alone is None or now - self._alone[0] > SHIP_CHECK_S:
                    self._alone = (now, all(n["NodeID"] == self._node_id
                                            for n in self._ray.nodes() if n["Alive"]))
                if self._alone[1]:
                    return None
        elif not self.ship:
            return None
        if self._shipped is None or now - self._shipped[0] > SHIP_CHECK_S:
            from ray._private.runtime_env.py_modules import upload_py_modules_if_needed

            pkg = stage_package()
            env = upload_py_modules_if_needed({"py_modules": [pkg]}, include_gitignore=False,
                                              scratch_dir=os.path.dirname(pkg))
            self._shipped = (now, {"py_modules": list(env["py_modules"])})
        return dict(self._shipped[1])

    def _rank_actor(self, name: str, pg: Any, i: int, bundle: int | None = None) -> Any:
        """Rank ``i`` of ``name``, in bundle ``bundle`` of ``pg`` (default ``i``; a
        borrower's ranks are in its owner's bundles)."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return self._rank_cls.options(
            name=f"{name}/rank-{i}",
            namespace=self.namespace,
            get_if_exists=True,  # idempotent reserve / re-adoption
            lifetime="detached",
            num_gpus=1,
            num_cpus=0,  # a {GPU:1} bundle has no CPU: asking one makes Ray refuse at submit
            max_restarts=-1,  # after a node loss the bundle is re-placed and the rank comes back
            max_task_retries=0,
            runtime_env=self._runtime_env(),
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                pg, placement_group_bundle_index=i if bundle is None else bundle,
                placement_group_capture_child_tasks=False,
            ),
        ).remote(name, i, self.epoch)

    def _ranks(self, name: str, width: int | None = None) -> list[Any] | None:
        """Handles of the rank actors of ``name`` by bundle (looked up by name after a
        restart); None for a bundle it has lent (it holds the borrower's rank)."""
        hs = self._handles.get(name)
        if hs is not None:
            return hs
        found = self._group(name)
        if found is None:
            return None
        pg, entry = found
        owner = entry.get("lender")
        if owner is not None:
            # A lend cut short by a crash (recorded, the owner's ranks not yet gone): finish
            # it, or this borrower's ranks wait forever for the GPUs the owner's still hold.
            stale = self._named_ranks(owner, entry["lent"])
            if stale:
                theirs = self._handles.get(owner)
                for b in stale if theirs is not None else ():
                    theirs[b] = None
                self._pings.pop(owner, None)
                self._retire(owner, list(stale.values()), placed=True, wait=True)
        lent = {} if owner is not None else self._lent_by(name)
        bundles = list(entry.get("lent") or range(len(entry["bundles"])))
        named = self._named_ranks(name, [i for i in range(len(bundles)) if i not in lent])
        # An actor gone (killed from outside, or never created) is made again.
        hs = [None if i in lent else named.get(i) or self._rank_actor(name, pg, i, b)
              for i, b in enumerate(bundles)]
        self._handles[name] = hs
        return hs

    def _named_ranks(self, name: str, ranks: Iterable[int]) -> dict[int, Any]:
        """The rank actors ``<name>/rank-<i>`` that exist, for ``i`` in ``ranks``."""
        out = {}
        for i in ranks:
            try:
                out[i] = self._ray.get_actor(f"{name}/rank-{i}", namespace=self.namespace)
            except ValueError:
                pass
        return out

    def _live_ranks(self, name: str) -> list[Any]:
        """Handles of the rank actors of ``name``, lent bundles left out ([] if none)."""
        return [h for h in self._ranks(name) or [] if h is not None]

    def _forget(self, name: str) -> None:
        self._handles.pop(name, None)
        self._pings.pop(name, None)
        self._ready.discard(name)

    def reservation_state(self, name: str) -> ReservationState:
        found = self._group(name)
        if found is None:
            self._forget(name)
            return "missing"
        state = _STATES.get(found[1]["state"], "pending")
        if state != "ready":
            self._ready.discard(name)
            self._pings.pop(name, None)
            return state
        if name in self._ready:
            return "ready"
        # Placed (the group holds its GPUs), but "ready" also promises warm rank workers:
        # probe them without waiting for a worker process to start (that is what the next
        # call is for). Until they answer the group is "placed", not a hardware shortfall.
        pings = self._pings.get(name)
        if pings is None:
            pings = self._pings[name] = [h.info.remote() for h in self._live_ranks(name)]
        done, _ = self._ray.wait(pings, num_returns=len(pings), timeout=0.05)
        if len(done) < len(pings):
            return "placed"
        statuses = [self._status(p) for p in pings]
        if any(isinstance(s, str) for s in statuses):
            self._pings.pop(name, None)  # probe again next time
            if _DEAD in statuses:
                self._handles.pop(name, None)  # look up again, recreating the dead ranks
            # Unreachable: maybe its node is gone and Ray has not noticed yet (~15 s by
            # default), so not "placed". Dead: it is recreated on the group's own GPUs.
            return "rescheduling" if _UNKNOWN in statuses else "placed"
        self._ready.add(name)
        return "ready"

    def cluster_gpus(self) -> int:
        """GPUs the Ray cluster has in all (for serve's check against the cluster config)."""
        return int(self._ray.cluster_resources().get("GPU", 0))

    def nodes(self) -> list[NodeInfo]:
        return sorted((NodeInfo(
            node_id=n["NodeID"],
            ip=n.get("NodeManagerAddress", ""),
            gpus=int(n.get("Resources", {}).get("GPU", 0)),
            labels=dict(n.get("Labels") or {}),
            alive=bool(n.get("Alive")),
            resources=dict(n.get("Resources") or {}),
        ) for n in self._ray.nodes()), key=lambda n: n.node_id)

    def reservations(self) -> list[str]:
        from ray.util import placement_group_table

        names = {
            e.get("name", "")
            for e in placement_group_table().values()
            if e.get("state") != "REMOVED"
        }
        names |= {n for n, (owner, _) in self._lendings().items() if owner in names}
        return sorted(n for n in names if n.startswith(self.prefix))

    # -- jobs ----------------------------------------------------------------------------

    def _status(self, ref: Any) -> Any:
        """The value of a finished call, or _DEAD / _UNKNOWN for an actor failure."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        try:
            return self._ray.get(ref, timeout=0)
        except ActorUnavailableError:
            return _UNKNOWN  # transient: restarting or unreachable
        except ActorDiedError:
            return _DEAD
        except RayActorError:
            return _UNKNOWN
        except self._ray.exceptions.GetTimeoutError:
            return _UNKNOWN

    def _call_all(self, refs: list[Any], timeout: float | None = None) -> list[Any]:
        """Wait (bounded) for calls issued together; per call a value, _DEAD or _UNKNOWN."""
        if refs:
            t = self.call_timeout_s if timeout is None else timeout
            self._ray.wait(refs, num_returns=len(refs), timeout=t)
        return [self._status(r) for r in refs]

    def has_code(self, digest: str) -> bool:
        """See the Protocol: True while this instance keeps the snapshot in Ray's object
        store (from an earlier launch's ``code_blob``)."""
        return digest in self._code

    def _code_arg(self, gang: GangSpec) -> list[Any] | None:
        """What the ranks get to fetch the code from: ``[ObjectRef]`` (put once per digest
        and kept; a list, so that Ray resolves it only in a rank that lacks the snapshot),
        or None (no bytes: a rank whose node has no copy fails the attempt)."""
        digest = gang.code_digest
        assert digest is not None
        kept = self._code.get(digest)
        if kept is None:
            if gang.code_blob is None:
                return None
            kept = self._code[digest] = (self._ray.put(gang.code_blob), len(gang.code_blob))
            self.code_puts += 1
            while sum(n for _, n in self._code.values()) > CODE_KEEP_BYTES and len(self._code) > 1:
                self._code.popitem(last=False)
        self._code.move_to_end(digest)
        return [kept[0]]

    def launch(self, gang: GangSpec) -> None:
        name = gang.reservation
        state = self.reservation_state(name)
        if state == "missing":
            raise UnknownReservation(name, "no such reservation")
        if state != "ready":
            raise NotReady(name, f"cannot launch {gang.job}: group is {state}")
        hs = self._ranks(name)
        assert hs is not None
        check_gang(gang, len(hs), {b for b, h in enumerate(hs) if h is None})  # None: lent
        members = [hs[b] for b in gang.bundles]
        infos = self._call_all(
            [h.info.remote(key=gang.key, want_port=(r == 0)) for r, h in enumerate(members)],
            self.launch_timeout_s,
        )
        if any(isinstance(i, dict) and i["known"] for i in infos):
            return  # already launched: launch is idempotent
        if any(isinstance(i, str) for i in infos):
            self._ready.discard(name)
            raise NotReady(name, f"cannot launch {gang.job}: rank workers not all reachable")
        self._check_epoch(name, [i["epoch"] for i in infos])
        busy = {b for b, i in zip(gang.bundles, infos) if i["busy"]}
        check_gang(gang, len(hs), busy)

        # LOCAL_RANK: position among this gang's ranks on the same node; NODE_RANK: index of
        # the rank's node among the gang's nodes, numbered in rank order (rank 0's is 0).
        per_node: dict[str, int] = defaultdict(int)
        node_rank: dict[str, int] = {}
        local = []
        for i in infos:
            node_rank.setdefault(i["node_id"], len(node_rank))
            local.append(per_node[i["node_id"]])
            per_node[i["node_id"]] += 1
        base_env = {
            "WORLD_SIZE": str(gang.width),
            "MASTER_ADDR": infos[0]["node_ip"],
            "MASTER_PORT": str(infos[0]["port"]),
            "CELLSCHED_PROJECT": gang.project,
            "CELLSCHED_JOB": gang.job,
            "CELLSCHED_ATTEMPT": str(gang.attempt),
        }
        member_ids = [(b, i["incarnation"], i["node_id"]) for b, i in zip(gang.bundles, infos)]
        gpu_ids = [",".join(i["gpu_ids"]) for i in infos]
        code = None
        if gang.code_digest is not None:
            base_env["CELLSCHED_CODE_DIGEST"] = gang.code_digest
            code = self._code_arg(gang)
        self._launched[name][gang.key] = (time.time(), member_ids, gpu_ids,
                                          [gang.lock_path(r) for r in range(len(members))])
        refs = []
        for r, h in enumerate(members):
            node = infos[r]["node_id"]
            env = dict(base_env, RANK=str(r), LOCAL_RANK=str(local[r]),
                       LOCAL_WORLD_SIZE=str(per_node[node]), NODE_RANK=str(node_rank[node]),
                       NNODES=str(len(node_rank)))
            peers = [p for p in members if p is not h]
            # The code's arguments only with code: a gang without keeps working on rank
            # actors an older version created (detached, they outlive a daemon upgrade).
            extra: tuple[Any, ...] = () if gang.code_digest is None else (gang.code_digest, code)
            if gang.code_requirements is not None:
                extra += (gang.code_requirements,)
            refs.append(h.start.remote(
                gang.job, gang.attempt, r, member_ids, gpu_ids, gang.argv(), dict(gang.env),
                env, gang.log_path(r), gang.lock_path(r), gang.cwd, peers, self.peer_grace_s,
                self.epoch, gang.term_at, gang.kill_at, tuple(gang.pass_env),
                node != self._home_node,  # node-local log and lock, pulled home
                *extra,
            ))
        got = self._call_all(refs, self.launch_timeout_s)
        if FENCED in got:
            # A newer daemon fenced the ranks in between: the ranks that did start are a
            # broken gang that its next poll reports lost (and stops).
            self._launched[name].pop(gang.key, None)
            raise Fenced(name, f"epoch {self.epoch} is older than the ranks'")
        if any(g != "started" for g in got):
            # Some rank could not start (its node went, or another driver took the bundle in
            # between): the gang cannot run. Stop those that did start; poll reports it
            # "lost", so the caller sees one result either way and no exception.
            self._signal(name, gang.job, gang.attempt, 9, "lost")

    def _gangs(self, name: str) -> tuple[list[Any], list[Any], dict[Key, dict[int, dict[str, Any]]]]:
        """Handles, snapshots, and records grouped by attempt then bundle."""
        found = self._group(name)
        if found is not None and found[1]["state"] == "PENDING":
            # Never placed, so nothing ran; and calls to its unstarted ranks would only time out.
            return [], [], {}
        hs = self._ranks(name) or []
        calls = {b: h.snapshot.remote() for b, h in enumerate(hs) if h is not None}
        got = dict(zip(calls, self._call_all(list(calls.values()))))
        # A lent bundle has no rank of this group (lending needs its gangs acknowledged).
        snaps = [got.get(b, _DEAD) for b in range(len(hs))]
        gangs: dict[Key, dict[int, dict[str, Any]]] = defaultdict(dict)
        for b, s in enumerate(snaps):
            if isinstance(s, dict):
                for rec in s["records"]:
                    gangs[(rec["job"], rec["attempt"])][b] = rec
        return hs, snaps, gangs

    def running(self, name: str) -> list[RunningGang]:
        _, _, gangs = self._gangs(name)
        out = []
        for key in sorted(gangs):
            recs = gangs[key]
            if any(r["acked"] for r in recs.values()):
                continue
            if any(r["ended_at"] is None for r in recs.values()):
                first = next(iter(recs.values()))
                out.append(RunningGang(
                    key[0], key[1], tuple(m[0] for m in first["members"]),
                    min(r["started_at"] for r in recs.values()),
                ))
        return out

    def poll(self, name: str) -> list[GangResult]:
        return self._collect(name)[0]

    def ack(self, name: str, keys: Iterable[ResultKey]) -> None:
        """Tell every rank actor of ``name`` that these results are stored (they keep a
        tombstone). A rank that misses it is tidied up by a later ``poll``: one acknowledged
        record marks the whole gang delivered."""
        ks = [(str(k[0]), int(k[1])) for k in keys]
        if not ks:
            return
        launched = self._launched.get(name, {})
        for k in ks:
            launched.pop(k, None)  # a gang all of whose ranks were lost lives only here
        hs = self._live_ranks(name)  # none if the group is gone: nothing left to mark
        if False in self._call_all([h.ack.remote(ks, self.epoch) for h in hs]):
            raise Fenced(name, f"epoch {self.epoch} is older than the ranks'")

    def _collect(self, name: str) -> tuple[list[GangResult], bool]:
        """Results of gangs that ended and are not acknowledged (nothing is acknowledged
        here); and whether every gang is accounted for (no rank unreachable, none running)."""
        hs, snaps, gangs = self._gangs(name)
        settled = _UNKNOWN not in snaps
        out: list[GangResult] = []
        acks: dict[int, list[Key]] = defaultdict(list)  # tidying up half-finished acks only
        now = time.time()
        dead_nodes: set[str] | None = None

        def dead() -> set[str]:  # Ray's dead nodes, asked once per poll and only if needed
            nonlocal dead_nodes
            if dead_nodes is None:
                dead_nodes = {n["NodeID"] for n in self._ray.nodes() if not n["Alive"]}
            return dead_nodes

        for key in sorted(set(gangs) | set(self._launched.get(name, {}))):
            recs = gangs.get(key, {})
            if any(r["acked"] for r in recs.values()):
                # Acknowledged before (maybe an ack that reached only some ranks): tidy up.
                for b, r in recs.items():
                    if not r["acked"]:
                        acks[b].append(key)
                self._launched.get(name, {}).pop(key, None)
                continue
            if recs:
                first = next(iter(recs.values()))
                t0 = min(r["started_at"] for r in recs.values())
                members, gpu_ids = first["members"], first["gang_gpu_ids"]
                # every rank's lock file sits beside a rank's log (the daemon's path of it)
                where = os.path.dirname(first.get("home") or first["log"])
                locks = [rank_path(where, r, "lock") for r in range(len(members))]
            elif key in self._launched.get(name, {}):
                t0, members, gpu_ids, locks = self._launched[name][key]
            else:
                continue
            status = []
            for b, inc, node in members:
                s = snaps[b] if b < len(snaps) else _DEAD
                if s == _UNKNOWN:
                    # Unreachable: lost if its node is dead (the actor may wait forever for a
                    # re-placement that has no capacity), else transient: ask again later.
                    status.append(_DEAD if node in dead() else _UNKNOWN)
                elif s == _DEAD or s["incarnation"] != inc or b not in recs:
                    status.append(_DEAD)
                else:
                    status.append(recs[b])
            if _UNKNOWN in status:
                settled = False
                continue
            lost = _DEAD in status
            live = [s for s in status if isinstance(s, dict)]
            if any(r["ended_at"] is None for r in live):
                settled = False
                if lost:
                    self._signal(name, key[0], key[1], 9, "lost")
                continue
            if lost:
                if not self._lost_ranks_gone(name, members, status, locks, hs, snaps, dead()):
                    # A lost rank's supervisor may still be killing its job (the rank actor
                    # died first): no result, so no next attempt, until its lock is free.
                    settled = False
                    continue
            for r in live:
                if r.get("code") == "failed":  # wrong bytes kept for that digest? drop them
                    self._code.pop(r.get("code_digest") or "", None)
            codes = tuple(s["exit_code"] if isinstance(s, dict) else None for s in status)
            ended = [s["ended_at"] if isinstance(s, dict) else now for s in status]
            used = sum(s["duration"] if isinstance(s, dict) else now - t0 for s in status)
            reasons = [r["stop_reason"] for r in live]
            result = GangResult(
                reservation=name,
                job=key[0],
                attempt=key[1],
                outcome=classify(
                    codes,
                    stopped_by_executor=any(x in EXECUTOR_REASONS for x in reasons),
                    natural_failure=any(r["exit_code"] != 0 and r["stop_reason"] is None
                                        for r in live),
                    lost=lost,
                ),
                exit_codes=codes,
                started_at=t0,
                ended_at=max(ended),
                gpu_seconds=round_seconds(used),
                gpu_ids=tuple(gpu_ids),
                detail="lost ranks " + ",".join(
                    str(r) for r, s in enumerate(status) if s == _DEAD) if lost else "",
            )
            out.append(result)
        if acks:
            self._call_all([hs[b].ack.remote(ks, self.epoch) for b, ks in sorted(acks.items())])
        return out, settled

    def _lost_ranks_gone(self, name: str, members: list[Any], status: list[Any], locks: list[str],
                         hs: list[Any], snaps: list[Any], dead_nodes: set[str]) -> bool:
        """Whether nothing of a lost rank (``status`` ``_DEAD``) of a gang can still be
        alive. Its rank actor died, or Ray restarted it, but its supervisor lives on its own
        and holds the rank's lock file until it has killed and reaped every process of the
        job: a result reported before would let the next attempt start beside the last one.
        Proof per lost rank: its node is dead, or its lock is claimed dead (``claim_dead``)
        on this host (the daemon's node) or through a live rank actor of this group on its
        node (``claim_locks``). No proof (lock held, or no actor to ask there): False, and
        the caller asks again on its next poll (a restarted daemon too: the lock files and
        the peers' records are all it needs)."""
        found = None
        calls = []
        host = socket.gethostname()
        for r, ((_, _, node), s) in enumerate(zip(members, status)):
            if s != _DEAD or node in dead_nodes:
                continue
            if node == self._home_node:
                if not claim_dead(locks[r], host, frozenset(dead_nodes)):
                    return False
                continue
            if found is None:
                found = self._group(name)
            where = (found[1].get("bundles_to_node_id") or {}) if found is not None else {}
            asker = next((b for b, h in enumerate(hs) if h is not None and where.get(b) == node
                          and b < len(snaps) and isinstance(snaps[b], dict)), None)
            if asker is None:
                return False
            calls.append(hs[asker].claim_locks.remote([locks[r]], sorted(dead_nodes)))
        return all(c is True for c in self._call_all(calls))

    def _signal(self, name: str, job: str | None, attempt: int | None, sig: int,
                reason: str, check: bool = False) -> None:
        """Have the ranks signal matching jobs; ``check``: raise ``Fenced`` if refused
        (the caller's own commands; internal clean-ups during a poll never raise)."""
        hs = self._live_ranks(name)
        if hs:
            got = self._call_all([h.stop.remote(job, attempt, sig, reason, None, self.epoch)
                                  for h in hs])
            if check and -1 in got:
                raise Fenced(name, f"epoch {self.epoch} is older than the ranks'")

    def pull_logs(self, name: str) -> int:
        """See the Protocol. Per rank: one call for the sizes of its node-local logs, then
        reads (``PULL_CHUNK`` each) of whatever the copy here lacks, appended to it; the
        copy's size is the offset, so a restarted daemon resumes where the file ends. At
        most ``PULL_BUDGET`` bytes per log per call; a rank that does not answer is skipped
        until the next call."""
        found = self._group(name)
        if found is None or found[1]["state"] == "PENDING":
            return 0
        hs = self._live_ranks(name)
        sizes = self._call_all([h.log_sizes.remote() for h in hs])
        todo: list[tuple[Any, str, int]] = []  # (rank, daemon's path, bytes there)
        for h, got in zip(hs, sizes):
            if isinstance(got, list):
                todo += [(h, home, size) for home, size in got]
        copied = 0
        budget = {home: PULL_BUDGET for _, home, _ in todo}
        while todo:
            calls = []
            for h, home, size in todo:
                have = _size(home)
                if size > have and budget[home] > 0:
                    n = min(PULL_CHUNK, size - have, budget[home])
                    calls.append((h, home, size, have, h.read_log.remote(home, have, n)))
            todo = []
            for (h, home, size, have, ref), data in zip(
                    calls, self._call_all([c[-1] for c in calls])):
                if not isinstance(data, bytes) or not data or _size(home) != have:
                    continue  # unreachable, nothing new, or another puller wrote meanwhile
                os.makedirs(os.path.dirname(home), exist_ok=True)
                with open(home, "ab") as f:
                    f.write(data)
                copied += len(data)
                budget[home] -= len(data)
                todo.append((h, home, size))
        return copied

    def _drop_pulled_logs(self, hs: list[Any]) -> None:
        """Have the ranks delete the node-local logs whose copy here is whole (bounded;
        what is not confirmed stays on the node)."""
        sizes = self._call_all([h.log_sizes.remote() for h in hs])
        self._call_all([h.drop_logs.remote({home: _size(home) for home, _ in got})
                        for h, got in zip(hs, sizes) if isinstance(got, list) and got])

    def _check_epoch(self, name: str, epochs: Iterable[Any]) -> None:
        newest = max((e for e in epochs if isinstance(e, int)), default=0)
        if newest > self.epoch:
            raise Fenced(name, f"epoch {self.epoch} is older than the ranks' {newest}")

    def terminate(self, name: str, job: str | None = None) -> None:
        self._signal(name, job, None, 15, "terminate", check=True)

    def kill(self, name: str, job: str | None = None) -> None:
        self._signal(name, job, None, 9, "kill", check=True)

    def release(self, name: str, settle_s: float = 5.0) -> list[GangResult]:
        """See the Protocol. ``settle_s`` bounds the wait for killed processes to be reaped."""
        return self._release(name, settle_s, give_back=True)

    def _release(self, name: str, settle_s: float, give_back: bool) -> list[GangResult]:
        """``release``; for a borrower, ``give_back``: start its owner's ranks again on the
        bundles (not when the owner goes too)."""
        from ray.experimental.internal_kv import _internal_kv_del
        from ray.util import remove_placement_group

        found = self._group(name)
        if found is None:
            self._unlend(name)  # a borrower whose owner is gone leaves only its record
            self._forget(name)
            self._launched.pop(name, None)
            return []
        pg, entry = found
        owner = entry.get("lender")
        if owner is None:
            for borrower in self._lendings_of(name):
                self._release(borrower, settle_s, give_back=False)  # their results are lost
        hs = self._live_ranks(name)
        out = self._stop(name, entry, settle_s)
        self._retire(name, hs, entry["state"] != "PENDING", wait=give_back and owner is not None)
        if owner is None:
            remove_placement_group(pg)
        else:
            self._unlend(name)
        _internal_kv_del(epoch_key(name), namespace=self.namespace)
        self._forget(name)
        self._launched.pop(name, None)
        if owner is not None and give_back:
            # The owner's rank actors come back on those bundles (get_if_exists: idempotent);
            # until they answer the owner is "placed".
            hs = self._handles.get(owner)
            for b in entry["lent"]:
                h = self._rank_actor(owner, pg, b)
                if hs is not None:
                    hs[b] = h
            self._ready.discard(owner)
            self._pings.pop(owner, None)
        return [out[k] for k in sorted(out)]

    def stop(self, name: str, settle_s: float = 5.0) -> list[GangResult]:
        """See the Protocol. ``settle_s`` bounds the wait for killed processes to be reaped."""
        found = self._group(name)
        if found is None:
            return []
        out = self._stop(name, found[1], settle_s)
        return [out[k] for k in sorted(out)]

    def _stop(self, name: str, entry: dict[str, Any], settle_s: float) -> dict[Key, GangResult]:
        """Kill the group's jobs and collect the results not acknowledged (for ``settle_s`` at
        most, until every gang is accounted for); nothing is forgotten."""
        out: dict[Key, GangResult] = {}
        if entry["state"] != "PENDING":  # when rescheduling, survivors still run jobs
            # The supervisors kill the jobs' trees first; ray.kill alone would leave the
            # jobs' grandchildren running (and its result would be lost).
            self._signal(name, None, None, 9, "release", check=True)
            deadline = time.monotonic() + settle_s
            while True:
                got, settled = self._collect(name)
                for r in got:  # collect is side-effect free: a result shows on every round
                    out.setdefault((r.job, r.attempt), r)
                if settled or time.monotonic() > deadline:
                    break
                time.sleep(0.01)
        return out

    def _retire(self, name: str, hs: list[Any], placed: bool, wait: bool) -> None:
        """Kill rank actors ``hs`` of ``name`` for good, once what they logged is home
        (``placed``: they may have run something). ``wait``: until they are gone (bounded by
        ``call_timeout_s``), so that their bundles can take another one-GPU actor."""
        if placed:
            self.pull_logs(name)  # the last words of the jobs, before the ranks go
            self._drop_pulled_logs(hs)
        for h in hs:
            try:
                self._ray.kill(h, no_restart=True)
            except Exception:  # noqa: BLE001 - already dead: nothing to free
                pass
        if wait:
            self._call_all([h.info.remote() for h in hs])  # each fails once its actor died

    def lend(self, owner: str, bundles: Iterable[int], name: str) -> None:
        """See the Protocol. The lending is recorded (KV) before any rank is touched, so a
        lend cut short by a crash is finished by the same call again."""
        from ray.experimental.internal_kv import _internal_kv_put

        check_name(name, self.prefix)
        bs = tuple(int(b) for b in bundles)
        found = self._group(owner)
        if found is None:
            raise UnknownReservation(owner, "no such reservation")
        pg, entry = found
        if "lender" in entry:
            raise InvalidGang(owner, f"is a borrower of {entry['lender']}: only a group lends")
        self._check_epoch(owner, [stored_epoch(owner)])
        lendings = self._lendings()
        rec = lendings.get(name)
        if rec is not None and rec != (owner, bs):
            raise ReservationConflict(name, f"borrows bundles {list(rec[1])} of {rec[0]}")
        if rec is not None and name in self._handles:
            return  # lent by this very executor: nothing to do
        mine = self._named_ranks(owner, bs)  # after a lend cut short, maybe some or none
        if rec is None:
            self._check_lendable(owner, entry, bs, name, lendings, mine)
            _internal_kv_put(lend_key(name, owner, bs), b"lent", overwrite=True,
                             namespace=self.namespace)
        # The owner's ranks there go first (their bundle holds one one-GPU actor); then the
        # borrower's, which know nothing of the owner's code, environment or directory.
        hs = self._handles.get(owner)
        for b in bs if hs is not None else ():
            hs[b] = None
        self._pings.pop(owner, None)  # they were sent to the ranks it had
        self._retire(owner, list(mine.values()), placed=True, wait=True)
        self._handles[name] = [self._rank_actor(name, pg, i, b) for i, b in enumerate(bs)]

    def _check_lendable(self, owner: str, entry: dict[str, Any], bs: tuple[int, ...], name: str,
                        lendings: dict[str, tuple[str, tuple[int, ...]]],
                        mine: dict[int, Any]) -> None:
        """Raise unless ``bs`` of ``owner`` (its table ``entry``; ``mine``: its rank actors
        there) may be lent to ``name``."""
        if self._placement_group(name) is not None:
            raise ReservationConflict(name, "exists")
        if entry["state"] != "CREATED":
            raise NotReady(owner, f"cannot lend: group is {_STATES.get(entry['state'], 'pending')}")
        check_bundles(owner, f"lending to {name}", bs, len(entry["bundles"]), set())
        taken = sorted(b for n, (o, lent) in lendings.items() if o == owner for b in lent if b in bs)
        if taken:
            raise InvalidGang(owner, f"bundles {taken} are lent already")
        snaps = self._call_all([mine[b].snapshot.remote() for b in bs if b in mine])
        if len(mine) < len(bs) or any(isinstance(x, str) for x in snaps):
            self._ready.discard(owner)
            self._handles.pop(owner, None)  # look up again, recreating missing ranks
            raise NotReady(owner, "cannot lend: rank workers not all reachable")
        self._check_epoch(owner, [x["epoch"] for x in snaps])
        busy = {b for b, x in zip(bs, snaps) if any(r["ended_at"] is None for r in x["records"])}
        check_bundles(owner, f"lending to {name}", bs, len(entry["bundles"]), busy)
        # Their results live in the ranks that lending stops.
        unacked = sorted({(r["job"], r["attempt"]) for x in snaps for r in x["records"]
                          if not r["acked"]})
        if unacked:
            raise InvalidGang(owner, f"bundles {list(bs)} hold results not acknowledged yet "
                              f"{unacked}: poll and ack them first")

    def _lendings_of(self, owner: str) -> list[str]:
        """The borrowers of ``owner``, sorted."""
        return sorted(set(self._lent_by(owner).values()))

    def _unlend(self, name: str) -> None:
        """Delete the record of borrower ``name`` (and its epoch's, if it was one)."""
        from ray.experimental.internal_kv import _internal_kv_del

        if _internal_kv_del(_lend_prefix(name), del_by_prefix=True, namespace=self.namespace):
            _internal_kv_del(epoch_key(name), namespace=self.namespace)

    def fence(self, epoch: int) -> None:
        from ray.experimental.internal_kv import _internal_kv_put

        self.epoch = epoch
        refs = []
        for name in self.reservations():
            # Recorded in Ray's KV store too: a rank that Ray restarts (node lost) comes back
            # with its creation arguments and must not forget the fence.
            if epoch > stored_epoch(name):
                _internal_kv_put(epoch_key(name), str(epoch), overwrite=True,
                                 namespace=self.namespace)
            found = self._group(name)
            if found is None or found[1]["state"] == "PENDING":
                continue  # its ranks have not started: calls would only time out
            refs += [h.fence.remote(epoch) for h in self._live_ranks(name)]
        # One bounded wait for all: a rank that does not answer is simply not fenced.
        self._call_all(refs)

    def attempt_fate(self, name: str, job: str, attempt: int, width: int, log_dir: str) -> Fate:
        key = (job, attempt)
        found = self._group(name)
        ray_proof = True  # the group is gone: only the lock files can tell
        nodes = self._ray.nodes()
        dead_nodes = frozenset(n["NodeID"] for n in nodes if not n["Alive"])
        lock_paths = [attempt_path(log_dir, job, attempt, r, "lock") for r in range(width)]
        if found is not None and found[1]["state"] != "PENDING":
            # A lent bundle holds no rank of this group: lending needs every gang that used
            # it ended and acknowledged, so none of them is asked about.
            hs = {b: h for b, h in enumerate(self._ranks(name) or []) if h is not None}
            where = found[1].get("bundles_to_node_id", {})
            # Fence first (calls from one caller run in order): "I don't know it" from a
            # rank that has seen our epoch cannot come from before a deposed daemon's launch.
            # Then one rank per node claims the node-local locks there (two at once would
            # find each other's flock held); the locks on this host are claimed below.
            claimer = {}
            for b in hs:
                claimer.setdefault(where.get(b) or f"?{b}", b)
            claimers = set(claimer.values())
            refs = {b: (h.fence.remote(self.epoch), h.info.remote(key),
                        h.claim_locks.remote(lock_paths, sorted(dead_nodes)) if b in claimers
                        else None) for b, h in hs.items()}
            self._call_all([r for triple in refs.values() for r in triple if r is not None])
            infos = {b: self._status(i) for b, (_, i, _) in refs.items()}
            claims = {b: True if c is None else self._status(c) for b, (_, _, c) in refs.items()}
            self._check_epoch(name, [i["epoch"] for i in infos.values() if isinstance(i, dict)])
            if any(isinstance(i, dict) and i["state"] == "running" for i in infos.values()):
                return "alive"
            # A rank that does not answer counts if its node is dead, or if its bundle has
            # lost its node (a placed group's bundle is re-placed only after its node died).
            resched = found[1]["state"] == "RESCHEDULING"
            ray_proof = all(
                (isinstance(infos[b], dict) and infos[b]["epoch"] == self.epoch
                 and claims[claimer[where.get(b) or f"?{b}"]] is True)
                or where.get(b) in dead_nodes or (resched and where.get(b) == "")
                for b in hs
            )
        else:
            # No ranks to ask: a task on every other live node with GPUs claims that node's
            # copies of the locks (a node that does not answer in time: no proof yet).
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            others = [n["NodeID"] for n in nodes if n["Alive"] and n.get("Resources", {})
                      .get("GPU", 0) > 0 and n["NodeID"] != self._home_node]
            refs = [self._claim_fn.options(
                num_cpus=0, runtime_env=self._runtime_env(), max_retries=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False),
            ).remote(lock_paths, sorted(dead_nodes)) for n in others]
            if not all(c is True for c in self._call_all(refs, self.launch_timeout_s)):
                ray_proof = False
        # Claim every lock on this host (a late supervisor then never starts the job), even
        # without the ranks' word: the attempt stays "unknown" until both agree.
        locks = [claim_dead(p, socket.gethostname(), dead_nodes) for p in lock_paths]
        return "dead" if ray_proof and all(locks) else "unknown"
