"""The HTTP server of /metrics: loopback unless told otherwise, a bearer token and HTTPS when
configured. A scrape runs the collector in the server's thread, off the event loop."""

from __future__ import annotations

import hmac
import logging
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


class MetricsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, registry: CollectorRegistry, token: str) -> None:
        self.registry = registry
        self.token = token
        super().__init__((host, port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer

    def do_GET(self) -> None:
        if self.path.split("?")[0] not in ("/metrics", "/"):
            self._answer(404, b"not found\n", "text/plain")
            return
        token = self.server.token
        if token:
            given = self.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                self._answer(401, b"a bearer token is required\n", "text/plain",
                             (("WWW-Authenticate", 'Bearer realm="kevo-repl metrics"'),))
                return
        self._answer(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)

    def _answer(self, code: int, body: bytes, ctype: str,
                headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("metrics: " + format, *args)


def start(host: str, port: int, registry: CollectorRegistry, token: str = "",
          tls_cert: str = "", tls_key: str = "") -> tuple[MetricsServer, threading.Thread]:
    server = MetricsServer(host, port, registry, token)
    if tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tls_cert, tls_key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return server, thread
