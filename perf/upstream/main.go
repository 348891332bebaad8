// upstream is the benchmark's stand-in for a kube-apiserver: an HTTPS
// (HTTP/1.1 only, keep-alive) server whose answers cost as little as
// possible, so that what a benchmark measures is the path in front of it.
//
//	GET  /api/v1/namespaces/default/pods/small   a Pod object of about 1 KiB
//	GET  /blob?bytes=N                           N pseudo-random bytes
//	PUT|POST /upload                             reads the body, answers {"bytes":N}
//	PUT|POST /echo                               the body streamed back
//	GET  /watch?events=E&interval=MS[&size=B][&stagger=1]
//	                                              E watch events, MS ms apart
//	                                              (stagger: at a random phase)
//
// Anything else is a 404 Kubernetes Status. Authorization is ignored.
// Once listening it prints "upstream listening on HOST:PORT" on stderr.
//
// Built offline in GOPATH mode from Debian's packages:
//
//	GO111MODULE=off GOPATH=$TMP/go:/usr/share/gocode GOFLAGS= GOCACHE=$TMP/go/cache go build -o $TMP/upstream ./perf/upstream
package main

import (
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// blob is written over and over for /blob: no allocation per request.
var blob = make([]byte, 1<<20)

// bigBufs serves /upload and /echo: one large buffer per request in flight.
var bigBufs = sync.Pool{New: func() interface{} { b := make([]byte, 256<<10); return &b }}

// podJSON is built once: a Pod as an API server returns it, about 1 KiB.
var podJSON = func() []byte {
	pod := `{"kind":"Pod","apiVersion":"v1","metadata":{"name":"small","namespace":"default",` +
		`"uid":"3f1c2a9e-5b7d-4c1e-9a8f-0d2b6e4c7a11","resourceVersion":"48213",` +
		`"creationTimestamp":"2026-11-24T10:00:00Z","labels":{"app":"perf","pod-template-hash":"7d9f8c6b5"},` +
		`"ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"perf-7d9f8c6b5",` +
		`"uid":"a1b2c3d4-e5f6-4789-8abc-def012345678","controller":true}]},` +
		`"spec":{"containers":[{"name":"app",` +
		`"image":"registry.k8s.io/pause:3.9","ports":[{"containerPort":8080,"protocol":"TCP"}],` +
		`"resources":{"limits":{"cpu":"100m","memory":"64Mi"},"requests":{"cpu":"50m","memory":"32Mi"}},` +
		`"imagePullPolicy":"IfNotPresent"}],` +
		`"restartPolicy":"Always","terminationGracePeriodSeconds":30,"dnsPolicy":"ClusterFirst",` +
		`"serviceAccountName":"default","nodeName":"member-worker-1","schedulerName":"default-scheduler"},` +
		`"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True",` +
		`"lastTransitionTime":"2026-11-24T10:00:05Z"}],"hostIP":"10.0.0.12","podIP":"10.244.1.17",` +
		`"startTime":"2026-11-24T10:00:00Z","containerStatuses":[{"name":"app","ready":true,"restartCount":0,` +
		`"image":"registry.k8s.io/pause:3.9","started":true,"state":{"running":{"startedAt":"2026-11-24T10:00:04Z"}}}],` +
		`"qosClass":"Burstable"}}`
	var check map[string]interface{}
	if err := json.Unmarshal([]byte(pod), &check); err != nil {
		panic("upstream: the Pod literal is not JSON: " + err.Error())
	}
	return []byte(pod)
}()

var reasons = map[int]string{400: "BadRequest", 404: "NotFound", 405: "MethodNotAllowed"}

// status answers with a Kubernetes Status object.
func status(w http.ResponseWriter, code int, message string) {
	msg, _ := json.Marshal(message)
	body := fmt.Sprintf(`{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":%s,"reason":"%s","code":%d}`+"\n",
		msg, reasons[code], code)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	io.WriteString(w, body)
}

func pod(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		status(w, 405, "method "+r.Method+" not allowed on "+r.URL.Path)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(podJSON)))
	w.Write(podJSON)
}

