"""A small read-only HTTP server: a peer's metrics port (/metrics, /status) and `p2pfed watch`.

It answers GET and HEAD for the paths it was given and nothing else (405 for other methods,
404 for other paths), on its own daemon threads, so a slow or hostile client never blocks
training: each connection has a deadline (TIMEOUT_S), a request line or header is bounded by
http.server's limits, and a route that raises answers 500 and is logged, never ending a thread.
It binds loopback unless told otherwise (docs/security.md).
"""
from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

log = logging.getLogger("p2pfed.net.httpserve")

TIMEOUT_S = 5.0          # a connection idle this long is closed
Route = Callable[[], tuple[str, bytes]]     # () -> (content type, body)


class HttpServer:
    """Serve routes (path -> Route) on bind:port; port 0 = any free port (see .port)."""

    def __init__(self, bind: str, port: int, routes: dict[str, Route], name: str = "http"):
        self.routes = dict(routes)
        handler = _handler(self.routes)
        self._server = ThreadingHTTPServer((bind, port), handler)   # raises OSError if the port is taken
        self._server.daemon_threads = True
        self.bind, self.port = bind, self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                         name=f"{name}-{self.port}", daemon=True)

    def start(self) -> "HttpServer":
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.bind in ("", "0.0.0.0") else self.bind
        return f"http://{host}:{self.port}"


def _handler(routes: dict[str, Route]):
    class Handler(BaseHTTPRequestHandler):
        timeout = TIMEOUT_S
        server_version = "p2pfed"
        sys_version = ""

        def do_GET(self) -> None:
            self._answer(body=True)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def _answer(self, body: bool) -> None:
            route = routes.get(self.path.split("?", 1)[0])
            if route is None:
                return self._send(404, "text/plain; charset=utf-8", b"not found; try / \n", body)
            try:
                ctype, data = route()
            except Exception as e:       # a broken view answers 500; the server goes on
                log.warning("%s failed: %s: %s", self.path, type(e).__name__, e)
                return self._send(500, "text/plain; charset=utf-8", b"internal error\n", body)
            self._send(200, ctype, data, body)

        def _send(self, code: int, ctype: str, data: bytes, body: bool) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if body:
                self.wfile.write(data)

        def _refuse(self) -> None:
            self.send_response(405)
            self.send_header("Allow", "GET, HEAD")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse

        def log_message(self, format: str, *args) -> None:
            log.debug("%s %s", self.address_string(), format % args)

    return Handler
