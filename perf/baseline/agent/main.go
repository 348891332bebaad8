// The original kopilot agent's design, rebuilt as the benchmark's baseline
// agent (perf/baseline/hub is its hub) and used by the interop tests against
// kopilot-hub: gorilla/websocket to wss://HUB/connect?token=T without a
// subprotocol, then a yamux *client* session on the WebSocket's underlying
// connection (raw mux bytes after the 101, no WebSocket framing), and an HTTP
// server on that session (the hub opens one stream per caller connection)
// whose handler is a reverse proxy to the member API server with the agent's
// bearer token.
//
// -sessions N keeps N independent sessions from one process (idle-agent
// benchmarks). -reconnect dials again when a session ends or a dial fails,
// with kopilot-agent's policy (exponential backoff with full jitter, 1 s
// doubling to 30 s, reset after a success); without it, the process exits
// non-zero when any session ends, which the interop tests rely on.
//
// Built offline in GOPATH mode against Debian's golang-github-gorilla-websocket-dev
// and golang-github-hashicorp-yamux-dev:
//
//	GO111MODULE=off GOPATH=$TMP/go:/usr/share/gocode GOFLAGS= GOCACHE=$TMP/go/cache go build -o $TMP/goagent ./perf/baseline/agent
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"log"
	"math/rand"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/yamux"
)

func pool(file string) *x509.CertPool {
	pem, err := os.ReadFile(file)
	if err != nil {
		log.Fatalf("goagent: reading %s: %v", file, err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pem) {
		log.Fatalf("goagent: no certificates in %s", file)
	}
	return p
}

// deadlineConn gives a yamux stream read deadlines that work. Debian's yamux
// (a 2019 snapshot) looks at the read deadline only when a Read starts to
// wait, so SetReadDeadline cannot wake a Read that is already blocked. Go's
// http.Server depends on that: after each request, and when it hijacks a
// connection for an upgrade, it stops its background one-byte Read by setting
// a deadline in the past and waits for that Read to return; on a bare stream
// an upgrade (kubectl exec, port-forward) would hang there.
//
// Here one goroutine per stream (pump) does the blocking reads and hands each
// chunk to Read over a channel; Read waits for a chunk, a change of deadline
// or the deadline itself. A Read that gives up leaves the chunk in the
// channel for the next Read, so nothing is lost. Writes go to the stream.
type deadlineConn struct {
	*yamux.Stream
	chunks    chan chunk    // pump → Read; the bytes are valid until Read signals done
	done      chan struct{} // Read → pump: chunk used up, read the next
	closed    chan struct{}
	closeOnce sync.Once
	rest      []byte // unread part of the current chunk (one Read at a time)
	err       error  // the stream's read error, once reached

	mu       sync.Mutex
	deadline time.Time
	changed  chan struct{} // closed (and replaced) when the deadline changes
}

type chunk struct {
	b   []byte
	err error
}

func newDeadlineConn(s *yamux.Stream) *deadlineConn {
	c := &deadlineConn{Stream: s, chunks: make(chan chunk), done: make(chan struct{}, 1),
		closed: make(chan struct{}), changed: make(chan struct{})}
	go c.pump()
	return c
}

func (c *deadlineConn) pump() {
	buf := make([]byte, 16<<10)
	for {
		n, err := c.Stream.Read(buf)
		if n > 0 {
			select {
			case c.chunks <- chunk{b: buf[:n]}:
			case <-c.closed:
				return
			}
			select { // buf is Read's until it says done
			case <-c.done:
			case <-c.closed:
				return
			}
		}
		if err != nil {
			select {
			case c.chunks <- chunk{err: err}:
			case <-c.closed:
			}
			return
		}
	}
}

func (c *deadlineConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	for len(c.rest) == 0 {
		if c.err != nil {
			return 0, c.err
		}
		c.mu.Lock()
		deadline, changed := c.deadline, c.changed
		c.mu.Unlock()
		var expired <-chan time.Time
		var timer *time.Timer
		if !deadline.IsZero() {
			wait := time.Until(deadline)
			if wait <= 0 {
				return 0, os.ErrDeadlineExceeded
			}
			timer = time.NewTimer(wait)
			expired = timer.C
		}
		select {
		case ch := <-c.chunks:
			c.rest, c.err = ch.b, ch.err
		case <-changed:
		case <-expired:
		case <-c.closed:
			c.err = net.ErrClosed
		}
		if timer != nil && !timer.Stop() && len(c.rest) == 0 && c.err == nil {
			return 0, os.ErrDeadlineExceeded // it fired (if it raced a chunk, the chunk wins)
		}
	}
	n := copy(b, c.rest)
	c.rest = c.rest[n:]
	if len(c.rest) == 0 {
		c.done <- struct{}{}
	}
	return n, nil
}

func (c *deadlineConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !t.Equal(c.deadline) {
		c.deadline = t
		close(c.changed)
		c.changed = make(chan struct{})
	}
	return nil
}

func (c *deadlineConn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.Stream.SetWriteDeadline(t)
}

func (c *deadlineConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Stream.Close()
}

// listener serves a yamux session's streams, deadlines fixed.
type listener struct{ *yamux.Session }

func (l listener) Accept() (net.Conn, error) {
	s, err := l.AcceptStream()
	if err != nil {
		return nil, err
	}
	return newDeadlineConn(s), nil
}

// headConn reads the hub's 101 one byte at a time, so that gorilla's buffered
// reader cannot take mux bytes the hub sends right behind it (they would be
// stranded there: the mux reads the connection, not that buffer); after the
// blank line that ends the head it reads as the connection does.
type headConn struct {
	net.Conn
	seen   uint32 // the last four bytes read, while in the head
	inHead bool
}

func (c *headConn) Read(b []byte) (int, error) {
	if !c.inHead || len(b) == 0 {
		return c.Conn.Read(b)
	}
	n, err := c.Conn.Read(b[:1])
	if n == 1 {
		c.seen = c.seen<<8 | uint32(b[0])
		if c.seen == 0x0d0a0d0a { // "\r\n\r\n"
			c.inHead = false
		}
	}
	return n, err
}

type agent struct {
	dialer    websocket.Dialer
	connect   string
	proxy     http.Handler
	total     int
	reconnect bool
}

func (a *agent) dial() (*yamux.Session, error) {
	ws, resp, err := a.dialer.Dial(a.connect, nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		return nil, fmt.Errorf("dialing the hub: %v (HTTP %d)", err, status)
	}
	// As the original agent does: the mux runs on the raw TLS connection.
	conn := ws.UnderlyingConn()
	session, err := yamux.Client(conn, yamux.DefaultConfig())
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("yamux: %v", err)
	}
	return session, nil
}

