"""The board's web app (starlette): read-only routes over the watcher's state, task pages, worker logs, the event
stream; a token gate and security headers around them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import stat
from importlib import resources
from urllib.parse import urlencode

import anyio
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from ...core.errors import HypervisorError, storage_error
from ...supervisor import runs
from .serve import is_loopback
from .taskpage import inside, task_page
from .watch import Watcher

LOG_CAP = 256 * 1024  # bytes of a worker log served: its end
STREAM_PING_SECONDS = 15  # a comment line on an idle stream, so proxies and the browser keep it
STREAM_WAKE_SECONDS = 0.5  # how often an idle stream checks for the server stopping
COOKIE = "hypervisor_board"
TOKEN_HEADER = "x-hypervisor-token"
STATIC = {"board.js": "text/javascript", "board.css": "text/css"}
PAGES = ("board.html", "task.html")
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]  # fmt: skip


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def host_name(header: str) -> str:
    """The name in a Host header, without its port: `[::1]:8765` is `::1`, `localhost:8765` is `localhost`."""
    if header.startswith("["):
        return header[1 : header.find("]")]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def not_found(what: str = "not found") -> PlainTextResponse:
    return PlainTextResponse(f"404: {what}\n", status_code=404)


def read_log(state: str, run_id: str, name: str) -> tuple[bytes, int] | None:
    """(the last LOG_CAP bytes of a run's worker log, its whole size), or None for anything that is not one: the
    run must be recorded, the name a plain `<task>.<attempt>.log` in its logs/ folder, the file regular (no
    symlink) and inside the runs folder."""
    if run_id not in runs.run_ids(state) or not name.endswith(".log") or name.startswith(".") or "/" in name:
        return None
    runs_dir = os.path.join(state, runs.RUNS_DIR)
    path = os.path.join(runs_dir, run_id, "logs", name)
    if not inside(path, runs_dir):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode):
            return None
        handle.seek(max(0, st.st_size - LOG_CAP))
        return handle.read(LOG_CAP), st.st_size


def build_app(watcher: Watcher, token: str | None = None, on_ready=None, on_stop=None) -> Starlette:
    """The board app over `watcher`; with `token`, every request must carry it (header, ?token= once, cookie)."""
    queue = watcher.queue

    async def page(request: Request) -> Response:
        return Response(_static("board.html"), media_type="text/html; charset=utf-8")

    async def task(request: Request) -> Response:
        try:
            await watcher.read(task_page, queue, request.path_params["task_id"])
        except HypervisorError:
            return not_found("no such task")
        return Response(_static("task.html"), media_type="text/html; charset=utf-8")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return not_found()
        return Response(_static(name), media_type=STATIC[name], headers={"cache-control": "no-cache"})

    async def api_state(request: Request) -> Response:
        if request.headers.get("if-none-match") == watcher.etag:
            return Response(status_code=304, headers={"etag": watcher.etag})
        return Response(watcher.body, media_type="application/json", headers={"etag": watcher.etag,
                                                                                "cache-control": "no-cache"})  # fmt: skip

    async def api_task(request: Request) -> Response:
        try:
            data = await watcher.read(task_page, queue, request.path_params["task_id"])
        except HypervisorError:
            return not_found("no such task")
        except OSError as error:
            return PlainTextResponse(f"{storage_error(error)}\n", status_code=503)
        return Response(json.dumps(data, ensure_ascii=False), media_type="application/json")

    async def api_events(request: Request) -> Response:
        stopping = anyio.Event()  # set by sse-starlette when the server shuts down: the stream then ends cleanly

        async def stream():
            seen = -1
            while not stopping.is_set():
                version = await watcher.changed_after(seen, STREAM_WAKE_SECONDS)
                if version != seen:
                    seen = version
                    yield {"event": "state", "id": str(version), "data": json.dumps({"version": version})}

        return EventSourceResponse(stream(), ping=STREAM_PING_SECONDS, headers={"cache-control": "no-cache"},
                                   shutdown_event=stopping, shutdown_grace_period=1.0)  # fmt: skip

    async def log(request: Request) -> Response:
        found = await watcher.read(read_log, queue.store.state, request.path_params["run_id"],
                                   request.path_params["name"])  # fmt: skip
        if found is None:
            return not_found("no such log")
        data, size = found
        if size > len(data):
            data = f"[the first {size - len(data)} of {size} bytes are not shown]\n".encode() + data
        return Response(data, media_type="text/plain; charset=utf-8", headers={"x-log-size": str(size)})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await watcher.start()
        poller = asyncio.create_task(watcher.run())
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            watcher.close()
            if on_stop is not None:
                on_stop()

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/task/{task_id}", task, methods=["GET"]),
        Route("/static/{name}", static, methods=["GET"]),
        Route("/api/state", api_state, methods=["GET"]),
        Route("/api/task/{task_id}", api_task, methods=["GET"]),
        Route("/api/events", api_events, methods=["GET"]),
        Route("/logs/{run_id}/{name}", log, methods=["GET"]),
    ]

    async def missing(request: Request, exc: Exception) -> Response:
        return not_found()

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: missing})
    return Guard(app, token)


class Guard:
    """ASGI middleware: the token check (or, without a token, a loopback Host header: no DNS rebinding) and the
    security headers on every answer. Read-only: anything but GET and HEAD is refused."""

    def __init__(self, app, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def secured(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        request = Request(scope)
        refusal = self._refusal(request)
        if refusal is not None:
            return await refusal(scope, receive, secured)
        if self.token is not None and "token" in request.query_params:
            # ?token= once: the cookie from now on, and the URL without it (not kept in the history)
            rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            target = request.url.path + (f"?{rest}" if rest else "")
            answer = RedirectResponse(target, status_code=303)
            answer.set_cookie(COOKIE, self.token, httponly=True, samesite="strict", path="/")
            return await answer(scope, receive, secured)
        return await self.app(scope, receive, secured)

    def _refusal(self, request: Request) -> Response | None:
        if request.method not in ("GET", "HEAD"):
            return PlainTextResponse("405: the board is read-only\n", status_code=405, headers={"allow": "GET, HEAD"})
        if self.token is None:
            if not is_loopback(host_name(request.headers.get("host", ""))):
                return PlainTextResponse("403: without a token this board answers only to a loopback address or "
                                         "localhost (start it with --token to reach it by another name)\n", status_code=403)  # fmt: skip
            return None
        auth = request.headers.get("authorization", "")
        given = (request.headers.get(TOKEN_HEADER) or (auth[7:] if auth.lower().startswith("bearer ") else None)
                 or request.query_params.get("token") or request.cookies.get(COOKIE))  # fmt: skip
        if given is None or not secrets.compare_digest(given.encode(), self.token.encode()):
            return PlainTextResponse("401: this board needs its token: open the URL `hypervisor board` printed "
                                     f"(it ends in ?token=...), or send the header {TOKEN_HEADER}\n",
                                     status_code=401)  # fmt: skip
        return None
