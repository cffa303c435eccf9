"""``cellsched server``: the trust boundary between teams.

One process owns the ledger and answers every CLI command over HTTP: on a Unix socket, where
the kernel tells who the caller is (``SO_PEERCRED``), and on TCP/TLS with bearer tokens an
admin issued. The CLI becomes a thin client (``cellsched.cli.remote``) when a server is
configured; with none, it works on a local ledger exactly as before.

Modules: ``app`` (the FastAPI application: limits, errors, routers), ``api`` (the commands),
``auth`` (identity and tokens), ``peercred`` (the uvicorn protocol that reads the peer's
credentials), ``listen`` (the listeners and startup checks), ``metrics`` (Prometheus) and
``dashboard`` (the live utilisation page). Heavy imports stay here: the client never
imports this package.
"""
