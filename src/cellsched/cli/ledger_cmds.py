"""Cluster setup and ledger commands: init, audit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cellsched.cli.errors import handled
from cellsched.cli.render import emit_json
from cellsched.cli.state import G, JsonFlag, backend, caller


@handled
def init(
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing cluster config.")] = False,
    check: Annotated[bool, typer.Option("--check", help="Only check the cluster config; write nothing.")] = False,
) -> None:
    """Write a commented starter cluster.toml, create the cluster signing key and the ledger.

    Existing files are kept (the key is never overwritten). Edit the config, then submit;
    --check validates an edited config without writing anything.

    **Example**: cellsched --cluster /etc/cellsched/cluster.toml init
    """
    from importlib.resources import files

    from cellsched.errors import BadInput
    from cellsched.ledger.db import Ledger, default_url
    from cellsched.receipt import create_keys, key_paths
    from cellsched.spec.load import load_cluster

    path = G.cluster
    if check:
        cluster = load_cluster(path)
        print(f"ok  {path}: {len(cluster.pools)} pools, {sum(p.gpus for p in cluster.pools)} GPUs, "
              f"{len(cluster.teams)} teams")
        return
    if path.exists() and not force:
        print(f"kept     {path} (exists; --force to overwrite)")
    else:
        if not path.parent.exists():
            raise BadInput(f"{path.parent}: no such directory")
        text = files("cellsched").joinpath("templates/cluster.toml").read_text()
        path.write_text(text.replace("{user}", caller()))
        print(f"wrote    {path}")
    load_cluster(path)  # a hand-edited file must still be valid
    private, public = key_paths(path)
    if create_keys(private, public):
        print(f"wrote    {private} (private signing key, mode 600) and {public}")
    else:
        print(f"kept     {private}")
    url = G.db or default_url(path)
    Ledger(url).ensure_schema()
    print(f"ledger   {url.split('@')[-1] if '@' in url else url}")


@handled
def audit(json_out: JsonFlag = False) -> None:
    """Verify the ledger's hash chain; exit 1 naming the first event that was edited or removed.

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
    print(f"ok  {result['events']} events, chain head sha256:{result['head']}")
