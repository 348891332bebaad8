package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// eventJSON is metav1.WatchEvent on the wire: "type" first, as the apiserver writes it.
type eventJSON struct {
	Type   string      `json:"type"`
	Object interface{} `json:"object"`
}

// serveWatch streams watch events (metav1.WatchEvent, one JSON document
// each, newline-separated, in a chunked response that stays open).
//
// resourceVersion semantics, as the watch cache implements them:
//   - "" or "0": start with a synthetic ADDED event for every object;
//   - a number: only changes after it;
//   - "1" or a number below --compacted-before: HTTP 200 and a single ERROR
//     event with a 410 Expired Status, then the stream ends.
//
// With a Table Accept header each event's object is a one-row Table.
func (s *server) serveWatch(w http.ResponseWriter, r *http.Request, res *resource, ns string) {
	q := r.URL.Query()
	rv := q.Get("resourceVersion")
	flusher, _ := w.(http.Flusher)
	asTable := wantsTable(r)

	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache, private")
	enc := json.NewEncoder(w)

	if n, err := strconv.ParseInt(rv, 10, 64); err == nil && rv != "0" && (n == 1 || n < s.cfg.compactedBefore) {
		w.WriteHeader(http.StatusOK)
		enc.Encode(eventJSON{"ERROR", statusBody(http.StatusGone, "Expired",
			fmt.Sprintf("too old resource version: %s (%d)", rv, firstRV), nil)})
		return
	}
	selector := q.Get("fieldSelector")
	if _, err := filter(nil, selector); err != nil {
		writeStatus(w, http.StatusBadRequest, "BadRequest", err.Error(), nil)
		return
	}

	wt, snapshot := s.store.watch(res.name, ns)
	defer s.store.unwatch(wt)
	w.WriteHeader(http.StatusOK)
	if flusher != nil {
		flusher.Flush()
	}

	send := func(typ string, obj object) bool {
		if kept, _ := filter([]object{obj}, selector); len(kept) == 0 {
			return true
		}
		var payload interface{} = obj
		if asTable {
			payload = s.table(r, res, []object{obj}, obj.meta().ResourceVersion, true)
		}
		if err := enc.Encode(eventJSON{typ, payload}); err != nil {
			return false
		}
		if flusher != nil {
			flusher.Flush()
		}
		return true
	}
	if rv == "" || rv == "0" {
		for _, obj := range snapshot {
			if !send("ADDED", obj) {
				return
			}
		}
	}

	// timeoutSeconds is honoured (client-go's reflectors send it); kubectl
	// get -w sends none and the watch lasts until the client hangs up.
	var timeout <-chan time.Time
	if t, err := strconv.Atoi(q.Get("timeoutSeconds")); err == nil && t > 0 {
		timeout = time.After(time.Duration(t) * time.Second)
	}
	for {
		select {
		case ev, ok := <-wt.ch:
			if !ok || !send(ev.Type, ev.Object) {
				return
			}
		case <-timeout:
			return
		case <-r.Context().Done():
			return
		}
	}
}

// serveLog writes a pod's log as text/plain. follow=true keeps the chunked
// response open and writes a line every 100 ms until the client goes away
// or --log-lines lines were written.
func (s *server) serveLog(w http.ResponseWriter, r *http.Request, ns, name string) {
	q := r.URL.Query()
	follow := q.Get("follow") == "true" || q.Get("follow") == "1"
	w.Header().Set("Content-Type", "text/plain")
	flusher, _ := w.(http.Flusher)
	line := func(i int) string {
		return fmt.Sprintf("%s INFO %s/%s line %d\n", time.Now().UTC().Format(time.RFC3339Nano), ns, name, i)
	}
	const history = 5 // lines "already logged" when the request arrives
	start := 1
	if t, err := strconv.Atoi(q.Get("tailLines")); err == nil && t >= 0 && t < history {
		start = history - t + 1
	}
	w.WriteHeader(http.StatusOK)
	for i := start; i <= history; i++ {
		fmt.Fprint(w, line(i))
	}
	if flusher != nil {
		flusher.Flush()
	}
	if !follow {
		return
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for i := history + 1; s.cfg.logLines == 0 || i <= s.cfg.logLines; i++ {
		select {
		case <-tick.C:
		case <-r.Context().Done():
			return
		}
		if _, err := fmt.Fprint(w, line(i)); err != nil {
			return
		}
		if flusher != nil {
			flusher.Flush()
		}
	}
}