func blobHandler(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.ParseInt(r.URL.Query().Get("bytes"), 10, 64)
	if err != nil || n < 0 {
		status(w, 400, "bytes must be a non-negative integer, got "+strconv.Quote(r.URL.Query().Get("bytes")))
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	for n > 0 {
		k := int64(len(blob))
		if n < k {
			k = n
		}
		if _, err := w.Write(blob[:k]); err != nil {
			return
		}
		n -= k
	}
}

func upload(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPut && r.Method != http.MethodPost {
		status(w, 405, "method "+r.Method+" not allowed on /upload")
		return
	}
	bp := bigBufs.Get().(*[]byte)
	defer bigBufs.Put(bp)
	var total int64
	for {
		n, err := r.Body.Read(*bp)
		total += int64(n)
		if err == io.EOF {
			break
		}
		if err != nil {
			status(w, 400, "reading the body: "+err.Error())
			return
		}
	}
	body := `{"bytes":` + strconv.FormatInt(total, 10) + "}\n"
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	io.WriteString(w, body)
}

func echo(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPut && r.Method != http.MethodPost {
		status(w, 405, "method "+r.Method+" not allowed on /echo")
		return
	}
	if r.ContentLength >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(r.ContentLength, 10))
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	// Go 1.19's HTTP/1 server, when the response head goes out before the
	// request body was read to the end, reads (and throws away) up to
	// 256 KiB of that body, which would cut the middle out of the echo. It
	// does so only for a request whose ContentLength is not 0, so we say 0:
	// the body is still read as it came (Content-Length or chunked).
	r.ContentLength = 0
	bp := bigBufs.Get().(*[]byte)
	defer bigBufs.Put(bp)
	flusher, _ := w.(http.Flusher)
	for {
		n, err := r.Body.Read(*bp)
		if n > 0 {
			if _, werr := w.Write((*bp)[:n]); werr != nil {
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
		if err != nil {
			return
		}
	}
}

// watch streams kube-style watch events, one JSON object a line.
func watch(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	num := func(name string, def int) (int, bool) {
		s := q.Get(name)
		if s == "" {
			return def, true
		}
		v, err := strconv.Atoi(s)
		return v, err == nil && v >= 0
	}
	events, ok1 := num("events", 10)
	interval, ok2 := num("interval", 1000)
	size, ok3 := num("size", 300)
	if !ok1 || !ok2 || !ok3 {
		status(w, 400, "events, interval and size must be non-negative integers")
		return
	}
	// An event is head + resourceVersion + mid + sent + tail; the tail's
	// padding brings the line to about size bytes.
	const head = `{"type":"MODIFIED","object":{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"w","namespace":"default","resourceVersion":"`
	const mid = `","annotations":{"sent":"`
	tail := `"}},"data":{"pad":"`
	pad := size - len(head) - len(mid) - len(tail) - len(`"}}}`) - 1 - 6 - 19
	if pad > 0 {
		tail += strings.Repeat("x", pad)
	}
	tail += "\"}}}\n"
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Accel-Buffering", "no")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(200)
	flusher, _ := w.(http.Flusher)
	line := make([]byte, 0, len(head)+len(mid)+len(tail)+40)
	var tick <-chan time.Time
	done := r.Context().Done()
	for i := 1; i <= events; i++ {
		if i == 2 && interval > 0 {
			// stagger=1: this watch's events come at a random phase of
			// the interval, so that many watches do not all fire at the
			// same instant (which would measure the burst, not the path).
			if q.Get("stagger") == "1" {
				select {
				case <-time.After(time.Duration(rand.Int63n(int64(interval) * int64(time.Millisecond)))):
				case <-done:
					return
				}
			}
			t := time.NewTicker(time.Duration(interval) * time.Millisecond)
			defer t.Stop()
			tick = t.C
		}
		if i > 1 && tick != nil {
			select {
			case <-tick:
			case <-done:
				return
			}
		}
		line = append(line[:0], head...)
		line = strconv.AppendInt(line, int64(i), 10)
		line = append(line, mid...)
		line = strconv.AppendInt(line, time.Now().UnixNano(), 10)
		line = append(line, tail...)
		if _, err := w.Write(line); err != nil {
			return
		}
		if flusher != nil {
			flusher.Flush()
		}
	}
}

func main() {
	bind := flag.String("bind", "127.0.0.1:0", "HOST:PORT to listen on")
	certFile := flag.String("tls-cert", "", "PEM certificate (chain)")
	keyFile := flag.String("tls-key", "", "PEM private key")
	flag.Parse()
	if *certFile == "" || *keyFile == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "upstream: -tls-cert and -tls-key are required")
		flag.Usage()
		os.Exit(2)
	}
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		log.Fatalf("upstream: %v", err)
	}
	rand.New(rand.NewSource(0x6b6f70696c6f74)).Read(blob)

	mux := http.NewServeMux()
	mux.HandleFunc("/api/v1/namespaces/default/pods/small", pod)
	mux.HandleFunc("/blob", blobHandler)
	mux.HandleFunc("/upload", upload)
	mux.HandleFunc("/echo", echo)
	mux.HandleFunc("/watch", watch)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		status(w, 404, "the server could not find the requested resource: "+r.URL.Path)
	})

	ln, err := net.Listen("tcp", *bind)
	if err != nil {
		log.Fatalf("upstream: %v", err)
	}
	srv := &http.Server{
		Handler:     mux,
		IdleTimeout: 10 * time.Minute,
		// An empty map turns HTTP/2 off: HTTP/1.1 only, as through the tunnel.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		TLSConfig:    &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}},
		ErrorLog:     log.New(io.Discard, "", 0), // clients that hang up are not news
	}
	fmt.Fprintf(os.Stderr, "upstream listening on %s\n", ln.Addr())
	log.Fatal(srv.Serve(tls.NewListener(ln, srv.TLSConfig)))
}
