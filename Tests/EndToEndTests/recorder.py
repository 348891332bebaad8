#!/usr/bin/env python3
"""The smuggling tests' member API server, and their raw caller.

Server:  recorder.py --cert C --key K --record FILE
  HTTPS on 127.0.0.1, port 0; prints "PORT <n>" once it listens. It parses
  every request on its own, strictly, by RFC 9112 (the framing a careful
  server such as Go's net/http applies), and appends one JSON line to FILE
  per thing it parsed, *before* it answers:
    {"kind": "request", "seq", "conn", "method", "target", "version",
     "headers": [[name, value], ...], "body": latin-1 text}
    {"kind": "error", "conn", "error", "data"}    bytes that are no request
    {"kind": "truncated", "conn", "data"}        EOF inside a message
    {"kind": "tunnel", "conn", "data"}           bytes after its own 101
  An error is answered 400 and the connection closed. Every request is
  answered 200 with a small JSON body naming it, and the headers
  X-Recorder-Seq and X-Recorder-Target (the target as parsed), unless its
  query asks for another shape (shape=...):
    1xx          100 Continue and 103 Early Hints, then the 200
    1xx-cl       102 Processing carrying Content-Length: 40, then the 200
                 (a 1xx never has a body: RFC 9110 15.2)
    204-body     204 with Content-Length and a body that is a whole second
                 response (FAKE); a 204 has no body (RFC 9110 15.3.5)
    204-chunked  the same with Transfer-Encoding: chunked
    304-body     304 with Content-Length and the FAKE bytes (RFC 9110 15.4.5)
    head-body    to a HEAD, the 200 head and then FAKE bytes as a body
                 (RFC 9110 9.3.2: a HEAD answer has none)
    upgrade      to a request with Upgrade, 101; then the bytes that follow
                 are recorded as tunnel data and echoed
    close        the 200 with Connection: close, then closes
  Without shape=upgrade an upgrade request gets the plain 200: the server
  declines to switch, so the bytes after it are HTTP again (RFC 9110 7.8).

Client:  recorder.py --client PORT CA SCRIPT
  Opens one TLS connection and plays SCRIPT (JSON):
    {"steps": [{"send": base64, "expect": ["GET", "HEAD", "RAW:n", ...]}],
     "quiet_ms": 300}
  Each step writes its bytes as they are, then reads one response per
  "expect" entry (the request method decides whether a body follows; RAW:n
  reads n raw bytes). Interim 1xx responses are collected with the final
  one. At the end it waits quiet_ms for bytes nobody asked for. Prints
  {"responses": [{"status", "reason", "headers", "body", "interim"}],
   "extra": latin-1 text, "closed": bool, "error": text or null}.
"""
import base64
import json
import re
import socket
import ssl
import sys
import threading
import time
import urllib.parse

TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
REQUEST_LINE = re.compile(rb"(" + TCHAR + rb"+) ([^\x00-\x20\x7f]+) HTTP/1\.([01])")
FIELD_LINE = re.compile(rb"(" + TCHAR + rb"+):[ \t]*(.*?)[ \t]*")
FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})((?:[ \t]*;[\t\x20-\x7e\x80-\xff]*)?)")
MAX_HEAD = 64 * 1024

FAKE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 16\r\n"
        b"X-Recorder-Seq: FAKE\r\nX-Recorder-Target: FAKE\r\n\r\n{\"fake\": \"FAKE\"}")


class ParseError(Exception):
    pass


class Truncated(Exception):
    pass


