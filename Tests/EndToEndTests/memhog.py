#!/usr/bin/env python3
"""Peers that try to make the hub hold memory, for MemoryBoundTests.

  memhog.py PORT CA MODE ARGS...

The test samples the hub's RSS while one of these runs; each mode prints
what it did, one fact a line, so the test log can quote it.

MODE:
  pipeline BYTES
      An unauthenticated caller pipelines `GET /x` (answered locally, 401)
      on one TLS connection, up to BYTES, and never reads. Sends stop when
      the hub stops reading for 3 s. Prints "sent N", "stalled" or
      "all sent", then "closed" if the hub closed the connection within
      20 s (its head deadline), else "open".
  ping-flood TOKEN BYTES
      An agent (raw yamux after the 101; the hub is the yamux server) that
      never reads and sends yamux Ping SYN frames, up to BYTES. Prints
      "sent N", "stalled" or "all sent", then "closed" if the hub ended the
      session within 30 s, else "open".
  tiny-data TOKEN CLUSTER CALLER_TOKEN TINY
      A fake agent for CLUSTER and a caller that asks /proxy/CLUSTER/big
      and never reads. The agent answers 200 with a huge Content-Length,
      sends large Data frames until the hub stops granting window (its
      queues toward the caller are full), then TINY Data frames of one byte
      each, each in a TLS record and TCP segment of its own, so that most
      arrive in separate reads. Prints "big N", "tiny M", then "done" and
      holds everything open 1 s more.
  slow-readers CALLER_TOKEN COUNT PATH HOLD
      COUNT callers each send `GET PATH` (a large download) and read
      nothing. Prints "started COUNT" and holds them open HOLD seconds (the
      test stops it earlier, once the hub's RSS is level).
"""
import base64
import os
import select
import socket
import ssl
import struct
import sys
import time

# yamux (hashicorp/yamux spec.md): a 12-byte header, big-endian:
# version(1) type(1) flags(2) stream id(4) length(4).
DATA, WINDOW_UPDATE, PING, GO_AWAY = 0, 1, 2, 3
SYN, ACK, FIN, RST = 1, 2, 4, 8
INITIAL_WINDOW = 256 * 1024
POLLRDHUP = getattr(select, "POLLRDHUP", 0x2000)


def frame(typ, flags, sid, length, payload=b""):
    return struct.pack(">BBHII", 0, typ, flags, sid, length) + payload


def connect(port, ca, rcvbuf=None):
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        # Before connect, so the window the kernel offers stays small: the
        # hub's answers then wait in the hub, not in our kernel.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", port))
    ctx = ssl.create_default_context(cafile=ca)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def upgrade(s, token):
    """GET /connect without a subprotocol: raw yamux after the 101. Returns
    the status line and any bytes read past the head."""
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET /connect?token=%s HTTP/1.1\r\nHost: hub\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
               % (token, key)).encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode(errors="replace"), rest


def flood(s, batch, total):
    """Sends batch until total bytes went or the peer stopped reading for
    3 s. Returns (bytes sent, stalled)."""
    s.settimeout(3)
    sent = 0
    try:
        while sent < total:
            s.sendall(batch)
            sent += len(batch)
    except (socket.timeout, OSError):
        return sent, True
    return sent, False


def wait_closed(s, seconds):
    """Whether the peer closed (FIN or RST) within seconds, without reading
    what it sent."""
    p = select.poll()
    p.register(s.fileno(), POLLRDHUP | select.POLLHUP | select.POLLERR)
    start = time.time()
    if p.poll(seconds * 1000):
        return "closed after %.1f s" % (time.time() - start)
    return "open"


