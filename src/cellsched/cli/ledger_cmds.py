"""Cluster setup and ledger commands: init, audit."""

from __future__ import annotations

from typing import Annotated

import typer

from cellsched.cli.errors import handled
from cellsched.cli.state import G, JsonFlag, backend, caller
from cellsched.fmt import emit_json, plural


@handled
def init(
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing cluster config.")] = False,
    check: Annotated[bool, typer.Option("--check", help="Only check the cluster config and its keys; write nothing.")] = False,
) -> None:
    """Write a commented starter cluster.toml, create the cluster signing key and the ledger.

    Existing files are kept (the key is never overwritten; a missing cellsched.pub is
    written again from it). A key file that is not a usable key (a directory, not PEM, a
    pair that does not match) is refused before anything is written. Edit the config, then
    submit; --check validates an edited config (and the keys, if there) without writing
    anything.

    **Example**: cellsched --cluster /etc/cellsched/cluster.toml init
    """
    from importlib.resources import files

    from cellsched.errors import BadInput
    from cellsched.ledger.db import Ledger, default_url
    from cellsched.receipt import check_keys, create_keys, key_paths
    from cellsched.spec.load import load_cluster

    path = G.cluster
    private, public = key_paths(path)
    if check:
        cluster = load_cluster(path)
        check_keys(private, public)
        print(f"ok  {path}: {len(cluster.pools)} pools, {sum(p.gpus for p in cluster.pools)} GPUs, "
              f"{len(cluster.teams)} teams")
        return
    keep = path.exists() and not force
    if keep:
        load_cluster(path)  # a hand-edited file must still be valid
    elif not path.parent.exists():
        raise BadInput(f"{path.parent}: no such directory")
    elif path.suffix.lower() != ".toml":  # the starter config is TOML: written under another name it would not load
        raise BadInput(f"{path}: init writes a TOML cluster config; name it .toml (a YAML or JSON one you write yourself)")
    # The keys before anything is written: a damaged key is never kept as if it were one.
    had_key = check_keys(private, public)
    had_public = public.exists()
    # The ledger first: a --db that cannot be used is one line with nothing written.
    url = G.db or default_url(path)
    Ledger(url).ensure_schema()
    if keep:
        print(f"kept     {path} (exists; --force to overwrite)")
    else:
        text = files("cellsched").joinpath("templates/cluster.toml").read_text()
        path.write_text(text.replace("{user}", caller()))
        print(f"wrote    {path}")
        load_cluster(path)
    if create_keys(private, public):
        print(f"wrote    {private} (private signing key, mode 600) and {public}")
    else:
        print(f"kept     {private}")
        if had_key and not had_public:
            print(f"wrote    {public} (from the private key)")
    print(f"ledger   {url.split('@')[-1] if '@' in url else url}")


@handled
def audit(json_out: JsonFlag = False) -> None:
    """Check the ledger: its event chain, and the tables derived from it.

    The hash chain is re-derived event by event (an event edited, removed or reordered is
    named); then grants, charges, refunds, breaches, job runs and projects are rebuilt from
    the events and compared with their tables (a hand edit is named by its table and row).
    Exit 1 naming the first problem.

    **Example**: cellsched audit
    """
    from cellsched.errors import Failed

    result = backend().audit()
    if json_out:
        emit_json(result)
        if not result["ok"]:
            raise typer.Exit(1)
        return
    if not result["ok"]:
        raise Failed(f"audit failed: {result['problem']}")
    rows = result.get("rows")
    derived = "" if rows is None else f"; {plural(rows, 'derived row')} agree with them"
    print(f"ok  {plural(result['events'], 'event')}, chain head sha256:{result['head']}{derived}")