class Reader:
    """Buffered reads from a socket; raises Truncated at EOF mid-message."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def fill(self):
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def line(self, limit=MAX_HEAD):
        """One line ending in CRLF, without it. A bare LF or CR is an error
        (RFC 9112 2.2 lets a recipient accept a bare LF; a careful one in
        front of another parser does not)."""
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                if i == 0 or self.buf[i - 1:i] != b"\r":
                    raise ParseError("bare LF")
                line = self.buf[:i - 1]
                self.buf = self.buf[i + 1:]
                if b"\r" in line:
                    raise ParseError("bare CR")
                return line
            if len(self.buf) > limit:
                raise ParseError("line too long")
            if not self.fill():
                raise Truncated()

    def exactly(self, n):
        while len(self.buf) < n:
            if not self.fill():
                raise Truncated()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def at_eof(self):
        """True at a clean EOF between messages."""
        return not self.buf and not self.fill()


def parse_fields(reader):
    fields = []
    while True:
        line = reader.line()
        if line == b"":
            return fields
        if line[:1] in (b" ", b"\t"):
            raise ParseError("obs-fold")  # RFC 9112 5.2
        m = FIELD_LINE.fullmatch(line)
        if not m:
            raise ParseError("bad field line %r" % line[:80])
        if not FIELD_VALUE.fullmatch(m.group(2)):
            raise ParseError("control byte in field %r" % m.group(1))
        fields.append((m.group(1).decode("latin-1"), m.group(2).decode("latin-1")))
        if len(fields) > 200:
            raise ParseError("too many fields")


def values(fields, name):
    return [v for n, v in fields if n.lower() == name]


def list_elements(vs):
    return [e.strip(" \t") for v in vs for e in v.split(",") if e.strip(" \t")]


def read_chunked(reader):
    """RFC 9112 7.1: chunk-size [chunk-ext] CRLF chunk-data CRLF ... 0 CRLF
    trailers CRLF. More than 16 hex digits is refused (as Go does) rather
    than let two parsers overflow differently."""
    body = b""
    while True:
        line = reader.line()
        m = CHUNK_LINE.fullmatch(line)
        if not m:
            raise ParseError("bad chunk-size line %r" % line[:80])
        size = int(m.group(1), 16)
        if size == 0:
            parse_fields(reader)  # trailers
            return body
        body += reader.exactly(size)
        if reader.exactly(2) != b"\r\n":
            raise ParseError("chunk data not followed by CRLF")


def read_request(reader):
    """The next request, or None at a clean EOF before one starts."""
    if reader.at_eof():
        return None
    line = reader.line()
    if line == b"":  # RFC 9112 2.2: one empty line before a request may be ignored
        line = reader.line()
    m = REQUEST_LINE.fullmatch(line)
    if not m:
        raise ParseError("bad request line %r" % line[:80])
    method, target, minor = m.group(1).decode(), m.group(2).decode("latin-1"), int(m.group(3))
    fields = parse_fields(reader)
    hosts = len(values(fields, "host"))
    if hosts > 1 or (minor == 1 and hosts == 0):  # RFC 9112 3.2
        raise ParseError("Host missing or repeated")
    te = values(fields, "transfer-encoding")
    cl = values(fields, "content-length")
    if te:
        codings = [c.lower() for c in list_elements(te)]
        if minor == 0 or cl or not codings or codings[-1] != "chunked" or codings.count("chunked") != 1:
            raise ParseError("Transfer-Encoding %r with Content-Length %r" % (te, cl))
        if codings != ["chunked"]:
            raise ParseError("unsupported coding %r" % te)
        body = read_chunked(reader)
    elif cl:
        lens = set()
        for v in cl:
            for e in v.split(","):
                e = e.strip(" \t")
                if not e.isdigit() or not e.isascii():
                    raise ParseError("bad Content-Length %r" % cl)
                lens.add(int(e))
        if len(lens) != 1:
            raise ParseError("conflicting Content-Length %r" % cl)
        body = reader.exactly(lens.pop())
    else:
        body = b""
    return method, target, minor, fields, body


class Recorder:
    def __init__(self, path):
        self.file = open(path, "a", encoding="utf-8")
        self.lock = threading.Lock()
        self.seq = 0
        self.conns = 0

    def new_conn(self):
        with self.lock:
            self.conns += 1
            return self.conns

    def write(self, entry):
        with self.lock:
            if entry["kind"] == "request":
                self.seq += 1
                entry["seq"] = self.seq
            self.file.write(json.dumps(entry) + "\n")
            self.file.flush()
            return entry.get("seq", 0)


def response_head(status, reason, fields):
    out = "HTTP/1.1 %d %s\r\n" % (status, reason)
    for n, v in fields:
        out += "%s: %s\r\n" % (n, v)
    return (out + "\r\n").encode("latin-1")


def serve(raw, ctx, rec):
    conn = rec.new_conn()
    try:
        sock = ctx.wrap_socket(raw, server_side=True)
    except (OSError, ssl.SSLError):
        return
    sock.settimeout(60)
    reader = Reader(sock)
    try:
        while True:
            try:
                req = read_request(reader)
            except ParseError as e:
                rec.write({"kind": "error", "conn": conn, "error": str(e),
                           "data": reader.buf[:300].decode("latin-1")})
                body = b'{"kind":"Status","code":400}'
                sock.sendall(response_head(400, "Bad Request", [
                    ("Content-Length", str(len(body))), ("Connection", "close")]) + body)
                return
            except Truncated:
                rec.write({"kind": "truncated", "conn": conn, "data": reader.buf[:300].decode("latin-1")})
                return
            if req is None:
                return
            method, target, minor, fields, body = req
            seq = rec.write({"kind": "request", "conn": conn, "method": method, "target": target,
                             "version": "1.%d" % minor, "headers": [[n, v] for n, v in fields],
                             "body": body.decode("latin-1")})
            if not answer(sock, reader, rec, conn, seq, method, target, minor, fields, body):
                return
    except (OSError, ssl.SSLError):
        return
    finally:
        try:
            sock.close()
        except OSError:
            pass


def answer(sock, reader, rec, conn, seq, method, target, minor, fields, body):
    """Answers one request; False when the connection is to close."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
    shape = query.get("shape", [""])[0]
    conn_opts = [e.lower() for e in list_elements(values(fields, "connection"))]
    close = "close" in conn_opts or (minor == 0 and "keep-alive" not in conn_opts) or shape == "close"
    payload = json.dumps({"seq": seq, "method": method, "target": target, "bodyLength": len(body)}).encode()
    std = [("Content-Type", "application/json"), ("Content-Length", str(len(payload))),
           ("X-Recorder-Seq", str(seq)), ("X-Recorder-Target", target)]
    if close:
        std.append(("Connection", "close"))
    out = b""
    if shape == "upgrade" and values(fields, "upgrade") and "upgrade" in conn_opts:
        sock.sendall(response_head(101, "Switching Protocols", [
            ("Upgrade", values(fields, "upgrade")[0]), ("Connection", "Upgrade"),
            ("X-Recorder-Seq", str(seq)), ("X-Recorder-Target", target)]))
        data = reader.buf
        reader.buf = b""
        while True:
            if data:
                rec.write({"kind": "tunnel", "conn": conn, "data": data.decode("latin-1")})
                sock.sendall(data)
            data = sock.recv(65536)
            if not data:
                return False
    if shape == "1xx":
        out += response_head(100, "Continue", [])
        out += response_head(103, "Early Hints", [("Link", "</style.css>; rel=preload")])
    elif shape == "1xx-cl":
        out += response_head(102, "Processing", [("Content-Length", "40")])
    if shape == "204-body":
        out += response_head(204, "No Content", [("Content-Length", str(len(FAKE))), ("X-Recorder-Seq", str(seq)),
                                                 ("X-Recorder-Target", target)]) + FAKE
    elif shape == "204-chunked":
        out += response_head(204, "No Content", [("Transfer-Encoding", "chunked"), ("X-Recorder-Seq", str(seq)),
                                                 ("X-Recorder-Target", target)])
        out += b"%x\r\n%s\r\n0\r\n\r\n" % (len(FAKE), FAKE)
    elif shape == "304-body":
        out += response_head(304, "Not Modified", [("Content-Length", str(len(FAKE))), ("ETag", '"x"'),
                                                   ("X-Recorder-Seq", str(seq)), ("X-Recorder-Target", target)]) + FAKE
    elif shape == "head-body" and method == "HEAD":
        out += response_head(200, "OK", [("Content-Type", "application/json"), ("Content-Length", str(len(FAKE))),
                                         ("X-Recorder-Seq", str(seq)), ("X-Recorder-Target", target)]) + FAKE
    else:
        out += response_head(200, "OK", std)
        if method != "HEAD":
            out += payload
    sock.sendall(out)
    return not close


