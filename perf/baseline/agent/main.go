// goagent is a stand-in for the original kopilot agent, written for the
// interop tests: gorilla/websocket to wss://HUB/connect?token=T without a
// subprotocol, then a yamux *client* session on the WebSocket's underlying
// connection (raw mux bytes after the 101, no WebSocket framing), and an
// HTTP server on that session (the hub opens one stream per caller request)
// whose handler is a reverse proxy to the member API server with the agent's
// bearer token.
//
// Built offline in GOPATH mode against Debian's golang-github-gorilla-websocket-dev
// and golang-github-hashicorp-yamux-dev:
//
//	GO111MODULE=off GOPATH=$TMP:/usr/share/gocode GOFLAGS= go build -o $TMP/goagent ./Tests/Interop/goagent
package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"

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

func main() {
	connect := flag.String("connect", "", "wss://HUB/connect?token=T")
	hubCA := flag.String("hub-ca", "", "PEM CA for the hub")
	upstream := flag.String("apiserver", "", "https://HOST:PORT of the API server")
	upCA := flag.String("ca-file", "", "PEM CA for the API server")
	tokenFile := flag.String("token-file", "", "bearer token for the API server")
	flag.Parse()

	tokenBytes, err := os.ReadFile(*tokenFile)
	if err != nil {
		log.Fatalf("goagent: %v", err)
	}
	token := strings.TrimSpace(string(tokenBytes))

	dialer := websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: pool(*hubCA)}}
	ws, resp, err := dialer.Dial(*connect, nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		log.Fatalf("goagent: dialing the hub: %v (HTTP %d)", err, status)
	}
	// As the original agent does: the mux runs on the raw TLS connection.
	// Caveat: gorilla's handshake reader is buffered; bytes the hub sent
	// right behind the 101 would be stranded in it. The hub only opens
	// streams when a caller asks, after "connected" is printed, so the test
	// never hits that window.
	session, err := yamux.Client(ws.UnderlyingConn(), yamux.DefaultConfig())
	if err != nil {
		log.Fatalf("goagent: yamux: %v", err)
	}

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
	log.Printf("connected to the hub")
	// http.Serve returns when the session ends (hub gone): exit non-zero so
	// the test sees it.
	err = http.Serve(session, proxy)
	log.Fatalf("goagent: session ended: %v", err)
}
