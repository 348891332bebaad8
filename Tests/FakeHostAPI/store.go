package main

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"sync"
	"time"
)

// event is one change, kept in the history the way etcd and the watch
// cache keep it: the object after the change and, for MODIFIED and
// DELETED, the one before (selectors decide on both).
type event struct {
	res  *resource
	typ  string // ADDED, MODIFIED, DELETED
	old  obj
	cur  obj
	rv   int64
	last bool // not a change: the watcher is told to stop (compaction or close-watches)
	gone bool // with last: the history was compacted, send 410 first
}

// watcher is one open watch; its queue is written under store.mu and read
// by the watch's goroutine.
type watcher struct {
	res    *resource
	ns     string
	queue  []event
	notify chan struct{}
}

// store is the etcd of the fake: objects per resource, one global
// resourceVersion counter, a bounded history of events and the open
// watches. All methods are safe from any goroutine and return copies.
type store struct {
	mu       sync.Mutex
	rv       int64
	objs     map[*resource]map[string]obj
	history  []event
	max      int
	expired  int64 // watches from a resourceVersion below this get 410
	watchers map[*watcher]struct{}
}

// firstRV is where resourceVersions start, so small numbers in tests are
// clearly "before everything".
const firstRV = 100

func newStore(history int) *store {
	return &store{rv: firstRV, objs: map[*resource]map[string]obj{}, max: history, watchers: map[*watcher]struct{}{}}
}

func key(ns, name string) string { return ns + "/" + name }

// clone deep-copies a decoded JSON value.
func clone(o obj) obj {
	if o == nil {
		return nil
	}
	var out obj
	if err := decodeJSON(mustJSON(o), &out); err != nil {
		panic(err)
	}
	return out
}

func newUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

func rvString(rv int64) string { return strconv.FormatInt(rv, 10) }

// record appends an event to the history and every matching watcher's
// queue; the caller holds s.mu and has already bumped s.rv.
func (s *store) record(ev event) {
	s.history = append(s.history, ev)
	if len(s.history) > s.max {
		drop := len(s.history) - s.max
		// Everything up to the newest forgotten event is gone: a watch must
		// start at or after it.
		s.expired = s.history[drop-1].rv
		s.history = append([]event(nil), s.history[drop:]...)
	}
	for w := range s.watchers {
		if w.res == ev.res {
			w.push(ev)
		}
	}
}