def server(opts):
    rec = Recorder(opts["--record"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(opts["--cert"], opts["--key"])
    srv = socket.create_server(("127.0.0.1", 0), backlog=256)
    print("PORT %d" % srv.getsockname()[1], flush=True)
    while True:
        raw, _ = srv.accept()
        threading.Thread(target=serve, args=(raw, ctx, rec), daemon=True).start()


# ---- the caller ----

class Closed(Exception):
    pass


class ClientReader:
    """Reads responses leniently enough to show what came back, never
    more than the framing says."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.closed = False

    def fill(self, deadline):
        if self.closed:
            raise Closed()
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout()
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
            data = b""
        if not data:
            self.closed = True
            raise Closed()
        self.buf += data

    def until(self, sep, deadline):
        while sep not in self.buf:
            self.fill(deadline)
        i = self.buf.index(sep)
        out, self.buf = self.buf[:i], self.buf[i + len(sep):]
        return out

    def exactly(self, n, deadline):
        while len(self.buf) < n:
            self.fill(deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def rest(self, deadline):
        try:
            while True:
                self.fill(deadline)
        except (Closed, socket.timeout):
            pass
        out, self.buf = self.buf, b""
        return out


def read_response(r, method, deadline):
    interim = []
    while True:
        head = r.until(b"\r\n\r\n", deadline).decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise ValueError("not a status line: %r" % lines[0][:100])
        status = int(parts[1])
        headers = [[l.split(":", 1)[0], l.split(":", 1)[1].strip()] for l in lines[1:] if ":" in l]
        if 100 <= status < 200 and status != 101:
            interim.append({"status": status, "headers": headers})
            continue
        break
    hv = lambda n: [v for k, v in headers if k.lower() == n]
    if method == "HEAD" or status in (101, 204, 304):
        body = b""
    elif any("chunked" in v.lower() for v in hv("transfer-encoding")):
        body = b""
        while True:
            size = int(r.until(b"\r\n", deadline).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while r.until(b"\r\n", deadline) != b"":
                    pass
                break
            body += r.exactly(size, deadline)
            r.exactly(2, deadline)
    elif hv("content-length"):
        body = r.exactly(int(hv("content-length")[0]), deadline)
    else:
        body = r.rest(deadline)
    return {"status": status, "reason": parts[2] if len(parts) > 2 else "", "headers": headers,
            "body": body.decode("latin-1"), "interim": interim}


def client(port, ca, script_path):
    with open(script_path) as f:
        script = json.load(f)
    ctx = ssl.create_default_context(cafile=ca)
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="127.0.0.1")
    r = ClientReader(sock)
    out = {"responses": [], "extra": "", "closed": False, "error": None}
    try:
        for step in script["steps"]:
            data = base64.b64decode(step["send"])
            if data:
                try:
                    sock.sendall(data)
                except (OSError, ssl.SSLError) as e:
                    out["error"] = "send failed: %s" % e
                    break
            for want in step.get("expect", []):
                deadline = time.monotonic() + script.get("timeout_s", 10)
                if want.startswith("RAW:"):
                    got = r.exactly(int(want[4:]), deadline)
                    out["responses"].append({"status": 0, "reason": "raw", "headers": [],
                                             "body": got.decode("latin-1"), "interim": []})
                else:
                    out["responses"].append(read_response(r, want, deadline))
        out["extra"] = r.rest(time.monotonic() + script.get("quiet_ms", 300) / 1000).decode("latin-1")
    except Closed:
        out["extra"] = r.buf.decode("latin-1")
    except socket.timeout:
        out["error"] = "timed out waiting for response %d" % (len(out["responses"]) + 1)
        out["extra"] = r.buf.decode("latin-1")
    except ValueError as e:
        out["error"] = str(e)
        out["extra"] = r.buf.decode("latin-1")
    out["closed"] = r.closed
    print(json.dumps(out))


def main():
    args = sys.argv[1:]
    if args and args[0] == "--client":
        client(int(args[1]), args[2], args[3])
        return
    server(dict(zip(args[0::2], args[1::2])))


if __name__ == "__main__":
    main()