def pipeline(port, ca, total):
    s = connect(port, ca, rcvbuf=4096)
    req = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"
    sent, stalled = flood(s, req * (65536 // len(req)), total)
    print("sent %d" % sent)
    print("stalled" if stalled else "all sent", flush=True)
    print(wait_closed(s, 20), flush=True)


def ping_flood(port, ca, token, total):
    s = connect(port, ca, rcvbuf=4096)
    status, _ = upgrade(s, token)
    print(status, flush=True)
    batch = b"".join(frame(PING, SYN, 0, i) for i in range(1 << 16))
    sent, stalled = flood(s, batch, total)
    print("sent %d" % sent)
    print("stalled" if stalled else "all sent", flush=True)
    print(wait_closed(s, 30), flush=True)


class FakeAgent:
    """Just enough of a yamux client for one stream the hub opens: one
    thread, reads without blocking between sends (an SSL object must not be
    used by two threads at once)."""

    def __init__(self, s, rest):
        self.s = s
        self.buf = rest
        self.sid = None
        self.window = 0
        self.request = b""

    def send(self, data):
        self.s.settimeout(10)
        self.s.sendall(data)

    def pump(self, wait):
        """Handles what the hub sent, waiting up to `wait` s for some."""
        self.s.settimeout(wait if wait > 0 else 0.0)
        try:
            data = self.s.recv(1 << 18)
        except (socket.timeout, ssl.SSLWantReadError, BlockingIOError):
            data = None
        if data == b"":
            raise EOFError("the hub closed the session")
        if data:
            self.buf += data
        while len(self.buf) >= 12:
            _, typ, flags, sid, length = struct.unpack(">BBHII", self.buf[:12])
            size = 12 + (length if typ == DATA else 0)
            if len(self.buf) < size:
                break
            payload, self.buf = self.buf[12:size], self.buf[size:]
            if typ == PING and flags & SYN:
                self.send(frame(PING, ACK, 0, length))
            elif typ == GO_AWAY:
                raise EOFError("GoAway %d" % length)
            elif typ in (DATA, WINDOW_UPDATE) and sid != 0:
                if flags & SYN and self.sid is None:
                    self.sid = sid
                    self.window = INITIAL_WINDOW
                    self.send(frame(WINDOW_UPDATE, ACK, sid, 0))
                if sid != self.sid:
                    continue
                if flags & RST:
                    raise EOFError("the hub reset the stream")
                if typ == WINDOW_UPDATE:
                    self.window += length
                else:
                    self.request += payload

    def wait_window(self, need, seconds):
        """Pumps until the send window holds more than `need` bytes; False
        when no such grant came within `seconds`."""
        end = time.time() + seconds
        while self.window <= need:
            left = end - time.time()
            if left <= 0:
                return False
            self.pump(min(left, 0.2))
        return True


def tiny_data(port, ca, token, cluster, caller_token, tiny):
    s = connect(port, ca)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    status, rest = upgrade(s, token)
    print(status, flush=True)
    agent = FakeAgent(s, rest)
    # The core routes to a session from the moment it wrote the 101.
    caller = connect(port, ca, rcvbuf=4096)
    caller.sendall(("GET /proxy/%s/big HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n"
                    % (cluster, caller_token)).encode())
    end = time.time() + 10
    while b"\r\n\r\n" not in agent.request:
        if time.time() > end:
            raise SystemExit("no request reached the fake agent")
        agent.pump(0.2)
    sid = agent.sid
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1099511627776\r\n\r\n"
    agent.wait_window(len(head), 10)
    agent.send(frame(DATA, 0, sid, len(head), head))
    agent.window -= len(head)
    # Large frames until the hub stops granting window, keeping `reserve`
    # of it for the one-byte frames.
    reserve = tiny + 1024
    big = 0
    chunk = bytes(65536)
    while big < (256 << 20):
        agent.pump(0)
        if not agent.wait_window(reserve, 2):
            break
        n = min(len(chunk), agent.window - reserve)
        agent.send(frame(DATA, 0, sid, n, chunk[:n]))
        agent.window -= n
        big += n
    print("big %d" % big, flush=True)
    sent = 0
    for _ in range(tiny):
        agent.pump(0)
        if not agent.wait_window(0, 2):
            break
        agent.send(frame(DATA, 0, sid, 1, b"x"))
        agent.window -= 1
        sent += 1
        time.sleep(0.0005)
    print("tiny %d" % sent)
    print("done", flush=True)
    time.sleep(1)
    caller.close()
    s.close()


def slow_readers(port, ca, caller_token, count, path, hold):
    conns = []
    for _ in range(count):
        c = connect(port, ca, rcvbuf=4096)
        c.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n"
                   % (path, caller_token)).encode())
        conns.append(c)
    print("started %d" % len(conns), flush=True)
    time.sleep(hold)


def main():
    port, ca, mode, args = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
    if mode == "pipeline":
        pipeline(port, ca, int(args[0]))
    elif mode == "ping-flood":
        ping_flood(port, ca, args[0], int(args[1]))
    elif mode == "tiny-data":
        tiny_data(port, ca, args[0], args[1], args[2], int(args[3]))
    elif mode == "slow-readers":
        slow_readers(port, ca, args[0], int(args[1]), args[2], float(args[3]))
    else:
        raise SystemExit("unknown mode " + mode)


if __name__ == "__main__":
    main()
