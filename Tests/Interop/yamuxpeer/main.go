// yamuxpeer is the real hashicorp/yamux on the other end of Kopilot's mux
// in the interop tests (Tests/KopilotCoreTests/MuxInteropTests.swift).
//
// It speaks yamux over its stdin/stdout, so no socket is needed. It opens
// -open streams, sends each a random payload (up to -max bytes), expects the
// same bytes echoed back (checked by SHA-256), then half-closes; it echoes
// every stream the other side opens until it has served -expect of them.
// Exit status 0 means every check passed; diagnostics go to stderr.
//
// Build offline in GOPATH mode:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode:$TMP go build ./Tests/Interop/yamuxpeer
package main

import (
	"bytes"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// pipeConn joins stdin and stdout into the io.ReadWriteCloser yamux needs.
type pipeConn struct {
	io.Reader
	io.Writer
}

func (pipeConn) Close() error { return os.Stdout.Close() }

func main() {
	role := flag.String("role", "client", "client or server")
	nOpen := flag.Int("open", 10, "streams to open")
	nExpect := flag.Int("expect", 10, "inbound streams to echo before exiting")
	maxSize := flag.Int("max", 300*1024, "largest random payload")
	seed := flag.Int64("seed", 1, "random seed")
	window := flag.Uint("window", 256*1024, "MaxStreamWindowSize")
	flag.Parse()

	cfg := yamux.DefaultConfig()
	cfg.LogOutput = os.Stderr
	cfg.MaxStreamWindowSize = uint32(*window)
	cfg.KeepAliveInterval = 100 * time.Millisecond // exercises our ping answers
	conn := pipeConn{os.Stdin, os.Stdout}
	var sess *yamux.Session
	var err error
	if *role == "server" {
		sess, err = yamux.Server(conn, cfg)
	} else {
		sess, err = yamux.Client(conn, cfg)
	}
	if err != nil {
		fail("session: %v", err)
	}

	var wg sync.WaitGroup
	errs := make(chan error, *nOpen+*nExpect+1)

	// Echo what the other side opens.
	wg.Add(1)
	go func() {
		defer wg.Done()
		var ew sync.WaitGroup
		for i := 0; i < *nExpect; i++ {
			st, err := sess.AcceptStream()
			if err != nil {
				errs <- fmt.Errorf("accept %d: %v", i, err)
				return
			}
			ew.Add(1)
			go func(st *yamux.Stream) {
				defer ew.Done()
				if _, err := io.Copy(st, st); err != nil {
					errs <- fmt.Errorf("echo %d: %v", st.StreamID(), err)
				}
				st.Close()
			}(st)
		}
		ew.Wait()
	}()

	// Open ours and check the echoes.
	rng := rand.New(rand.NewSource(*seed))
	for i := 0; i < *nOpen; i++ {
		payload := make([]byte, rng.Intn(*maxSize+1))
		rng.Read(payload)
		wg.Add(1)
		go func(payload []byte) {
			defer wg.Done()
			st, err := sess.OpenStream()
			if err != nil {
				errs <- fmt.Errorf("open: %v", err)
				return
			}
			want := sha256.Sum256(payload)
			werr := make(chan error, 1)
			go func() {
				_, err := io.Copy(st, bytes.NewReader(payload))
				werr <- err
			}()
			// This yamux version (2019) returns io.EOF from Read once the
			// local side has half-closed and nothing is buffered, so the
			// echo is read in full before our FIN goes out.
			got := make([]byte, len(payload))
			if _, err := io.ReadFull(st, got); err != nil {
				errs <- fmt.Errorf("stream %d read: %v", st.StreamID(), err)
				return
			}
			if err := <-werr; err != nil {
				errs <- fmt.Errorf("stream %d write: %v", st.StreamID(), err)
				return
			}
			if sha256.Sum256(got) != want {
				errs <- fmt.Errorf("stream %d: echo of %d bytes differs", st.StreamID(), len(payload))
			}
			// FIN; the other side then finishes its echo with its FIN.
			if err := st.Close(); err != nil {
				errs <- fmt.Errorf("stream %d close: %v", st.StreamID(), err)
			}
		}(payload)
	}
	wg.Wait()
	close(errs)
	bad := false
	for e := range errs {
		fmt.Fprintln(os.Stderr, "yamuxpeer:", e)
		bad = true
	}
	if bad {
		os.Exit(1)
	}
	// Everything we wrote went through conn.Write before the streams
	// finished, so closing now loses nothing.
	fmt.Fprintln(os.Stderr, "yamuxpeer: ok")
	sess.Close()
	os.Exit(0)
}

func fail(f string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "yamuxpeer: "+f+"\n", a...)
	os.Exit(1)
}
