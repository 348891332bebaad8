// watchers is the watch load generator of the benchmark: it opens -streams
// watch requests at once, each on its own TLS connection (HTTP/1.1), reads
// the events line by line and records each event's delivery latency, the
// wall-clock time it arrived minus the "sent" annotation the upstream
// (perf/upstream /watch) put in it, for the events sent after every stream
// was open (steady state, not the opening burst).
//
// When every stream has its response head (or has failed) it prints
// "all streams open" on stderr; at the end, one JSON object on stdout:
//
//	{"streams":N,"completed":C,"events":E,"errors":K,"first_error":"...",
//	 "p50_us":x,"p99_us":x,"p999_us":x,"max_us":x,"open_seconds":t}
//
// A stream is completed when its response was a 200 that ended cleanly after
// every event the URL's events= asked for (10 when the URL does not say, as
// the upstream). Exit status 0 whatever happened to the streams, 2 on bad flags.
//
// Built offline in GOPATH mode:
//
//	GO111MODULE=off GOPATH=$TMP/go:/usr/share/gocode GOFLAGS= GOCACHE=$TMP/go/cache go build -o $TMP/watchers ./perf/watchers
package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type result struct {
	Streams     int     `json:"streams"`
	Completed   int     `json:"completed"`
	Events      int     `json:"events"`
	Errors      int     `json:"errors"`
	FirstError  string  `json:"first_error"`
	P50         int64   `json:"p50_us"`
	P99         int64   `json:"p99_us"`
	P999        int64   `json:"p999_us"`
	Max         int64   `json:"max_us"`
	OpenSeconds float64 `json:"open_seconds"`
}

type run struct {
	target   *url.URL
	addr     string
	tls      *tls.Config
	token    string
	expected int
	deadline time.Time

	opened    sync.WaitGroup // one per stream: head received, or failed first
	mu        sync.Mutex
	completed int
	events    int
	errors    int
	first     string
	latencies []int64 // microseconds
	allOpenAt int64   // wall clock (ns) when every stream was open; atomic
}

var sentKey = []byte(`"sent":"`)

func (r *run) fail(err error) {
	r.mu.Lock()
	r.errors++
	if r.first == "" {
		r.first = err.Error()
	}
	r.mu.Unlock()
}

// stream runs one watch; it calls opened.Done exactly once.
func (r *run) stream() {
	openDone := false
	markOpen := func() {
		if !openDone {
			openDone = true
			r.opened.Done()
		}
	}
	defer markOpen()
	var lat []int64
	got := 0
	defer func() {
		r.mu.Lock()
		r.events += got
		r.latencies = append(r.latencies, lat...)
		r.mu.Unlock()
	}()

	dialer := &net.Dialer{Deadline: r.deadline}
	conn, err := tls.DialWithDialer(dialer, "tcp", r.addr, r.tls)
	if err != nil {
		r.fail(err)
		return
	}
	defer conn.Close()
	conn.SetDeadline(r.deadline)
	req := "GET " + r.target.RequestURI() + " HTTP/1.1\r\nHost: " + r.target.Host +
		"\r\nUser-Agent: kopilot-perf-watchers\r\nAccept: application/json\r\n"
	if r.token != "" {
		req += "Authorization: Bearer " + r.token + "\r\n"
	}
	if _, err := io.WriteString(conn, req+"\r\n"); err != nil {
		r.fail(err)
		return
	}
	br := bufio.NewReaderSize(conn, 16<<10)
	resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
	if err != nil {
		r.fail(fmt.Errorf("reading the response head: %w", err))
		return
	}
	markOpen()
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		r.fail(fmt.Errorf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(body)))
		return
	}
	lines := bufio.NewScanner(resp.Body)
	lines.Buffer(make([]byte, 0, 4096), 4<<20)
	for lines.Scan() {
		now := time.Now().UnixNano()
		line := lines.Bytes()
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		got++
		i := bytes.Index(line, sentKey)
		if i < 0 {
			continue
		}
		rest := line[i+len(sentKey):]
		j := bytes.IndexByte(rest, '"')
		if j < 0 {
			continue
		}
		// Only events sent once every stream is open count: the first
		// ones race N TLS handshakes for the CPU, which measures the
		// opening burst rather than the path.
		if sent, err := strconv.ParseInt(string(rest[:j]), 10, 64); err == nil {
			if open := atomic.LoadInt64(&r.allOpenAt); open != 0 && sent >= open {
				lat = append(lat, (now-sent)/1000)
			}
		}
	}
	if err := lines.Err(); err != nil {
		r.fail(fmt.Errorf("after %d events: %w", got, err))
		return
	}
	if got < r.expected {
		r.fail(fmt.Errorf("the response ended after %d of %d events", got, r.expected))
		return
	}
	r.mu.Lock()
	r.completed++
	r.mu.Unlock()
}