func (w *watcher) push(ev event) {
	w.queue = append(w.queue, ev)
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

func (s *store) get(res *resource, ns, name string) (obj, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.objs[res][key(ns, name)]
	return clone(o), ok
}

// list returns the objects of res (in ns, or all when ns is ""), in key
// order as etcd returns them, and the current resourceVersion.
func (s *store) list(res *resource, ns string) ([]obj, int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []obj
	for _, o := range s.objs[res] {
		if ns == "" || str(o, "metadata", "namespace") == ns {
			out = append(out, clone(o))
		}
	}
	sortObjs(out)
	return out, s.rv
}

func sortObjs(l []obj) {
	sort.Slice(l, func(i, j int) bool {
		return key(str(l[i], "metadata", "namespace"), str(l[i], "metadata", "name")) <
			key(str(l[j], "metadata", "namespace"), str(l[j], "metadata", "name"))
	})
}

// create stores o (name and namespace already set) with a fresh uid,
// creationTimestamp, resourceVersion and, for custom resources, generation 1.
func (s *store) create(res *resource, o obj) (obj, error) {
	m := meta(o)
	ns, _ := m["namespace"].(string)
	name, _ := m["name"].(string)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.objs[res] == nil {
		s.objs[res] = map[string]obj{}
	}
	if _, ok := s.objs[res][key(ns, name)]; ok {
		return nil, errAlreadyExists(res, name)
	}
	s.rv++
	m["uid"] = newUID()
	m["creationTimestamp"] = time.Now().UTC().Format(time.RFC3339)
	m["resourceVersion"] = rvString(s.rv)
	if res.custom {
		m["generation"] = json.Number("1")
	} else {
		delete(m, "generation")
	}
	s.objs[res][key(ns, name)] = o
	s.record(event{res: res, typ: "ADDED", cur: clone(o), rv: s.rv})
	return clone(o), nil
}

// replace stores o in place of the object at resourceVersion prevRV. It
// returns a Conflict when the object changed since (the caller decides
// whether to retry), NotFound when it is gone. A change that leaves the
// object as it was is not written and keeps its resourceVersion, as the
// apiserver skips no-op updates.
func (s *store) replace(res *resource, ns, name string, prevRV string, o obj) (obj, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.objs[res][key(ns, name)]
	if !ok {
		return nil, errNotFound(res, name)
	}
	if str(cur, "metadata", "resourceVersion") != prevRV {
		return nil, errConflict(res, name)
	}
	meta(o)["resourceVersion"] = prevRV
	if reflect.DeepEqual(normalize(cur), normalize(o)) {
		return clone(cur), nil
	}
	s.rv++
	meta(o)["resourceVersion"] = rvString(s.rv)
	s.objs[res][key(ns, name)] = o
	s.record(event{res: res, typ: "MODIFIED", old: clone(cur), cur: clone(o), rv: s.rv})
	return clone(o), nil
}

// normalize makes numbers comparable whatever their source (json.Number
// from a body, or float64).
func normalize(o obj) interface{} {
	var out interface{}
	json.Unmarshal(mustJSON(o), &out)
	return out
}

// remove deletes the object; preconditionRV/UID ("" = none) must match.
// The deleted object carries the deletion's resourceVersion, as etcd3's
// watcher reports it.
func (s *store) remove(res *resource, ns, name, preconditionUID, preconditionRV string) (obj, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.objs[res][key(ns, name)]
	if !ok {
		return nil, errNotFound(res, name)
	}
	if preconditionUID != "" && preconditionUID != str(cur, "metadata", "uid") {
		return nil, &apiError{code: 409, reason: "Conflict", message: fmt.Sprintf(
			"Operation cannot be fulfilled on %s %q: Precondition failed: UID in precondition: %s, UID in object meta: %s",
			res.qualified(), name, preconditionUID, str(cur, "metadata", "uid"))}
	}
	if preconditionRV != "" && preconditionRV != str(cur, "metadata", "resourceVersion") {
		return nil, &apiError{code: 409, reason: "Conflict", message: fmt.Sprintf(
			"Operation cannot be fulfilled on %s %q: Precondition failed: ResourceVersion in precondition: %s, ResourceVersion in object meta: %s",
			res.qualified(), name, preconditionRV, str(cur, "metadata", "resourceVersion"))}
	}
	delete(s.objs[res], key(ns, name))
	s.rv++
	gone := clone(cur)
	meta(gone)["resourceVersion"] = rvString(s.rv)
	s.record(event{res: res, typ: "DELETED", old: clone(cur), cur: gone, rv: s.rv})
	return clone(gone), nil
}

// errTooOld is what a watch from a forgotten resourceVersion gets.
func (s *store) errTooOld(rv int64) *apiError {
	return errExpired(fmt.Sprintf("too old resource version: %d (%d)", rv, s.expired))
}

// watch opens a watch on res from resourceVersion from ("" or "0": first
// a synthetic ADDED for every current object). Events queued on the
// watcher include, in order, everything after from that the history
// holds, then every later change. A from older than the history gives
// 410 Expired.
func (s *store) watch(res *resource, ns string, from string) (*watcher, int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := &watcher{res: res, ns: ns, notify: make(chan struct{}, 1)}
	start := s.rv
	if from == "" || from == "0" {
		var objs []obj
		for _, o := range s.objs[res] {
			objs = append(objs, clone(o))
		}
		sortObjs(objs)
		for _, o := range objs {
			w.queue = append(w.queue, event{res: res, typ: "ADDED", cur: o, rv: s.rv})
		}
	} else {
		n, err := strconv.ParseInt(from, 10, 64)
		if err != nil || n < 0 {
			return nil, 0, errBadRequest("invalid resource version %q", from)
		}
		if n < s.expired {
			return nil, 0, s.errTooOld(n)
		}
		for _, ev := range s.history {
			if ev.rv > n && ev.res == res {
				w.queue = append(w.queue, ev)
			}
		}
		if n > start {
			start = n
		}
	}
	s.watchers[w] = struct{}{}
	if len(w.queue) > 0 {
		w.notify <- struct{}{}
	}
	return w, start, nil
}

func (s *store) unwatch(w *watcher) {
	s.mu.Lock()
	delete(s.watchers, w)
	s.mu.Unlock()
}

// next takes the watcher's queued events. idleRV is the store's
// resourceVersion when the queue was empty (every change up to it has
// been delivered to this watcher), else 0.
func (s *store) next(w *watcher) (evs []event, idleRV int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	evs, w.queue = w.queue, nil
	if len(evs) == 0 {
		idleRV = s.rv
	}
	return evs, idleRV
}

// compact forgets the whole history: open watches get the 410 ERROR event
// and end; later watches from older resourceVersions get 410.
func (s *store) compact() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.history = nil
	s.expired = s.rv
	for w := range s.watchers {
		w.push(event{last: true, gone: true})
		delete(s.watchers, w)
	}
	return s.rv
}

// closeWatches ends every open watch cleanly, as a watch timeout does.
func (s *store) closeWatches() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.watchers)
	for w := range s.watchers {
		w.push(event{last: true})
		delete(s.watchers, w)
	}
	return n
}
