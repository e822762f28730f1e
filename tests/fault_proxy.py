"""A fault-injecting HTTP proxy for tests: it sits between a client and a real server on 127.0.0.1.

Each request is forwarded unless a ``Fault`` matches it (method and a substring of the path):

- ``status``: answer ``code`` (500, 503, ...) without forwarding;
- ``reset``: reset the connection (RST) without forwarding;
- ``delay``: forward, then hold the answer ``seconds`` (past the client's timeout) before sending it;
- ``drop``: forward, then send the headers and half the body and close the connection.

``delay`` and ``drop`` reach the server: the request took effect but its answer is lost. A fault
fires ``times`` times (``math.inf``: always); ``hits`` records every fault that fired. Pure stdlib.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "proxy-connection"}


@dataclass
class Fault:
    method: str
    path: str  # a substring of the request path
    kind: str  # status | reset | delay | drop
    times: float = 1
    code: int = 503
    seconds: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        return self.times > 0 and method == self.method and self.path in path


class FaultProxy:
    """``with FaultProxy(upstream_port) as proxy:`` listens on ``proxy.url``; set ``proxy.faults``."""

    def __init__(self, upstream_port: int, host: str = "127.0.0.1"):
        self.upstream = (host, upstream_port)
        self.faults: list[Fault] = []
        self.hits: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def _take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.times -= 1
                    self.hits.append((method, path, fault.kind))
                    return fault
        return None

    def _forward(self, method: str, path: str, headers, body: bytes):
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            sent = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
            conn.request(method, path, body=body or None, headers=sent)
            resp = conn.getresponse()
            return resp.status, resp.reason, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fault = proxy._take(self.command, self.path)
                self.close_connection = True
                if fault is not None and fault.kind == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    return
                if fault is not None and fault.kind == "status":
                    status, reason, headers, payload = fault.code, "Injected fault", [], b"injected fault"
                else:
                    status, reason, headers, payload = proxy._forward(self.command, self.path, self.headers, body)
                if fault is not None and fault.kind == "delay":
                    threading.Event().wait(fault.seconds)
                self.send_response(status, reason)
                for k, v in headers:
                    if k.lower() not in HOP_BY_HOP:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Connection", "close")
                self.end_headers()
                if fault is not None and fault.kind == "drop":
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(payload)

            def handle_one_request(self):
                try:
                    super().handle_one_request()
                except OSError:  # the client went away (it timed out, or we dropped it): nothing to answer
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

        return Handler