// delay is kopilot-agent's backoff: random in [0, min(30 s, 2^attempt s)].
func delay(attempt int) time.Duration {
	if attempt > 5 {
		attempt = 5
	}
	ceiling := time.Duration(1<<attempt) * time.Second
	if ceiling > 30*time.Second {
		ceiling = 30 * time.Second
	}
	return time.Duration(rand.Int63n(int64(ceiling) + 1))
}

// run keeps session i (1-based) up, or exits the process when it ends and
// -reconnect is off.
func (a *agent) run(i int) {
	label := ""
	if a.total > 1 {
		label = fmt.Sprintf("session %d/%d: ", i, a.total)
	}
	attempt := 0
	reported := false
	for {
		session, err := a.dial()
		if err != nil {
			if !a.reconnect {
				log.Fatalf("goagent: %s%v", label, err)
			}
			if !reported {
				log.Printf("%scannot reach the hub (%v); retrying with backoff", label, err)
				reported = true
			}
			time.Sleep(delay(attempt))
			attempt++
			continue
		}
		attempt, reported = 0, false
		log.Printf("%sconnected to the hub", label)
		// Serve returns when the session ends (hub gone).
		err = http.Serve(listener{session}, a.proxy)
		session.Close()
		if !a.reconnect {
			log.Fatalf("goagent: %ssession ended: %v", label, err)
		}
		log.Printf("%ssession to the hub ended (%v); reconnecting", label, err)
		time.Sleep(delay(attempt))
		attempt++
	}
}

func raiseNoFile() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

func main() {
	connect := flag.String("connect", "", "wss://HUB/connect?token=T")
	hubCA := flag.String("hub-ca", "", "PEM CA for the hub")
	upstream := flag.String("apiserver", "", "https://HOST:PORT of the API server")
	upCA := flag.String("ca-file", "", "PEM CA for the API server")
	tokenFile := flag.String("token-file", "", "bearer token for the API server")
	sessions := flag.Int("sessions", 1, "independent sessions to the hub from this process")
	reconnect := flag.Bool("reconnect", false, "dial again (backoff with full jitter, 1 s to 30 s) when a session ends instead of exiting")
	flag.Parse()
	if *sessions < 1 || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	raiseNoFile()
	rand.Seed(time.Now().UnixNano())

	tokenBytes, err := os.ReadFile(*tokenFile)
	if err != nil {
		log.Fatalf("goagent: %v", err)
	}
	token := strings.TrimSpace(string(tokenBytes))

	target, err := url.Parse(*upstream)
	if err != nil {
		log.Fatalf("goagent: %v", err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.Transport = &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool(*upCA)},
		MaxIdleConnsPerHost: 64,
	}
	// A negative interval flushes every write at once: watches stream.
	proxy.FlushInterval = -1
	direct := proxy.Director
	proxy.Director = func(r *http.Request) {
		direct(r)
		r.Host = target.Host
		r.Header.Set("Authorization", "Bearer "+token)
	}

	hubTLS := &tls.Config{RootCAs: pool(*hubCA)}
	a := &agent{connect: *connect, proxy: proxy, total: *sessions, reconnect: *reconnect}
	a.dialer = websocket.Dialer{
		HandshakeTimeout: 30 * time.Second,
		NetDialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			cfg := hubTLS.Clone()
			if host, _, err := net.SplitHostPort(addr); err == nil {
				cfg.ServerName = host
			}
			d := &tls.Dialer{Config: cfg}
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &headConn{Conn: c, inHead: true}, nil
		},
	}
	var wg sync.WaitGroup
	for i := 1; i <= *sessions; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			a.run(i)
		}(i)
	}
	wg.Wait()
}