func percentile(sorted []int64, p float64) int64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	if i < 0 {
		i = 0
	}
	return sorted[i]
}

func raiseNoFile() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

func usage(msg string) {
	fmt.Fprintln(os.Stderr, "watchers: "+msg)
	flag.Usage()
	os.Exit(2)
}

func main() {
	rawURL := flag.String("url", "", "full https URL of the watch, query included")
	caFile := flag.String("ca", "", "PEM CA file for the server")
	token := flag.String("token", "", "bearer token (optional)")
	streams := flag.Int("streams", 1000, "watch streams, each on its own connection")
	timeout := flag.Float64("timeout", 120, "seconds for the whole run")
	flag.Parse()
	if flag.NArg() > 0 {
		usage("unexpected arguments")
	}
	target, err := url.Parse(*rawURL)
	if err != nil || target.Scheme != "https" || target.Host == "" {
		usage("-url must be a full https:// URL")
	}
	if *streams < 1 || *timeout <= 0 {
		usage("-streams and -timeout must be positive")
	}
	pool := x509.NewCertPool()
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil || !pool.AppendCertsFromPEM(pem) {
			usage("no certificates in -ca " + *caFile)
		}
	} else {
		pool = nil // the system's roots
	}
	expected := 10
	if e := target.Query().Get("events"); e != "" {
		if expected, err = strconv.Atoi(e); err != nil {
			usage("events= in -url is not a number")
		}
	}
	addr := target.Host
	if target.Port() == "" {
		addr = net.JoinHostPort(target.Hostname(), "443")
	}
	raiseNoFile()

	start := time.Now()
	r := &run{
		target:   target,
		addr:     addr,
		tls:      &tls.Config{RootCAs: pool, ServerName: target.Hostname(), NextProtos: []string{"http/1.1"}},
		token:    *token,
		expected: expected,
		deadline: start.Add(time.Duration(*timeout * float64(time.Second))),
	}
	var done sync.WaitGroup
	r.opened.Add(*streams)
	done.Add(*streams)
	for i := 0; i < *streams; i++ {
		go func() {
			defer done.Done()
			r.stream()
		}()
	}
	r.opened.Wait()
	atomic.StoreInt64(&r.allOpenAt, time.Now().UnixNano())
	openSeconds := time.Since(start).Seconds()
	fmt.Fprintln(os.Stderr, "all streams open")
	done.Wait()

	sort.Slice(r.latencies, func(i, j int) bool { return r.latencies[i] < r.latencies[j] })
	out := result{
		Streams:     *streams,
		Completed:   r.completed,
		Events:      r.events,
		Errors:      r.errors,
		FirstError:  r.first,
		P50:         percentile(r.latencies, 0.50),
		P99:         percentile(r.latencies, 0.99),
		P999:        percentile(r.latencies, 0.999),
		Max:         percentile(r.latencies, 1),
		OpenSeconds: math.Round(openSeconds*1000) / 1000,
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false) // first_error often has "->" in it
	enc.Encode(out)
}
