package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/docker/spdystream"
	"github.com/gorilla/websocket"
)

// Remote command sub-protocols (k8s.io/apimachinery/pkg/util/remotecommand),
// in the order the server prefers them. Only v4 and v5 carry the exit code
// as a Status; v5 (WebSocket only) adds the "close stream" message.
const (
	protoV5 = "v5.channel.k8s.io"
	protoV4 = "v4.channel.k8s.io"
	protoV3 = "v3.channel.k8s.io"
	protoV2 = "v2.channel.k8s.io"
	protoV1 = "channel.k8s.io"

	protoPortForward = "portforward.k8s.io"
	// client-go prefixes the SPDY protocol it tunnels through a WebSocket.
	protoPortForwardWS = "SPDY/3.1+" + protoPortForward
)

// WebSocket channel numbers of the channel.k8s.io protocols: the first byte
// of every binary message.
const (
	chanStdin  = 0
	chanStdout = 1
	chanStderr = 2
	chanError  = 3
	chanResize = 4
	chanClose  = 255 // v5: the next byte names a stream the sender has closed
)

// stdio says which streams the request asked for (query parameters).
type stdio struct {
	stdin, stdout, stderr, tty bool
}

func queryBool(v string) bool { return v == "true" || v == "1" }

// process is what runs "in the container"; it returns an exit code.
type process func(stdin io.Reader, stdout, stderr io.Writer) int

// serveExec handles pods/exec and pods/attach, over a WebSocket (kubectl
// 1.30+, GET) or SPDY/3.1 (1.27-1.29, POST; and 1.30+ when the WebSocket
// upgrade is refused). A request without an upgrade gets 400, as from the
// apiserver.
func (s *server) serveExec(w http.ResponseWriter, r *http.Request, ns, name, sub string) {
	q := r.URL.Query()
	io4 := stdio{queryBool(q.Get("stdin")), queryBool(q.Get("stdout")), queryBool(q.Get("stderr")), queryBool(q.Get("tty"))}
	if io4.tty {
		io4.stderr = false // a TTY merges stderr into stdout
	}
	argv := q["command"]
	var proc process
	if sub == "exec" {
		if len(argv) == 0 {
			writeStatus(w, http.StatusBadRequest, "BadRequest", "you must specify at least 1 command", nil)
			return
		}
		proc = func(stdin io.Reader, stdout, stderr io.Writer) int { return runShell(argv, stdin, stdout, stderr) }
	} else {
		// attach: the container's main process says hello, then echoes
		// stdin (if attached) until it is closed.
		proc = func(stdin io.Reader, stdout, stderr io.Writer) int {
			fmt.Fprintf(stdout, "attached to %s/%s\n", ns, name)
			if stdin != nil {
				io.Copy(stdout, stdin)
			}
			return 0
		}
	}
	if !io4.stdin && !io4.stdout && !io4.stderr {
		writeStatus(w, http.StatusBadRequest, "BadRequest", "you must specify at least 1 of stdin, stdout, stderr", nil)
		return
	}
	switch {
	case strings.EqualFold(r.Header.Get("Upgrade"), "websocket"):
		s.execWebSocket(w, r, io4, argv, proc)
	case strings.EqualFold(r.Header.Get("Upgrade"), "SPDY/3.1"):
		s.execSPDY(w, r, io4, argv, proc)
	default:
		writeStatus(w, http.StatusBadRequest, "BadRequest", "Upgrade request required", nil)
	}
}

// exitStatus is what v4/v5 write on the error stream when the process ends:
// a metav1.Status, exactly as the kubelet encodes it (no kind/apiVersion).
// client-go turns NonZeroExitCode + cause ExitCode into the exit code.
func exitStatus(code int, argv []string) []byte {
	if code == 0 {
		return []byte(`{"metadata":{},"status":"Success"}`)
	}
	return mustJSON(map[string]interface{}{
		"metadata": map[string]interface{}{},
		"status":   "Failure",
		"message":  fmt.Sprintf("command terminated with non-zero exit code: error executing command %v, exit code %d", argv, code),
		"reason":   "NonZeroExitCode",
		"details": map[string]interface{}{
			"causes": []map[string]string{{"reason": "ExitCode", "message": fmt.Sprint(code)}},
		},
	})
}

// legacyError is what v1-v3 write on the error stream: plain text, and only
// on failure; those clients cannot learn the exit code.
func legacyError(code int) []byte {
	if code == 0 {
		return nil
	}
	return []byte(fmt.Sprintf("command terminated with non-zero exit code: exit status %d", code))
}

