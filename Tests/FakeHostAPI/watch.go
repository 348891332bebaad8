package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// eventJSON is metav1.WatchEvent on the wire, "type" first.
type eventJSON struct {
	Type   string      `json:"type"`
	Object interface{} `json:"object"`
}

// serveWatch streams metav1.WatchEvents, one JSON document per line in a
// chunked 200 response, the way the watch cache does:
//   - resourceVersion "" or "0": a synthetic ADDED for every object first,
//     then changes; a number: the changes after it, from the history;
//   - a resourceVersion older than the history: HTTP 200, then one ERROR
//     event carrying a 410 Expired Status, then the end;
//   - allowWatchBookmarks: a BOOKMARK every --bookmark-interval whose object
//     carries only kind, apiVersion and metadata.resourceVersion, sent only
//     when every change up to that resourceVersion has been sent;
//   - label and field selectors decide on the object before and after a
//     change: leaving the selection is a DELETED, entering it an ADDED;
//   - timeoutSeconds, POST /_fake/close-watches: the stream ends cleanly;
//     POST /_fake/compact: ERROR 410, then the end.
func (s *server) serveWatch(w http.ResponseWriter, r *http.Request, res *resource, ns string) {
	q := r.URL.Query()
	sel, err := parseSelectors(q.Get("labelSelector"), q.Get("fieldSelector"))
	if err != nil {
		writeError(w, err)
		return
	}
	flusher, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache, private")
	wt, lastRV, err := s.store.watch(res, ns, q.Get("resourceVersion"))
	if e, ok := err.(*apiError); ok && e.code == http.StatusGone {
		w.WriteHeader(http.StatusOK)
		enc.Encode(eventJSON{"ERROR", statusBody(e.code, e.reason, e.message, nil)})
		return
	}
	if err != nil {
		w.Header().Del("Cache-Control")
		writeError(w, err)
		return
	}
	defer s.store.unwatch(wt)
	w.WriteHeader(http.StatusOK)
	if flusher != nil {
		flusher.Flush()
	}
	asTable := wantsTable(r)
	send := func(typ string, o obj) bool {
		var payload interface{} = o
		if asTable {
			payload = s.table(r, res, []obj{o}, str(o, "metadata", "resourceVersion"), true)
		}
		if err := enc.Encode(eventJSON{typ, payload}); err != nil {
			return false
		}
		if flusher != nil {
			flusher.Flush()
		}
		return true
	}
	visible := func(o obj) bool {
		return o != nil && (ns == "" || str(o, "metadata", "namespace") == ns) && sel.matches(o)
	}
	// deliver sends what one event means to this watch; false: stop.
	deliver := func(ev event) bool {
		if ev.last {
			if ev.gone {
				enc.Encode(eventJSON{"ERROR", statusBody(http.StatusGone, "Expired",
					fmt.Sprintf("too old resource version: %d (%d)", lastRV, s.compactedRV()), nil)})
			}
			return false
		}
		was, is := visible(ev.old), visible(ev.cur)
		ok := true
		switch {
		case ev.typ == "ADDED" && is:
			ok = send("ADDED", ev.cur)
		case ev.typ == "MODIFIED" && was && is:
			ok = send("MODIFIED", ev.cur)
		case ev.typ == "MODIFIED" && is:
			ok = send("ADDED", ev.cur)
		case ev.typ == "MODIFIED" && was:
			gone := clone(ev.old)
			meta(gone)["resourceVersion"] = rvString(ev.rv)
			ok = send("DELETED", gone)
		case ev.typ == "DELETED" && was:
			ok = send("DELETED", ev.cur)
		}
		if ev.rv > lastRV {
			lastRV = ev.rv
		}
		return ok
	}
	// drain sends everything queued; with bookmark, also a BOOKMARK when
	// the queue was empty (the watcher has seen every change so far).
	drain := func(bookmark bool) bool {
		evs, idleRV := s.store.next(wt)
		for _, ev := range evs {
			if !deliver(ev) {
				return false
			}
		}
		if bookmark && idleRV > 0 && !asTable {
			if idleRV > lastRV {
				lastRV = idleRV
			}
			return send("BOOKMARK", obj{"kind": res.kind, "apiVersion": res.groupVersion(),
				"metadata": obj{"resourceVersion": rvString(lastRV)}})
		}
		return true
	}

	var tick <-chan time.Time
	if b := q.Get("allowWatchBookmarks"); (b == "true" || b == "1") && s.cfg.bookmarkInterval > 0 {
		t := time.NewTicker(s.cfg.bookmarkInterval)
		defer t.Stop()
		tick = t.C
	}
	var timeout <-chan time.Time
	if t, err := strconv.Atoi(q.Get("timeoutSeconds")); err == nil && t > 0 {
		tm := time.NewTimer(time.Duration(t) * time.Second)
		defer tm.Stop()
		timeout = tm.C
	}
	for {
		select {
		case <-wt.notify:
			if !drain(false) {
				return
			}
		case <-tick:
			if !drain(true) {
				return
			}
		case <-timeout:
			return
		case <-r.Context().Done():
			return
		}
	}
}

func (s *server) compactedRV() int64 {
	s.store.mu.Lock()
	defer s.store.mu.Unlock()
	return s.store.expired
}
