#!/usr/bin/env python3
"""Misbehaving peers for the hub, for the bad-input end-to-end tests.

  badpeer.py PORT CA MODE [TOKEN]

MODE:
  http-garbage   a caller that sends a malformed request head
  http-huge      a caller whose request head passes 64 KiB
  ws-unmasked    an agent that upgrades (kopilot.v2) and then sends an
                 unmasked WebSocket frame (RFC 6455 5.1: the hub must close)
  mux-bad        an agent that upgrades raw and sends a mux frame with a
                 bad version byte (the hub must close that session)
  slowloris      a caller that trickles its request head one byte every
                 200 ms and never finishes it (the hub's head deadline)
  stalled-handshakes
                 200 TCP connections that never start their TLS handshake
                 (more than the hub's 128 handshake places),
                 then one real request (GET /healthz): prints its status
                 line, then how many of the 200 were still open after it
                 (the hub gives a handshake 10 s; the request must not wait
                 for those to run out)
Prints the HTTP status line it got, then "closed" when the hub closed the
connection (or "open" if it was still open after 10 s), and exits 0.
"""
import base64
import os
import socket
import ssl
import sys
import time


def connect(port, ca):
    ctx = ssl.create_default_context(cafile=ca)
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(s, server_hostname="127.0.0.1")


def read_head(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0].decode(errors="replace")


def wait_closed(s):
    s.settimeout(10)
    try:
        while True:
            if not s.recv(4096):
                return "closed"
    except socket.timeout:
        return "open"
    except (ConnectionResetError, ssl.SSLError, OSError):
        return "closed"


def upgrade(s, token, framed):
    key = base64.b64encode(os.urandom(16)).decode()
    proto = "Sec-WebSocket-Protocol: kopilot.v2\r\n" if framed else ""
    s.sendall(("GET /connect?token=%s HTTP/1.1\r\nHost: hub\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n"
               % (token, key, proto)).encode())
    return read_head(s)


def still_open(sock):
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def main():
    port, ca, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    token = sys.argv[4] if len(sys.argv) > 4 else ""
    if mode == "stalled-handshakes":
        stalled = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(200)]
        s = connect(port, ca)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n")
        print(read_head(s))
        print("still open: %d" % sum(1 for t in stalled if still_open(t)), flush=True)
        return
    s = connect(port, ca)
    if mode == "http-garbage":
        s.sendall(b"GET /proxy/default_sample/x HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        print(read_head(s))
    elif mode == "http-huge":
        s.sendall(b"GET /proxy/default_sample/x HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(80):
                s.sendall(b"X-Filler: " + b"a" * 1000 + b"\r\n")
        except OSError:
            pass
        print(read_head(s))
    elif mode == "ws-unmasked":
        print(upgrade(s, token, True))
        # A binary frame with no mask bit, from a client: a protocol error.
        s.sendall(bytes([0x82, 0x0C]) + bytes(12))
    elif mode == "mux-bad":
        print(upgrade(s, token, False))
        # A 12-byte yamux header whose version is 7.
        s.sendall(bytes([7, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]))
    elif mode == "slowloris":
        s.sendall(b"GET /proxy/default_sample/x HTTP/1.1\r\nHost: x\r\n")
        print("trickling")
        s.settimeout(0.2)
        end = time.time() + 10
        while time.time() < end:
            try:
                if not s.recv(4096):
                    print("closed", flush=True)
                    return
            except socket.timeout:
                try:
                    s.sendall(b"X")
                except OSError:
                    print("closed", flush=True)
                    return
            except (ConnectionResetError, ssl.SSLError, OSError):
                print("closed", flush=True)
                return
        print("open", flush=True)
        return
    print(wait_closed(s), flush=True)


if __name__ == "__main__":
    main()
