package main

import (
	"io"
	"net"
	"net/http"
	"strings"
	"sync"

	"github.com/docker/spdystream"
	"github.com/gorilla/websocket"
)

// servePortForward handles pods/portforward: SPDY/3.1 (kubectl 1.27-1.30)
// or SPDY tunnelled through a WebSocket (1.31+, subprotocol
// "SPDY/3.1+portforward.k8s.io"). Every forwarded port is an echo service.
func (s *server) servePortForward(w http.ResponseWriter, r *http.Request, ns, name string) {
	switch {
	case strings.EqualFold(r.Header.Get("Upgrade"), "websocket"):
		if negotiate([]string{protoPortForwardWS}, websocket.Subprotocols(r)) == "" {
			// e.g. the older "v4.channel.k8s.io" port-forward protocol: refuse
			// before the 101 so the client can fall back to SPDY.
			writeStatus(w, http.StatusBadRequest, "BadRequest", "unable to upgrade: port-forward over WebSocket needs subprotocol "+protoPortForwardWS, nil)
			return
		}
		up := websocket.Upgrader{Subprotocols: []string{protoPortForwardWS}, CheckOrigin: func(*http.Request) bool { return true },
			ReadBufferSize: 32 << 10, WriteBufferSize: 32 << 10}
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		conn := newWSConn(ws)
		defer conn.Close()
		servePortForwardSPDY(conn)
	case strings.EqualFold(r.Header.Get("Upgrade"), "SPDY/3.1"):
		conn, _, ok := spdyUpgrade(w, r, []string{protoPortForward})
		if !ok {
			return
		}
		defer conn.Close()
		servePortForwardSPDY(conn)
	default:
		writeStatus(w, http.StatusBadRequest, "BadRequest", "Upgrade request required", nil)
	}
}

// pfPair is one forwarded connection: the client opens an error stream and
// a data stream with the same requestID header.
type pfPair struct {
	errStream *spdystream.Stream
	dataDone  bool
}

// servePortForwardSPDY runs the kubelet's side of portforward.k8s.io until
// the client closes the connection. Each data stream is echoed back; when
// the client half-closes it, the echo ends and the pair's error stream is
// closed empty (no error), which client-go waits for.
func servePortForwardSPDY(conn net.Conn) {
	sc, incoming, err := acceptStreams(conn)
	if err != nil {
		return
	}
	var mu sync.Mutex
	pairs := map[string]*pfPair{}
	pair := func(id string) *pfPair {
		p := pairs[id]
		if p == nil {
			p = &pfPair{}
			pairs[id] = p
		}
		return p
	}
	for {
		select {
		case st := <-incoming:
			h := st.Headers()
			id := h.Get("requestID")
			switch h.Get("streamType") {
			case "error":
				mu.Lock()
				p := pair(id)
				p.errStream = st
				done := p.dataDone
				mu.Unlock()
				if done {
					st.Close()
				}
			case "data":
				go func() {
					io.Copy(st, st)
					st.Close()
					mu.Lock()
					p := pair(id)
					p.dataDone = true
					es := p.errStream
					mu.Unlock()
					if es != nil {
						es.Close()
					}
				}()
			default:
				st.Reset()
			}
		case <-sc.CloseChan():
			return
		}
	}
}