// offered lists the protocols a client offers, header values may be
// repeated or comma-separated.
func offered(values []string) []string {
	var out []string
	for _, v := range values {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}

// negotiate returns the first of the server's protocols the client offers.
func negotiate(server, client []string) string {
	for _, sp := range server {
		for _, cp := range client {
			if sp == cp {
				return sp
			}
		}
	}
	return ""
}

// ---- WebSocket ----

var execWSProtocols = []string{protoV5, protoV4, protoV3, protoV2, protoV1}

func (s *server) execWebSocket(w http.ResponseWriter, r *http.Request, io4 stdio, argv []string, proc process) {
	proto := negotiate(execWSProtocols, websocket.Subprotocols(r))
	if proto == "" {
		// Refuse before the 101: kubectl 1.30+ then falls back to SPDY.
		writeStatus(w, http.StatusBadRequest, "BadRequest",
			fmt.Sprintf("unable to upgrade: no supported subprotocol among %v", websocket.Subprotocols(r)), nil)
		return
	}
	up := websocket.Upgrader{
		Subprotocols:    []string{proto},
		CheckOrigin:     func(*http.Request) bool { return true },
		ReadBufferSize:  32 << 10,
		WriteBufferSize: 32 << 10,
	}
	ws, err := up.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader has answered with an error status
	}
	defer ws.Close()

	var writeMu sync.Mutex
	send := func(ch byte, p []byte) error {
		writeMu.Lock()
		defer writeMu.Unlock()
		return ws.WriteMessage(websocket.BinaryMessage, append([]byte{ch}, p...))
	}

	// The reader runs for the whole session: it feeds stdin, and it must
	// keep reading so gorilla answers client-go's pings.
	stdin := newChanReader()
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		defer stdin.closeWrite()
		for {
			typ, msg, err := ws.ReadMessage()
			if err != nil {
				return
			}
			if typ != websocket.BinaryMessage || len(msg) == 0 {
				continue
			}
			switch msg[0] {
			case chanStdin:
				if io4.stdin {
					stdin.write(msg[1:])
				}
			case chanClose:
				if proto == protoV5 && len(msg) > 1 && msg[1] == chanStdin {
					stdin.closeWrite()
				}
			case chanResize:
				// {"Width":W,"Height":H}: nothing to resize in a fake TTY.
			}
		}
	}()

	var in io.Reader
	if io4.stdin {
		in = stdin
	}
	out, errw := io.Discard, io.Discard
	if io4.stdout {
		out = channelWriter{chanStdout, send}
	}
	if io4.stderr {
		errw = channelWriter{chanStderr, send}
	} else if io4.tty {
		errw = out
	}
	code := proc(in, out, errw)

	if proto == protoV4 || proto == protoV5 {
		send(chanError, exitStatus(code, argv))
	} else if msg := legacyError(code); msg != nil {
		send(chanError, msg)
	}
	// client-go reads the status when the connection closes: send a normal
	// close, give the client a moment to answer it, then drop the socket.
	writeMu.Lock()
	ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	writeMu.Unlock()
	select {
	case <-readerDone:
	case <-time.After(2 * time.Second):
	}
}

// channelWriter prefixes every write with its channel byte.
type channelWriter struct {
	ch   byte
	send func(byte, []byte) error
}

func (c channelWriter) Write(p []byte) (int, error) {
	// Keep messages well under any frame limit; large outputs are chunked.
	const max = 32 << 10
	for off := 0; off < len(p); off += max {
		end := off + max
		if end > len(p) {
			end = len(p)
		}
		if err := c.send(c.ch, p[off:end]); err != nil {
			return off, err
		}
	}
	return len(p), nil
}

// chanReader is stdin: the WebSocket reader hands it messages without
// blocking on a process that never reads stdin.
type chanReader struct {
	mu     sync.Mutex
	cond   *sync.Cond
	buf    []byte
	closed bool
}

func newChanReader() *chanReader {
	c := &chanReader{}
	c.cond = sync.NewCond(&c.mu)
	return c
}

func (c *chanReader) write(p []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		c.buf = append(c.buf, p...)
		c.cond.Broadcast()
	}
}

func (c *chanReader) closeWrite() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	c.cond.Broadcast()
}

func (c *chanReader) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.buf) == 0 && !c.closed {
		c.cond.Wait()
	}
	if len(c.buf) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.buf)
	c.buf = c.buf[n:]
	return n, nil
}

