"""A throttling S3 in front of a real one: a small threaded HTTP proxy on 127.0.0.1 that forwards every
request to an S3-compatible server (moto in server mode) and, for the objects a :class:`FaultPlan` names,
answers the first GETs with ``503 SlowDown`` and cuts some responses off mid-body with a TCP reset, as a
loaded S3 and a flaky network do. Clients reach it through ``AWS_ENDPOINT_URL``, as users reach MinIO.

Test tooling only: it trusts its client, holds whole bodies in memory, and listens on loopback.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


def error_body(code: str, message: str) -> bytes:
    """An S3 error document, as S3 sends with a 4xx/5xx."""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
        "</Error>"
    ).encode()


HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


@dataclass
class FaultPlan:
    """Which requests fail, and how. Only GETs of objects whose key starts with ``prefix`` (in ``bucket``)
    and listings of that prefix are touched; everything else (the output table) passes untouched.

    - the first ``throttle`` GETs of each object and byte range get ``503 SlowDown`` (so the reads of a
      job's workers meet them too, not only the first look at a file);
    - of the GETs served, every ``reset_every``-th of each object is cut off halfway through its body;
    - the first ``throttle_lists`` listings of the prefix get ``503 SlowDown``;
    - ``fault`` replaces ``503 SlowDown`` by another answer (``(500, "InternalError")``, ``(429, ...)``);
    - GETs and HEADs of the keys in ``denied``, and listings under them, always get ``403 AccessDenied``.
    """

    bucket: str
    prefix: str
    throttle: int = 3
    reset_every: int = 0
    throttle_lists: int = 1
    fault: tuple[int, str] = (503, "SlowDown")
    denied: tuple[str, ...] = ()
    seen: Counter = field(default_factory=Counter)
    injected: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def decide(self, method: str, path: str, query: str, byte_range: str = "") -> str | None:
        """``"throttle"``, ``"reset"``, ``"deny"`` or None for one request."""
        parts = unquote(path).lstrip("/").split("/", 1)
        bucket, key = parts[0], parts[1] if len(parts) > 1 else ""
        if bucket != self.bucket or method not in ("GET", "HEAD"):
            return None
        if key and key in self.denied:
            return "deny"
        if method != "GET":
            return None
        q = parse_qs(query)
        if not key and any(q.get("prefix", [""])[0].startswith(d) for d in self.denied):
            return "deny"  # a listing of a denied prefix
        if not key and q.get("prefix", [""])[0].startswith(self.prefix):  # a listing (ListObjectsV2)
            with self.lock:
                self.seen[("list", q["prefix"][0])] += 1
                throttled = self.seen[("list", q["prefix"][0])] <= self.throttle_lists
                return self._inject("throttle") if throttled else None
        if not key.startswith(self.prefix):
            return None
        with self.lock:
            self.seen[("get", key, byte_range)] += 1
            if self.seen[("get", key, byte_range)] <= self.throttle:
                return self._inject("throttle")
            self.seen[("served", key)] += 1
            if self.reset_every and self.seen[("served", key)] % self.reset_every == 0:
                return self._inject("reset")
        return None

    def _inject(self, fault: str) -> str:
        self.injected[fault] += 1
        return fault


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def log_message(self, *args) -> None:  # quiet: a test's output is for its assertions
        pass

    def _body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def _handle(self) -> None:
        body = self._body()
        url = urlsplit(self.path)
        self.server.count(self.command, url.path, url.query, self.headers.get("Authorization", ""))
        plan = self.server.plan
        fault = (
            plan.decide(self.command, url.path, url.query, self.headers.get("Range", "")) if plan else None
        )
        if fault in ("throttle", "deny"):
            status, code = self.server.plan.fault if fault == "throttle" else (403, "AccessDenied")
            body = error_body(code, "injected by tests.support.s3proxy")
            self._reply(status, {"Content-Type": "application/xml"}, b"" if self.command == "HEAD" else body)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            resp = upstream.getresponse()
            data = resp.read()
            out = {k: v for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP}
        finally:
            upstream.close()
        if fault == "reset" and len(data) > 1:
            self._reset_midway(resp.status, out, data)
            return
        self._reply(resp.status, out, data, head=self.command == "HEAD")

    def _reply(self, status: int, headers: dict, data: bytes, head: bool = False) -> None:
        self.send_response(status)
        for k, v in headers.items():
            if k.lower() != "content-length":
                self.send_header(k, v)
        # A HEAD answers with the object's length and no body.
        self.send_header(
            "Content-Length", headers.get("Content-Length", str(len(data))) if head else str(len(data))
        )
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _reset_midway(self, status: int, headers: dict, data: bytes) -> None:
        self.send_response(status)
        for k, v in headers.items():
            if k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        # SO_LINGER 0: close() sends a RST, as a dropped connection does, rather than a clean FIN.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

    def finish(self) -> None:
        with contextlib.suppress(OSError):  # the socket a reset closed
            super().finish()


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: tuple[str, int], plan: FaultPlan | None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream
        self.plan = plan
        self.calls: Counter = Counter()  # ("LIST" | "GET" | "HEAD" | ..., bucket) -> requests seen
        self.signers: Counter = Counter()  # (access key id, "log" | "data") -> signed requests seen
        self.calls_lock = threading.Lock()

    def count(self, method: str, path: str, query: str, authorization: str) -> None:
        parts = unquote(path).lstrip("/").split("/", 1)
        listing = method == "GET" and (len(parts) == 1 or not parts[1]) and "list-type" in query
        signer = re.search(r"Credential=([^/]+)/", authorization)
        with self.calls_lock:
            self.calls[("LIST" if listing else method, parts[0])] += 1
            if signer:
                self.signers[(signer.group(1), "log" if "_delta_log" in path else "data")] += 1

    def handle_error(self, request, client_address) -> None:  # a client that hung up: not our concern
        pass


class S3Proxy:
    """``with S3Proxy("http://127.0.0.1:PORT", plan) as proxy: ... proxy.endpoint``."""

    def __init__(self, upstream: str, plan: FaultPlan | None = None):
        u = urlsplit(upstream)
        self.server = _ProxyServer((u.hostname, u.port), plan)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def calls(self) -> Counter:
        return self.server.calls

    @property
    def signers(self) -> Counter:
        return self.server.signers

    @property
    def plan(self) -> FaultPlan | None:
        return self.server.plan

    @plan.setter
    def plan(self, plan: FaultPlan | None) -> None:
        self.server.plan = plan

    def __enter__(self) -> S3Proxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
