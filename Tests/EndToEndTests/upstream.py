#!/usr/bin/env python3
"""A stand-in for a member cluster's API server in the end-to-end tests.

HTTPS on 127.0.0.1, port 0 by default; prints "PORT <n>" on stdout once it
listens. HTTP/1.1 with keep-alive, one thread per connection.

Endpoints:
  /bytes/N                      N deterministic pseudo-random bytes (see gen())
  /bytes/N?close=1[&linger_ms=L]  the same with Connection: close; the server
                                closes the connection after it (L ms later:
                                a client that wrongly sends another request
                                on it waits, then sees it close unanswered)
  /bytes/N?junk_after_ms=D      the same, then D ms later bytes that belong
                                to no response (a misbehaving server)
  /echo                         the request body (Content-Length or chunked)
  /upgrade-echo                 with Upgrade: kp-echo, a 101, then echoes raw
                                bytes until the client's EOF
  /headers                      the request's headers as JSON [[name, value], ...]
  /stream?n=K&delay_ms=D        a chunked response of K lines, D ms apart (a watch)
  /stream?n=K&gate=G            the same, but line i+1 is sent only after
                                /release?gate=G was called i times: the test
                                proves each line arrived before the next was sent
  /release?gate=G               lets gate G send one more line
  /_requests                    every request target received so far, as JSON
  /_connections                 {"accepted": TLS connections accepted so far,
                                 "open": open now (this one not counted),
                                 "dropped": requests closed unanswered}
  /_drop_idle                   closes (TCP FIN, no close_notify) every other
                                connection that is idle between requests, as
                                a server's idle timeout does; {"closed": n}
  /_drop_idle?on_next=1         marks them instead: each closes without an
                                answer when its next request arrives (the
                                close crossed the request on the wire)

Other modes (no server):
  upstream.py --digest N [N...] the SHA-256 of /bytes/N for each N, one a line
  upstream.py --write N PATH    writes the /bytes/N stream to PATH
"""
import hashlib
import http.server
import json
import random
import socket
import ssl
import sys
import threading
import time
import urllib.parse

CHUNK = 64 * 1024


def gen(n):
    """The /bytes/N stream: Mersenne Twister seeded with N, in 64 KiB chunks.
    The seed is the length, so every size is a different stream and the
    expected digest needs nothing but N."""
    rng = random.Random(n)
    left = n
    while left > 0:
        k = min(CHUNK, left)
        yield rng.randbytes(k)
        left -= k


def digest(n):
    h = hashlib.sha256()
    for c in gen(n):
        h.update(c)
    return h.hexdigest()


class Gates:
    """Counts /release calls per gate name; the streaming handler waits on it."""

    def __init__(self):
        self.cond = threading.Condition()
        self.released = {}

    def release(self, name):
        with self.cond:
            self.released[name] = self.released.get(name, 0) + 1
            self.cond.notify_all()

    def wait(self, name, count, timeout):
        with self.cond:
            return self.cond.wait_for(lambda: self.released.get(name, 0) >= count, timeout)


