"""S3 test rig: a moto server in a subprocess and a fault-injecting proxy.

moto is spoken to only over HTTP, as a real S3 would be.  moto completes
Glacier restores at once and never fails, so ``FaultProxy`` sits in front of
it to make restores take time and to inject errors, resets and delays.
Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import collections
import dataclasses
import http.client
import http.server
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from typing import Iterable, Iterator

HOST = "127.0.0.1"
COPY_CHUNK = 64 * 1024
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect",
              "proxy-connection", "te", "trailer", "upgrade"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def aws_test_env(tmpdir: str) -> dict[str, str]:
    """Environment for boto3 in tests: fake keys, no real ~/.aws, no IMDS."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.path.join(tmpdir, "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": os.path.join(tmpdir, "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        # A vault a test forgot to configure fails fast here instead of
        # reaching Amazon S3 (port 9, discard: nothing listens).
        "AWS_ENDPOINT_URL": f"http://{HOST}:9",
    }


# Variables that would point boto3 at real accounts or change its behaviour.
AWS_ENV_TO_CLEAR = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE", "AWS_CA_BUNDLE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


def remove_bucket(client, name: str) -> None:
    """Free moto's memory of a bucket; a test may already have removed things."""
    for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", ()):
        client.abort_multipart_upload(Bucket=name, Key=upload["Key"],
                                      UploadId=upload["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", ()):
            client.delete_object(Bucket=name, Key=obj["Key"])
    client.delete_bucket(Bucket=name)


class MotoServer:
    """``python -m moto.server`` on a free loopback port, in its own process."""

    def __init__(self, env: dict[str, str] | None = None):
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.endpoint = ""
        self._log = None

    def start(self, tries: int = 3) -> "MotoServer":
        output = ""
        for _ in range(tries):   # another process may grab the port first
            port = free_port()
            self._log = tempfile.TemporaryFile()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
                env={**os.environ, **self.env}, stdin=subprocess.DEVNULL,
                stdout=self._log, stderr=subprocess.STDOUT)
            if _wait_listening(port, self.proc, timeout=30):
                self.endpoint = f"http://{HOST}:{port}"
                return self
            self._log.seek(0)
            output = self._log.read()[-2000:].decode(errors="replace")
            self.stop()
        raise RuntimeError(f"moto server did not start: {output}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@dataclasses.dataclass(frozen=True)
class Request:
    method: str
    path: str           # as sent, percent-encoded: /BUCKET/KEY
    query: str          # raw query string: "restore", "uploadId=…&partNumber=2"
    status: int         # what the client got; 0 for a reset
    range: str | None = None    # the Range header, to see where a GET resumed


@dataclasses.dataclass
class _Fault:
    kind: str           # "fail" | "reset" | "slow" | "cut"
    remaining: int
    methods: frozenset[str] | None
    path_contains: str | None
    status: int = 503
    code: str = "SlowDown"
    seconds: float = 0.0
    after: int = 0      # "cut": body bytes sent before the reset

    def matches(self, method: str, target: str) -> bool:
        return (self.remaining > 0
                and (self.methods is None or method in self.methods)
                and (self.path_contains is None or self.path_contains in target))


class FaultProxy:
    """An HTTP proxy in front of moto that can fail, reset, delay and slow
    restores.  Tweak it from tests through its attributes and methods:

    - ``restore_delay``: seconds a restore stays ongoing after ``POST ?restore``
      (HEAD says ``ongoing-request="true"``, GET answers 403 InvalidObjectState,
      another restore answers 409 RestoreAlreadyInProgress);
    - ``fail_next(n, status, code, methods, path_contains)``: answer an S3 error;
    - ``reset_next(n, …)``: close the connection without an answer;
    - ``slow_next(n, seconds, …)``: wait before answering;
    - ``cut_next(n, after, …)``: forward, but close after ``after`` body bytes;
    - ``log``: the ``Request``s seen, newest last (bounded).
    """

    def __init__(self, upstream: str, max_log: int = 10_000):
        self.upstream = urllib.parse.urlsplit(upstream)
        self.restore_delay = 0.0
        self.log: collections.deque[Request] = collections.deque(maxlen=max_log)
        self._faults: list[_Fault] = []
        self._restoring: dict[str, float] = {}   # path -> monotonic deadline
        self._generation = 0    # bumped by reset(): late answers of a past test
        self._lock = threading.Lock()
        self._server = _QuietServer((HOST, 0), _make_handler(self))
        self.endpoint = f"http://{HOST}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="s3-fault-proxy", daemon=True)

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reset(self) -> None:
        """Forget faults, restores in progress and the log (between tests)."""
        with self._lock:
            self._faults.clear()
            self._restoring.clear()
            self.log.clear()
            self.restore_delay = 0.0
            self._generation += 1

    # -- the control API ----------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 503, code: str = "SlowDown", *,
                  methods: Iterable[str] | None = None,
                  path_contains: str | None = None) -> None:
        self._add(_Fault("fail", n, _methods(methods), path_contains, status, code))

    def reset_next(self, n: int = 1, *, methods: Iterable[str] | None = None,
                   path_contains: str | None = None) -> None:
        self._add(_Fault("reset", n, _methods(methods), path_contains))

    def slow_next(self, n: int = 1, seconds: float = 1.0, *,
                  methods: Iterable[str] | None = None,
                  path_contains: str | None = None) -> None:
        self._add(_Fault("slow", n, _methods(methods), path_contains, seconds=seconds))

    def cut_next(self, n: int = 1, after: int = 0, *, methods: Iterable[str] | None = None,
                 path_contains: str | None = None) -> None:
        self._add(_Fault("cut", n, _methods(methods), path_contains, after=after))

    def requests(self, method: str | None = None,
                 path_contains: str | None = None) -> list[Request]:
        """Logged requests, filtered; ``path_contains`` looks at path?query."""
        with self._lock:
            entries = list(self.log)
        return [r for r in entries if (method is None or r.method == method)
                and (path_contains is None or path_contains in f"{r.path}?{r.query}")]

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return sum(f.remaining for f in self._faults)

    # -- used by the handler ------------------------------------------------

    def _add(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, method: str, target: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, target):
                    fault.remaining -= 1
                    return fault
        return None

    def _restore_ongoing(self, path: str) -> bool:
        with self._lock:
            deadline = self._restoring.get(path)
            if deadline is not None and time.monotonic() >= deadline:
                del self._restoring[path]
                deadline = None
            return deadline is not None

    def _restore_started(self, path: str) -> None:
        with self._lock:
            if self.restore_delay > 0:
                self._restoring[path] = time.monotonic() + self.restore_delay

    def _record(self, generation: int, request: Request) -> None:
        with self._lock:
            if generation == self._generation:   # else a past test's straggler
                self.log.append(request)


