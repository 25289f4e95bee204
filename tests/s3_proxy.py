"""A fault-injecting HTTP proxy in front of a real S3 endpoint (moto_server), for the reliability tests.

Every request gets its own upstream connection (the proxy rewrites `Connection: close` into its head), so every
request passes the proxy's decision:

- `throttle(n, match)`: the next n requests whose head matches the regex are answered `503 SlowDown` (S3's
  throttling reply) and never reach the server;
- `cut_on(match)`: the first request whose head matches is forwarded with the start of its body, then the endpoint
  goes down mid-request: every open connection is reset and the port refuses connections until `restore()`;
- `down()` / `restore()`: the same, now.

The server behind keeps its objects through the outage, as S3 does (moto_server holds them in memory; killing it
would lose them, which no S3 outage does).
"""
from __future__ import annotations

import re
import socket
import struct
import threading
import time

SLOW_DOWN = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>"
             b"<Message>Please reduce your request rate.</Message><RequestId>proxy</RequestId></Error>")


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a dead peer's kernel would answer."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class S3Proxy:
    def __init__(self, upstream: str, port: int):
        host, _, up_port = upstream.removeprefix("http://").rstrip("/").partition(":")
        self.upstream = (host, int(up_port or 80))
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.requests: list[str] = []   # request lines seen, in order
        self.throttled: list[str] = []  # request lines answered 503 SlowDown
        self.forwarded = 0
        self._throttle: list = []       # [remaining, compiled regex]
        self._cut: re.Pattern | None = None
        self.cut_at: float | None = None  # time.monotonic() of the cut
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.restore()

    # -- control ----------------------------------------------------------------------------------------------

    def throttle(self, n: int, match: str = r"") -> None:
        with self._lock:
            self._throttle = [n, re.compile(match, re.I | re.M)]

    def cut_on(self, match: str) -> None:
        with self._lock:
            self._cut = re.compile(match, re.I | re.M)

    @property
    def is_down(self) -> bool:
        return self._listener is None

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = list(self._conns), set()
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        for c in conns:
            _reset(c)

    def restore(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", self.port))
            s.listen(64)
            self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    close = down

    # -- serving ----------------------------------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                if self._listener is not listener:
                    _reset(conn)
                    return
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        up = None
        try:
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
            head, _, rest = buf.partition(b"\r\n\r\n")
            text = head.decode("latin-1")
            line = text.split("\r\n", 1)[0]
            with self._lock:
                self.requests.append(line)
                thr = self._throttle
                throttled = bool(thr and thr[0] > 0 and thr[1].search(text))
                if throttled:
                    thr[0] -= 1
                    self.throttled.append(line)
                cut = self._cut is not None and self._cut.search(text) is not None
                if cut:
                    self._cut = None
            if throttled:
                self._answer_slow_down(conn, text, rest)
                return
            lines = [x for x in text.split("\r\n")[1:] if not x.lower().startswith(("connection:", "keep-alive:"))]
            head = "\r\n".join([line, *lines, "Connection: close"]).encode("latin-1") + b"\r\n\r\n"
            up = socket.create_connection(self.upstream, timeout=30)
            with self._lock:
                self._conns.add(up)
            up.sendall(head + rest)
            if cut:  # the server saw the head and the start of the body; now the endpoint dies
                time.sleep(0.05)
                self.cut_at = time.monotonic()
                self.down()
                return
            with self._lock:
                self.forwarded += 1
            t = threading.Thread(target=self._pipe, args=(conn, up), daemon=True)
            t.start()
            self._pipe(up, conn)
            t.join(30)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
                if up is not None:
                    self._conns.discard(up)
            for s in (conn, up):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    @staticmethod
    def _answer_slow_down(conn: socket.socket, head: str, rest: bytes) -> None:
        """503 SlowDown after reading the body the client sends (a client waiting on `Expect: 100-continue`
        sends none), so it reads the answer rather than a reset."""
        h = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in head.split("\r\n")[1:])}
        if "100-continue" not in h.get("expect", "").lower():
            want = int(h.get("content-length", "0") or 0) - len(rest)
            conn.settimeout(5)
            while want > 0:
                chunk = conn.recv(min(want, 65536))
                if not chunk:
                    break
                want -= len(chunk)
        body = b"" if head.startswith("HEAD ") else SLOW_DOWN  # a HEAD answer has no body
        conn.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