GATES = Gates()
SEEN = []
SEEN_LOCK = threading.Lock()
# Connections: counters and the live handlers (for /_drop_idle), under CONN_LOCK.
CONN_LOCK = threading.Lock()
CONNS = {"accepted": 0, "open": 0, "dropped": 0}
LIVE = set()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless the client says close

    def log_message(self, fmt, *args):
        sys.stderr.write("upstream: " + (fmt % args) + "\n")

    def setup(self):
        # The TLS handshake runs here, in the connection's own thread, rather
        # than in accept(): one slow client must not stall the others.
        self.request.do_handshake()
        super().setup()
        self.idle = False  # between requests (waiting for the next head)
        self.doomed = False  # close unanswered at the next request
        with CONN_LOCK:
            CONNS["accepted"] += 1
            CONNS["open"] += 1
            LIVE.add(self)

    def finish(self):
        try:
            super().finish()
        finally:
            with CONN_LOCK:
                CONNS["open"] -= 1
                LIVE.discard(self)

    def handle_one_request(self):
        self.idle = True
        super().handle_one_request()

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    # Trailers end at an empty line.
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline(3)  # the CRLF after the chunk
        n = int(self.headers.get("Content-Length", "0") or "0")
        return self.rfile.read(n) if n else b""

    def send_plain(self, code, body, ctype="application/octet-stream"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle_any(self):
        self.idle = False
        if self.doomed:
            with CONN_LOCK:
                CONNS["dropped"] += 1
            self.close_connection = True
            return
        with SEEN_LOCK:
            SEEN.append(self.path)
        u = urllib.parse.urlsplit(self.path)
        q = urllib.parse.parse_qs(u.query)
        body = self.read_body()
        if u.path.startswith("/bytes/"):
            n = int(u.path[len("/bytes/"):])
            close = q.get("close", ["0"])[0] == "1"
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            if close:
                self.send_header("Connection", "close")  # sets close_connection
            self.end_headers()
            for c in gen(n):
                self.wfile.write(c)
            if close:
                self.wfile.flush()
                time.sleep(int(q.get("linger_ms", ["0"])[0]) / 1000)
            if "junk_after_ms" in q:
                self.wfile.flush()
                time.sleep(int(q["junk_after_ms"][0]) / 1000)
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\njunk")
                self.wfile.flush()
        elif u.path == "/echo":
            self.send_plain(200, body)
        elif u.path == "/upgrade-echo" and self.headers.get("Upgrade", "").lower() == "kp-echo":
            self.upgrade_echo()
        elif u.path == "/headers":
            pairs = [[k, v] for k, v in self.headers.items()]
            self.send_plain(200, json.dumps(pairs).encode(), "application/json")
        elif u.path == "/stream":
            self.stream(int(q.get("n", ["3"])[0]), int(q.get("delay_ms", ["0"])[0]),
                        q.get("gate", [None])[0])
        elif u.path == "/release":
            GATES.release(q["gate"][0])
            self.send_plain(200, b"released\n", "text/plain")
        elif u.path == "/_requests":
            with SEEN_LOCK:
                data = json.dumps(SEEN).encode()
            self.send_plain(200, data, "application/json")
        elif u.path == "/_connections":
            with CONN_LOCK:
                data = dict(CONNS, open=CONNS["open"] - 1)
            self.send_plain(200, json.dumps(data).encode(), "application/json")
        elif u.path == "/_drop_idle":
            on_next = q.get("on_next", ["0"])[0] == "1"
            with CONN_LOCK:
                idle = [h for h in LIVE if h is not self and h.idle]
            for h in idle:
                if on_next:
                    h.doomed = True
                else:
                    # The plain socket's shutdown: FIN without close_notify,
                    # and the handler's blocked read sees EOF and ends.
                    try:
                        socket.socket.shutdown(h.request, socket.SHUT_RDWR)
                    except OSError:
                        pass
            self.send_plain(200, json.dumps({"closed": len(idle)}).encode(), "application/json")
        else:
            self.send_plain(404, b'{"kind":"Status","code":404}\n', "application/json")

    def upgrade_echo(self):
        # 101, then every byte back as it comes until the client's EOF: a
        # stand-in for exec/port-forward (raw bytes both ways after a 101).
        self.send_response(101)
        self.send_header("Upgrade", "kp-echo")
        self.send_header("Connection", "Upgrade")
        self.end_headers()
        self.wfile.flush()
        while True:
            data = self.rfile.read1(65536)
            if not data:
                break
            self.wfile.write(data)
            self.wfile.flush()
        self.close_connection = True

    def stream(self, n, delay_ms, gate):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(n):
            if i > 0:
                if gate is not None:
                    if not GATES.wait(gate, i, 30):
                        return  # nobody released us: abandon, the test fails on its side
                elif delay_ms:
                    time.sleep(delay_ms / 1000)
            line = json.dumps({"type": "ADDED", "i": i, "sent": time.time()}).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # 200 parallel requests may arrive at once


def main():
    args = sys.argv[1:]
    if args and args[0] == "--digest":
        for n in args[1:]:
            print(digest(int(n)))
        return
    if args and args[0] == "--write":
        with open(args[2], "wb") as f:
            for c in gen(int(args[1])):
                f.write(c)
        return
    opts = dict(zip(args[0::2], args[1::2]))
    srv = Server((opts.get("--host", "127.0.0.1"), int(opts.get("--port", "0"))), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(opts["--cert"], opts["--key"])
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
    print("PORT %d" % srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
