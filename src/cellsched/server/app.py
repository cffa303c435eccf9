"""The FastAPI application: request limits, one error shape, the routers.

Every error a user can cause is a 4xx whose body is ``{"error": "<one line>", "exit_code":
n}``: the same line and exit code the CLI prints for it locally. Nothing else reaches the
client: an unexpected exception is logged with its traceback here and answered with a 500
that says only that (a bug to fix, never a bad request).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cellsched.errors import BadInput, CellschedError, Denied, NotFound
from cellsched.server.state import ServerState

log = logging.getLogger("cellsched.server")

CODE_UPLOAD_PREFIX = "/api/code/"  # the one endpoint allowed bodies over max_body


def status_of(err: CellschedError) -> int:
    """The HTTP status for an error the CLI would print: 404 not found, 400 bad input,
    403 denied, 409 understood but failed."""
    if isinstance(err, NotFound):
        return 404
    if isinstance(err, BadInput):
        return 400
    if isinstance(err, Denied):
        return 403
    return 409


def error_body(message: str, exit_code: int) -> dict[str, Any]:
    # A line may quote what the client sent; lone surrogates (JSON and YAML can carry them)
    # cannot be encoded as UTF-8: written as escapes, not a 500.
    return {"error": message.encode("utf-8", "backslashreplace").decode("utf-8"), "exit_code": exit_code}


class BodyLimit:
    """Refuse request bodies over the limit (413) before the application reads them:
    by ``Content-Length`` when given, else by counting the streamed chunks."""

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.state.max_code_body if scope["path"].startswith(CODE_UPLOAD_PREFIX) else self.state.max_body
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _too_large(send, "Content-Length is not a number", 400)
                    return
                if declared > limit:
                    await _too_large(send, f"request body of {declared} bytes is over the limit of {limit} bytes")
                    return
        seen = 0
        started = False

        async def counted() -> dict[str, Any]:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge(limit)
            return msg

        async def watched_send(msg: dict[str, Any]) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counted, watched_send)
        except _BodyTooLarge as e:
            if not started:
                await _too_large(send, f"request body is over the limit of {e.limit} bytes")


class _BodyTooLarge(StarletteHTTPException):
    """Raised from the body's stream: an HTTP error (413) of its own, so that a route that
    parses the body (FastAPI turns other errors met there into a 400) answers it too."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is over the limit of {limit} bytes")
        self.limit = limit


async def _too_large(send: Any, message: str, status: int = 413) -> None:
    import json

    body = json.dumps(error_body(message, 2)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class ConfigWatch:
    """Before each request, read the cluster config again if its file changed
    (``Env.refresh_cluster``): who is in which team and who is an admin are what the file
    says now, as for a command run locally. A file that no longer validates, or that group
    or others may write, is not taken: the config in force stays, and the log says why."""

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            from cellsched.server.listen import check_cluster_mode

            env = self.state.env
            try:
                if env.refresh_cluster(check_cluster_mode):
                    log.info("cluster config %s read again: it changed", env.cluster_path)
                    if self.state.metrics is not None:
                        self.state.metrics.reports.clear()
            except CellschedError as e:
                log.error("cluster config not read again, the one in force stays: %s", e.message)
        await self.app(scope, receive, send)


def _validation_line(exc: RequestValidationError) -> str:
    """One line naming the first field that is wrong, like the CLI's bad-input lines."""
    errs = exc.errors()
    if not errs:
        return "bad request"
    e = errs[0]
    where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path")) or "request"
    return f"{where}: {e.get('msg', 'invalid')}"


def create_app(state: ServerState) -> FastAPI:
    """The application for one ledger. Routers: ``api`` (the commands), ``auth`` (tokens,
    whoami), ``metrics`` (/metrics) and ``dashboard`` (/)."""
    from cellsched import __version__
    from cellsched.server import api, auth, dashboard, metrics

    app = FastAPI(title="cellsched", version=__version__,
                  description="Guaranteed GPU windows for small research teams, on Ray.")
    app.state.cs = state
    state.metrics = metrics.Metrics(state)

    @app.exception_handler(CellschedError)
    async def _cellsched_error(_req: Request, exc: CellschedError) -> JSONResponse:
        return JSONResponse(error_body(exc.message, exc.exit_code), status_code=status_of(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(_validation_line(exc), 2), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        # 429 (too many of the caller's requests at once) is no bad input: refused for now, exit 1
        code = 2 if exc.status_code < 500 and exc.status_code != 429 else 1
        return JSONResponse(error_body(str(exc.detail), code), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(req: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", req.method, req.url.path)
        return JSONResponse(error_body("internal server error (logged on the server)", 1), status_code=500)

    app.include_router(api.router)
    app.include_router(auth.router)
    app.include_router(metrics.router)
    app.include_router(dashboard.router)
    app.add_middleware(BodyLimit, state=state)  # type: ignore[arg-type]
    app.add_middleware(ConfigWatch, state=state)  # type: ignore[arg-type]
    return app


def state_of(request: Request) -> ServerState:
    """The server's state, for route functions."""
    return request.app.state.cs  # type: ignore[no-any-return]
