// fakeapi is a stand-in for a member cluster's kube-apiserver, faithful
// enough for the real kubectl (1.27 to 1.33) to drive it: discovery,
// server-side tables, lists, watches, logs, create/delete of configmaps
// (protobuf bodies), a 16 MiB object, exec/attach over WebSocket (v4/v5) and
// SPDY/3.1, and port-forward over SPDY/3.1 and over WebSocket-tunnelled SPDY.
//
// Built offline in GOPATH mode against Debian's Go packages only:
//
//	GO111MODULE=off GOPATH=$TMP:/usr/share/gocode GOFLAGS= go build -o $TMP/fakeapi ./Tests/FakeAPIServer
//
// See README.md in this directory for flags, endpoints and what each kubectl
// version sends.
package main

import (
	"crypto/sha256"
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
)

// config holds everything the flags decide; handlers read it, never write it.
type config struct {
	token           string
	tokenUser       userInfo // who --token is
	policy          *policy  // nil: AlwaysAllow
	audit           *auditLog
	compactedBefore int64 // watches asking for a resourceVersion below this get 410 Expired
	logLines        int   // 0: "logs -f" streams until the client goes away
	verbose         bool
}

func main() {
	var (
		addr      = flag.String("listen", "127.0.0.1:0", "address to listen on (port 0: the kernel picks one, printed as PORT <n>)")
		certFile  = flag.String("cert", "", "PEM certificate for HTTPS")
		keyFile   = flag.String("key", "", "PEM private key for HTTPS")
		token     = flag.String("token", "", "the only bearer token accepted")
		compacted = flag.Int64("compacted-before", 0, "watches from a resourceVersion below this (and always from \"1\") get a 410 Expired ERROR event")
		logLines  = flag.Int("log-lines", 0, "with follow=true, end the log stream after this many lines (0: never)")
		bigDigest = flag.Bool("print-big-digest", false, "print the SHA-256 digests of the big configmap (data value and raw JSON body) and exit")
		verbose   = flag.Bool("v", false, "log every request on stderr")
		tokenUser = flag.String("token-user", "system:serviceaccount:kopilot:kopilot-agent", "the user --token authenticates as")
		policyF   = flag.String("policy", "", "JSON rules to authorize by, impersonation included (see authz.go); none: AlwaysAllow")
		auditF    = flag.String("audit-log", "", "append one audit.k8s.io/v1 Event (level Metadata, stage ResponseComplete) per request to this file")
	)
	flag.Parse()

	if *bigDigest {
		printBigDigest()
		return
	}
	if *certFile == "" || *keyFile == "" || *token == "" {
		log.Fatal("fakeapi: --cert, --key and --token are required")
	}
	cfg := &config{token: *token, compactedBefore: *compacted, logLines: *logLines, verbose: *verbose}
	cfg.tokenUser = userInfo{Username: *tokenUser, Groups: []string{"system:authenticated"}}
	if strings.HasPrefix(*tokenUser, "system:serviceaccount:") {
		ns := strings.SplitN(strings.TrimPrefix(*tokenUser, "system:serviceaccount:"), ":", 2)[0]
		cfg.tokenUser.Groups = []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"}
	}
	if *policyF != "" {
		p, err := loadPolicy(*policyF)
		if err != nil {
			log.Fatalf("fakeapi: --policy: %v", err)
		}
		cfg.policy = p
	}
	if *auditF != "" {
		f, err := os.OpenFile(*auditF, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			log.Fatalf("fakeapi: --audit-log: %v", err)
		}
		cfg.audit = &auditLog{f: f}
	}

	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		log.Fatalf("fakeapi: loading key pair: %v", err)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("fakeapi: listen: %v", err)
	}

	srv := &http.Server{
		Handler: newServer(cfg, newStore()),
		// Only http/1.1 in ALPN, and an empty TLSNextProto so net/http never
		// switches to HTTP/2: exec, attach and port-forward are HTTP/1.1
		// Upgrades, which HTTP/2 cannot carry, and the tunnel relies on them.
		TLSConfig:    &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}},
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog:     log.New(os.Stderr, "fakeapi: http: ", 0),
		// No timeouts: watches, "logs -f" and port-forward live as long as
		// the client wants, like the real API server's long-running requests.
	}
	fmt.Printf("PORT %d\n", ln.Addr().(*net.TCPAddr).Port)
	os.Stdout.Sync()
	log.Fatal(srv.ServeTLS(ln, "", ""))
}

// printBigDigest is the --print-big-digest mode: the test compares these
// with what it read through kubectl (data) or kubectl get --raw (raw).
func printBigDigest() {
	b := bigConfigMap()
	fmt.Printf("data %x\n", sha256.Sum256([]byte(b.Data[bigKey])))
	fmt.Printf("raw %x\n", sha256.Sum256(mustJSON(b)))
}

// server routes requests; one instance per process.
type server struct {
	cfg   *config
	store *store
}

func newServer(cfg *config, st *store) *server { return &server{cfg: cfg, store: st} }

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.cfg.verbose {
		log.Printf("%s %s Accept=%q Content-Type=%q Upgrade=%q X-Stream-Protocol-Version=%q Sec-WebSocket-Protocol=%q",
			r.Method, r.URL.RequestURI(), r.Header.Get("Accept"), r.Header.Get("Content-Type"), r.Header.Get("Upgrade"),
			r.Header.Values("X-Stream-Protocol-Version"), r.Header.Values("Sec-WebSocket-Protocol"))
	}
	if !s.authorized(r) {
		writeStatus(w, http.StatusUnauthorized, "Unauthorized", "Unauthorized", nil)
		return
	}
	// Audit: the request's ID (adopted from Audit-ID), echoed as Audit-Id.
	id := auditID(r)
	w.Header().Set("Audit-Id", id)
	cw := &codeWriter{ResponseWriter: w}
	real := s.cfg.tokenUser
	ev := &auditEvent{Kind: "Event", APIVersion: "audit.k8s.io/v1", Level: "Metadata", AuditID: id,
		Stage: "ResponseComplete", RequestURI: r.URL.RequestURI(), User: real}
	defer func() {
		ev.ResponseStatus.Code = cw.code
		s.cfg.audit.write(ev)
	}()
	u, ok := s.impersonate(cw, r, &real)
	if !ok {
		ev.Verb = "impersonate"
		return
	}
	if u != &real {
		ev.ImpersonatedUser = u
	}
	a := requestAttributes(r, u)
	ev.Verb = a.verb
	if !s.authorize(a) {
		writeForbidden(cw, a)
		return
	}
	if s.serveAuthAPIs(cw, r, strings.TrimSuffix(r.URL.Path, "/"), u) {
		return
	}
	s.route(cw, r)
}

// authorized accepts exactly "Bearer <token>"; the scheme is
// case-insensitive as in the apiserver's bearer authenticator.
func (s *server) authorized(r *http.Request) bool {
	h := r.Header.Get("Authorization")
	parts := strings.SplitN(h, " ", 2)
	if len(parts) != 2 || !strings.EqualFold(parts[0], "bearer") {
		return false
	}
	return strings.TrimSpace(parts[1]) == s.cfg.token
}