// ---- SPDY/3.1 ----

// spdyUpgrade answers the SPDY/3.1 upgrade with the protocol chosen from
// X-Stream-Protocol-Version (and echoes it: without it kubectl silently
// drops to the oldest protocol, which carries no exit status). It returns
// the hijacked connection, bytes already buffered included.
func spdyUpgrade(w http.ResponseWriter, r *http.Request, serverProtocols []string) (net.Conn, string, bool) {
	client := offered(r.Header.Values("X-Stream-Protocol-Version"))
	proto := negotiate(serverProtocols, client)
	if proto == "" && len(client) > 0 {
		writeStatus(w, http.StatusForbidden, "Forbidden", fmt.Sprintf(
			"unable to upgrade: unable to negotiate protocol: client supports %v, server supports %v", client, serverProtocols), nil)
		return nil, "", false
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		writeStatus(w, http.StatusInternalServerError, "InternalError", "unable to upgrade: connection cannot be hijacked", nil)
		return nil, "", false
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		log.Printf("fakeapi: hijack: %v", err)
		return nil, "", false
	}
	head := "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
	if proto != "" {
		head += "X-Stream-Protocol-Version: " + proto + "\r\n"
	}
	head += "Date: " + time.Now().UTC().Format(http.TimeFormat) + "\r\n\r\n"
	if _, err := io.WriteString(conn, head); err != nil {
		conn.Close()
		return nil, "", false
	}
	return &bufferedConn{Conn: conn, r: brw.Reader}, proto, true
}

// bufferedConn reads first what net/http had buffered past the request head.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// acceptStreams serves SPDY on conn and hands over every stream the client
// opens, after accepting it with a SYN_REPLY.
func acceptStreams(conn net.Conn) (*spdystream.Connection, <-chan *spdystream.Stream, error) {
	sc, err := spdystream.NewConnection(conn, true)
	if err != nil {
		return nil, nil, err
	}
	streams := make(chan *spdystream.Stream, 64)
	go sc.Serve(func(st *spdystream.Stream) {
		st.SendReply(http.Header{}, false)
		streams <- st
	})
	return sc, streams, nil
}

func (s *server) execSPDY(w http.ResponseWriter, r *http.Request, io4 stdio, argv []string, proc process) {
	conn, proto, ok := spdyUpgrade(w, r, []string{protoV4, protoV3, protoV2, protoV1})
	if !ok {
		return
	}
	defer conn.Close()
	sc, incoming, err := acceptStreams(conn)
	if err != nil {
		return
	}

	// The client opens error, stdin, stdout, stderr (and resize with a TTY)
	// streams, identified by their streamType header. Wait for the ones the
	// query asked for, as the kubelet does (it gives up after 30 s).
	streams := map[string]*spdystream.Stream{}
	want := map[string]bool{"error": true, "stdin": io4.stdin, "stdout": io4.stdout, "stderr": io4.stderr}
	deadline := time.After(30 * time.Second)
	for !haveAll(streams, want) {
		select {
		case st := <-incoming:
			streams[st.Headers().Get("streamType")] = st
		case <-deadline:
			log.Printf("fakeapi: exec: timed out waiting for streams, have %d", len(streams))
			return
		case <-sc.CloseChan():
			return
		}
	}
	go func() { // late resize streams: accepted and drained
		for st := range incoming {
			go io.Copy(io.Discard, st)
		}
	}()

	var in io.Reader
	if io4.stdin {
		in = streams["stdin"]
	}
	out, errw := io.Writer(io.Discard), io.Writer(io.Discard)
	if io4.stdout {
		out = streams["stdout"]
	}
	if io4.stderr {
		errw = streams["stderr"]
	} else if io4.tty {
		errw = out
	}
	code := proc(in, out, errw)

	var status []byte
	if proto == protoV4 {
		status = exitStatus(code, argv)
	} else {
		status = legacyError(code)
	}
	if status != nil {
		streams["error"].Write(status)
	}
	// FIN our side of every stream; client-go reads the error stream and
	// the outputs to EOF, then closes the connection itself.
	for _, st := range streams {
		st.Close()
	}
	select {
	case <-sc.CloseChan():
	case <-time.After(5 * time.Second):
	}
	for _, st := range streams {
		st.Reset()
	}
}

func haveAll(have map[string]*spdystream.Stream, want map[string]bool) bool {
	for k, needed := range want {
		if needed && have[k] == nil {
			return false
		}
	}
	return true
}

var _ = json.Marshal
