// The original design's hub, rebuilt as the benchmark's baseline: an HTTPS
// server that upgrades agents with gorilla/websocket, runs a yamux session
// on the WebSocket's underlying connection, and reverse-proxies
// /proxy/{namespace}_{name}/... with net/http/httputil.ReverseProxy over a
// transport whose connections are yamux streams (kept alive and reused, as
// http.Transport does). No authorization: only the data path is compared.
// The matching agent is perf/baseline/agent.
//
// Built offline in GOPATH mode from Debian's packages:
//
//	GO111MODULE=off GOPATH=$TMP/go:/usr/share/gocode GOFLAGS= GOCACHE=$TMP/go/cache go build -o $TMP/basehub ./perf/baseline/hub
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync"
	"syscall"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/yamux"
)

type hub struct {
	token    string
	cluster  string
	mu       sync.Mutex
	sessions []*yamux.Session
	sweepAt  int // compact the list when it grows to this length
	upgrader websocket.Upgrader
}

// add appends a session and, once the list has doubled since the last sweep,
// drops the sessions that have closed (session() only drops them from the
// end), so agents that come and go do not grow the list: amortized O(1).
func (h *hub) add(s *yamux.Session) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.sessions = append(h.sessions, s)
	if len(h.sessions) < h.sweepAt {
		return
	}
	live := h.sessions[:0]
	for _, s := range h.sessions {
		if !s.IsClosed() {
			live = append(live, s)
		}
	}
	for i := len(live); i < len(h.sessions); i++ {
		h.sessions[i] = nil
	}
	h.sessions = live
	h.sweepAt = 2*len(live) + 64
}

func (h *hub) session() (*yamux.Session, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for len(h.sessions) > 0 {
		s := h.sessions[len(h.sessions)-1]
		if !s.IsClosed() {
			return s, nil
		}
		h.sessions = h.sessions[:len(h.sessions)-1]
	}
	return nil, errors.New("no agent connected")
}

func (h *hub) connect(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("token") != h.token {
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	ws, err := h.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	s, err := yamux.Server(ws.UnderlyingConn(), yamux.DefaultConfig())
	if err != nil {
		ws.Close()
		return
	}
	h.add(s)
	log.Printf("agent session up: cluster=%s", h.cluster)
}

func main() {
	bind := flag.String("bind", "127.0.0.1:0", "HOST:PORT")
	cert := flag.String("tls-cert", "", "PEM certificate")
	key := flag.String("tls-key", "", "PEM key")
	token := flag.String("agent-token", "", "the agent token")
	cluster := flag.String("cluster", "default_perf", "the cluster id")
	flag.Parse()
	// An idle-agents run holds 10,000 sessions: one descriptor each.
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	h := &hub{token: *token, cluster: *cluster}

	transport := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			s, err := h.session()
			if err != nil {
				return nil, err
			}
			return s.Open()
		},
		MaxIdleConnsPerHost: 256,
	}
	target, _ := url.Parse("http://member")
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.Transport = transport
	prefix := "/proxy/" + *cluster
	mux := http.NewServeMux()
	mux.HandleFunc("/connect", h.connect)
	mux.HandleFunc("/proxy/", func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, prefix+"/") {
			http.NotFound(w, r)
			return
		}
		r.URL.Path = strings.TrimPrefix(r.URL.Path, prefix)
		r.Header.Del("Authorization")
		proxy.ServeHTTP(w, r)
	})

	ln, err := net.Listen("tcp", *bind)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: mux, TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){}}
	fmt.Fprintf(os.Stderr, "basehub listening on %s\n", ln.Addr())
	log.Fatal(srv.ServeTLS(ln, *cert, *key))
}