def _methods(methods: Iterable[str] | None) -> frozenset[str] | None:
    if isinstance(methods, str):
        methods = [methods]
    return None if methods is None else frozenset(m.upper() for m in methods)


_UNDECIDED = object()


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address) -> None:
        # Clients that time out or give up close their end: expected here.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _make_handler(proxy: FaultProxy) -> type:
    class Handler(_ProxyHandler):
        pass
    Handler.proxy = proxy
    return Handler


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"      # keep-alive, as botocore expects
    proxy: FaultProxy

    def log_message(self, format: str, *args: object) -> None:
        pass    # the proxy's own Request log is what tests look at

    def parse_request(self) -> bool:
        self._fault = _UNDECIDED
        self._generation = self.proxy._generation
        return super().parse_request()

    def handle_expect_100(self) -> bool:
        # Decide before "100 Continue": like S3, answer an error without
        # letting the client send the body.
        if self._decide() is None or self._fault.kind in ("slow", "cut"):
            return super().handle_expect_100()
        return True

    def _decide(self) -> _Fault | None:
        if self._fault is _UNDECIDED:
            self._fault = self.proxy._take_fault(self.command, self.path)
        return self._fault

    def do_GET(self) -> None: self._handle()
    def do_HEAD(self) -> None: self._handle()
    def do_PUT(self) -> None: self._handle()
    def do_POST(self) -> None: self._handle()
    def do_DELETE(self) -> None: self._handle()

    def _handle(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        fault = self._decide()
        if fault is not None and fault.kind == "reset":
            return self._reset(url)
        if fault is not None and fault.kind == "fail":
            return self._error(url, fault.status, fault.code, "injected by the test proxy")
        if fault is not None and fault.kind == "slow":
            time.sleep(fault.seconds)
        if self._restoring_answer(url):
            return None
        self._forward(url)

    def _restoring_answer(self, url: urllib.parse.SplitResult) -> bool:
        """Answer for a key whose restore is still 'ongoing', if needed."""
        if not self.proxy._restore_ongoing(url.path):
            return False
        if self.command == "GET" and not url.query:
            self._error(url, 403, "InvalidObjectState",
                        "The operation is not valid for the object's storage class")
            return True
        if self.command == "POST" and "restore" in urllib.parse.parse_qs(
                url.query, keep_blank_values=True):
            self._error(url, 409, "RestoreAlreadyInProgress",
                        "Object restore is already in progress")
            return True
        return False

    def _reset(self, url: urllib.parse.SplitResult) -> None:
        self._log(url, 0)
        # SO_LINGER 0: close with a TCP RST, like a dropped connection.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                   struct.pack("ii", 1, 0))
        self.close_connection = True

    def _error(self, url: urllib.parse.SplitResult, status: int, code: str,
               message: str) -> None:
        self._discard_body()
        body = b"" if self.command == "HEAD" else (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            "<RequestId>cryophile-test-proxy</RequestId></Error>").encode()
        self._log(url, status)     # before answering: tests read it right after
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _discard_body(self) -> None:
        """Drop a request body, unless the client still waits for 100 Continue."""
        if self.headers.get("Expect", "").lower() == "100-continue":
            self.close_connection = True    # the body may come anyway: start over
            return
        for _ in self._body():
            pass

    def _body(self) -> Iterator[bytes]:
        left = int(self.headers.get("Content-Length") or 0)
        while left > 0:
            data = self.rfile.read(min(left, COPY_CHUNK))
            if not data:
                raise ConnectionError("client closed the connection mid-body")
            left -= len(data)
            yield data

    def _forward(self, url: urllib.parse.SplitResult) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._error(url, 501, "NotImplemented", "chunked bodies unsupported")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        has_body = "Content-Length" in self.headers
        # A connection per request: moto may close idle ones at any time.
        up = self.proxy.upstream
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=120)
        try:
            conn.request(self.command, self.path, body=self._body() if has_body else None,
                         headers=headers, encode_chunked=False)
            self._relay(url, conn.getresponse())
        finally:
            conn.close()

    def _relay(self, url: urllib.parse.SplitResult, resp: http.client.HTTPResponse) -> None:
        headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
        length = resp.getheader("Content-Length")
        body_chunks: Iterable[bytes]
        if self.command == "HEAD":
            body_chunks = ()
        elif length is None:      # moto sent no length: buffer (small answers only)
            data = resp.read()
            headers.append(("Content-Length", str(len(data))))
            body_chunks = (data,)
        else:
            body_chunks = iter(lambda: resp.read(COPY_CHUNK), b"")
        if self.command == "POST" and resp.status < 300 and "restore" in \
                urllib.parse.parse_qs(url.query, keep_blank_values=True):
            self.proxy._restore_started(url.path)
        if self.command == "HEAD" and self.proxy._restore_ongoing(url.path):
            headers = [(k, v) for k, v in headers if k.lower() != "x-amz-restore"]
            headers.append(("x-amz-restore", 'ongoing-request="true"'))
        cut = self._fault.after if self._fault and self._fault.kind == "cut" else None
        self._log(url, 0 if cut is not None else resp.status)
        self.send_response_only(resp.status, resp.reason)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        sent = 0
        for chunk in body_chunks:
            if cut is not None and sent + len(chunk) >= cut:
                self.wfile.write(chunk[:cut - sent])
                self.wfile.flush()
                resp.close()
                # A clean close (FIN, not RST): the client keeps every byte
                # sent, so tests know exactly where it must resume.
                self.close_connection = True
                return None
            self.wfile.write(chunk)
            sent += len(chunk)
        resp.close()

    def _log(self, url: urllib.parse.SplitResult, status: int) -> None:
        self.proxy._record(self._generation, Request(
            self.command, url.path, url.query, status, self.headers.get("Range")))
