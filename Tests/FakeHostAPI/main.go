// fakehost stands in for the kube-apiserver of the HOST cluster in which
// kopilot-hub replicas run: the Cluster CRD (clusters.kopilot.smartx.com
// v1alpha1) with list, watch, a status subresource and admission webhooks,
// EndpointSlices, ConfigMaps, ClusterRoles and ClusterRoleBindings, and the
// TokenReview and SubjectAccessReview APIs the hub authorizes callers with.
// It also serves enough discovery for the real kubectl to apply, get and
// delete Clusters.
//
// Standard library only, built in GOPATH mode like Tests/FakeAPIServer:
//
//	GO111MODULE=off GOPATH=$TMP GOFLAGS= go build -o $TMP/fakehost ./Tests/FakeHostAPI
//
// README.md in this directory lists flags, endpoints and test controls.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/csv"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// userInfo is authentication.k8s.io/v1 UserInfo.
type userInfo struct {
	Username string   `json:"username"`
	UID      string   `json:"uid,omitempty"`
	Groups   []string `json:"groups,omitempty"`
}

// config holds what the flags decide; handlers only read it.
type config struct {
	tokens           map[string]userInfo
	bookmarkInterval time.Duration
	history          int
	mutatingURL      string
	validatingURL    string
	mutatingName     string
	validatingName   string
	webhookClient    *http.Client
	verbose          bool
}

func main() {
	var (
		addr           = flag.String("listen", "127.0.0.1:0", "address to listen on (port 0: the kernel picks one, printed as PORT <n>)")
		certFile       = flag.String("cert", "", "PEM certificate for HTTPS (required)")
		keyFile        = flag.String("key", "", "PEM private key for HTTPS (required)")
		tokensFile     = flag.String("tokens", "", "kube-apiserver --token-auth-file CSV: token,user,uid,\"group1,group2\"")
		bookmarks      = flag.Duration("bookmark-interval", time.Second, "how often a watch that allows bookmarks gets a BOOKMARK event")
		history        = flag.Int("history", 1000, "how many past events the watch cache keeps; watches from older resourceVersions get 410 Expired")
		mutating       = flag.String("mutating-webhook", "", "URL of the Cluster mutating admission webhook (CREATE, UPDATE)")
		validating     = flag.String("validating-webhook", "", "URL of the Cluster validating admission webhook (CREATE, UPDATE)")
		mutatingName   = flag.String("mutating-webhook-name", "mutate.clusters.kopilot.smartx.com", "the mutating webhook's name, as error messages quote it")
		validatingName = flag.String("validating-webhook-name", "validate.clusters.kopilot.smartx.com", "the validating webhook's name, as error messages quote it")
		webhookCA      = flag.String("webhook-ca", "", "PEM CA bundle that verifies the webhook server (default: the system's roots)")
		verbose        = flag.Bool("v", false, "log every request (method, target, status) on stderr")
		clientCA       = flag.String("client-ca", "", "PEM CA whose client certificates authenticate (user = CN, groups = O), as kube-apiserver's --client-ca-file")
	)
	flag.Parse()
	if *certFile == "" || *keyFile == "" {
		log.Fatal("fakehost: --cert and --key are required")
	}
	if *history < 1 {
		log.Fatal("fakehost: --history must be at least 1")
	}
	cfg := &config{
		tokens: map[string]userInfo{}, bookmarkInterval: *bookmarks, history: *history,
		mutatingURL: *mutating, validatingURL: *validating, mutatingName: *mutatingName, validatingName: *validatingName,
		verbose: *verbose,
	}
	if *tokensFile != "" {
		f, err := os.Open(*tokensFile)
		if err != nil {
			log.Fatalf("fakehost: %v", err)
		}
		cfg.tokens, err = parseTokens(f)
		f.Close()
		if err != nil {
			log.Fatalf("fakehost: %s: %v", *tokensFile, err)
		}
	}
	if len(cfg.tokens) == 0 {
		log.Print("fakehost: no --tokens: every request will get 401")
	}
	roots, err := x509.SystemCertPool()
	if err != nil || *webhookCA != "" {
		roots = x509.NewCertPool()
	}
	if *webhookCA != "" {
		pem, err := os.ReadFile(*webhookCA)
		if err != nil || !roots.AppendCertsFromPEM(pem) {
			log.Fatalf("fakehost: --webhook-ca %s: no PEM certificate (%v)", *webhookCA, err)
		}
	}
	cfg.webhookClient = &http.Client{
		// The apiserver's default webhook timeout (timeoutSeconds: 10).
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}},
	}

	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		log.Fatalf("fakehost: loading key pair: %v", err)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("fakehost: listen: %v", err)
	}
	srv := &http.Server{
		Handler: newServer(cfg),
		// HTTP/1.1 only, as the member fake: ALPN offers http/1.1 and an empty
		// TLSNextProto keeps net/http from switching to HTTP/2.
		TLSConfig:    serverTLS(cert, *clientCA),
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog:     log.New(os.Stderr, "fakehost: http: ", 0),
		// No timeouts: watches last as long as the client or timeoutSeconds says.
	}
	fmt.Printf("PORT %d\n", ln.Addr().(*net.TCPAddr).Port)
	os.Stdout.Sync()
	log.Fatal(srv.ServeTLS(ln, "", ""))
}

// parseTokens reads the kube-apiserver --token-auth-file format: one
// token,user,uid[,"group1,group2"] per line. Every user also gets the group
// system:authenticated, as the apiserver's authenticator chain adds it.
func parseTokens(r io.Reader) (map[string]userInfo, error) {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	cr.Comment = '#'
	cr.TrimLeadingSpace = true
	out := map[string]userInfo{}
	for line := 1; ; line++ {
		rec, err := cr.Read()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if len(rec) < 3 {
			return nil, fmt.Errorf("line %d: want token,user,uid[,groups], got %d fields", line, len(rec))
		}
		u := userInfo{Username: rec[1], UID: rec[2]}
		if len(rec) > 3 {
			for _, g := range strings.Split(rec[3], ",") {
				if g = strings.TrimSpace(g); g != "" {
					u.Groups = append(u.Groups, g)
				}
			}
		}
		u.Groups = append(u.Groups, "system:authenticated")
		if rec[0] == "" {
			return nil, fmt.Errorf("line %d: empty token", line)
		}
		out[rec[0]] = u
	}
}

// serverTLS is HTTP/1.1 only; with a client CA, a client certificate is
// asked for and, when given, must chain to it (a bearer token still works
// without one), as kube-apiserver's --client-ca-file does.
func serverTLS(cert tls.Certificate, clientCA string) *tls.Config {
	c := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}}
	if clientCA != "" {
		pem, err := os.ReadFile(clientCA)
		pool := x509.NewCertPool()
		if err != nil || !pool.AppendCertsFromPEM(pem) {
			log.Fatalf("fakehost: --client-ca %s: no PEM certificate (%v)", clientCA, err)
		}
		c.ClientCAs = pool
		c.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return c
}
