"""A small read-only HTTP server: a peer's metrics port (/metrics, /status) and `p2pfed watch`.

It answers GET and HEAD for the paths it was given and nothing else (405 for other methods,
404 for other paths), on its own daemon threads, so a slow or hostile client never blocks
training: a connection waits at most TIMEOUT_S for each read, at most MAX_CONNECTIONS are served
at once (more are closed unanswered), a request line or header is bounded by http.server's
limits, and a route that raises answers 500 and is logged (rate-limited), never ending a thread.
It binds loopback unless told otherwise (docs/security.md).
"""
from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from .ratelimit import RateLimitedLog

log = logging.getLogger("p2pfed.net.httpserve")
_log = RateLimitedLog(log, 60.0)

TIMEOUT_S = 5.0          # a connection whose next read takes longer is closed
MAX_CONNECTIONS = 16     # connections served at once; more are closed at once
Route = Callable[[], tuple[str, bytes]]     # () -> (content type, body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)             # too many at once: closed unanswered
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address):
        """A client that hangs up mid-answer, or any error of one connection: logged, not printed."""
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


class HttpServer:
    """Serve routes (path -> Route) on bind:port; port 0 = any free port (see .port)."""

    def __init__(self, bind: str, port: int, routes: dict[str, Route], name: str = "http"):
        self.routes = dict(routes)
        handler = _handler(self.routes)
        self._server = _Server((bind, port), handler)   # raises OSError if the port is taken
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
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(self.bind, self.bind)
        return f"http://{f'[{host}]' if ':' in host and not host.startswith('[') else host}:{self.port}"


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
                _log.log(("route", self.path), logging.WARNING, "%s failed: %s: %s", self.path, type(e).__name__, e)
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
