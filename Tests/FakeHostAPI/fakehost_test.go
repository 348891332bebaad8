package main

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"
)

// ---- pure parts ----

func TestJSONPatch(t *testing.T) {
	for _, c := range []struct {
		note, doc, patch, want string
	}{
		{"add a key", `{"a":1}`, `[{"op":"add","path":"/b","value":2}]`, `{"a":1,"b":2}`},
		{"add replaces a key", `{"a":1}`, `[{"op":"add","path":"/a","value":3}]`, `{"a":3}`},
		{"add into an array", `{"l":[1,3]}`, `[{"op":"add","path":"/l/1","value":2}]`, `{"l":[1,2,3]}`},
		{"append with -", `{"l":[1]}`, `[{"op":"add","path":"/l/-","value":2}]`, `{"l":[1,2]}`},
		{"nested add", `{"m":{"x":{}}}`, `[{"op":"add","path":"/m/x/y","value":"z"}]`, `{"m":{"x":{"y":"z"}}}`},
		{"escaped key ~1 ~0", `{}`, `[{"op":"add","path":"/a~1b~0c","value":1}]`, `{"a/b~c":1}`},
		{"remove", `{"a":1,"b":2}`, `[{"op":"remove","path":"/a"}]`, `{"b":2}`},
		{"remove from an array", `{"l":[1,2,3]}`, `[{"op":"remove","path":"/l/0"}]`, `{"l":[2,3]}`},
		{"replace", `{"token":""}`, `[{"op":"replace","path":"/token","value":"t"}]`, `{"token":"t"}`},
		{"move", `{"a":{"b":1}}`, `[{"op":"move","from":"/a/b","path":"/c"}]`, `{"a":{},"c":1}`},
		{"copy", `{"a":[1]}`, `[{"op":"copy","from":"/a","path":"/b"}]`, `{"a":[1],"b":[1]}`},
		{"test passes", `{"a":"x"}`, `[{"op":"test","path":"/a","value":"x"},{"op":"add","path":"/b","value":1}]`, `{"a":"x","b":1}`},
		{"whole document", `{"a":1}`, `[{"op":"add","path":"","value":{"b":2}}]`, `{"b":2}`},
	} {
		var doc interface{}
		var ops []interface{}
		decodeJSON([]byte(c.doc), &doc)
		decodeJSON([]byte(c.patch), &ops)
		got, err := applyJSONPatch(doc, ops)
		if err != nil {
			t.Errorf("%s: %v", c.note, err)
			continue
		}
		if string(mustJSON(got)) != c.want {
			t.Errorf("%s: got %s, want %s", c.note, mustJSON(got), c.want)
		}
	}
	for _, c := range []struct{ note, doc, patch string }{
		{"remove a missing key", `{}`, `[{"op":"remove","path":"/a"}]`},
		{"replace a missing key", `{}`, `[{"op":"replace","path":"/a","value":1}]`},
		{"index out of range", `{"l":[]}`, `[{"op":"add","path":"/l/2","value":1}]`},
		{"leading zero index", `{"l":[1,2]}`, `[{"op":"remove","path":"/l/01"}]`},
		{"add under a missing parent", `{}`, `[{"op":"add","path":"/a/b","value":1}]`},
		{"test fails", `{"a":1}`, `[{"op":"test","path":"/a","value":2}]`},
		{"unknown op", `{}`, `[{"op":"frob","path":"/a"}]`},
		{"no leading slash", `{}`, `[{"op":"add","path":"a","value":1}]`},
		{"add without value", `{}`, `[{"op":"add","path":"/a"}]`},
	} {
		var doc interface{}
		var ops []interface{}
		decodeJSON([]byte(c.doc), &doc)
		decodeJSON([]byte(c.patch), &ops)
		if _, err := applyJSONPatch(doc, ops); err == nil {
			t.Errorf("%s: no error", c.note)
		}
	}
}

func TestMergePatch(t *testing.T) {
	var doc, patch interface{}
	decodeJSON([]byte(`{"a":{"b":1,"c":2},"l":[1,2],"k":"v"}`), &doc)
	decodeJSON([]byte(`{"a":{"b":null,"d":3},"l":[3],"k":null,"n":{"x":1}}`), &patch)
	if got, want := string(mustJSON(mergePatch(doc, patch))), `{"a":{"c":2,"d":3},"l":[3],"n":{"x":1}}`; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

func TestSelectors(t *testing.T) {
	o := obj{"metadata": obj{"name": "n1", "namespace": "ns", "labels": obj{"kubernetes.io/service-name": "kopilot-hub", "tier": "a"}}}
	for sel, want := range map[string]bool{
		"":                                       true,
		"kubernetes.io/service-name=kopilot-hub": true,
		"kubernetes.io/service-name==kopilot-hub": true,
		"kubernetes.io/service-name=other":        false,
		"tier!=a":                                 false,
		"tier!=b,kubernetes.io/service-name":      true,
		"!tier":                                   false,
		"!missing":                                true,
		"tier in (b, a)":                          true,
		"tier notin (a)":                          false,
		"missing notin (a)":                       true,
	} {
		s, err := parseSelectors(sel, "")
		if err != nil {
			t.Errorf("%q: %v", sel, err)
			continue
		}
		if got := s.matches(o); got != want {
			t.Errorf("label %q: got %v", sel, got)
		}
	}
	for sel, want := range map[string]bool{"metadata.name=n1": true, "metadata.name!=n1": false, "metadata.namespace=ns,metadata.name=n2": false} {
		s, err := parseSelectors("", sel)
		if err != nil || s.matches(o) != want {
			t.Errorf("field %q: err %v", sel, err)
		}
	}
	if _, err := parseSelectors("", "spec.nodeName=x"); err == nil {
		t.Error("unsupported field label accepted")
	}
}

func TestParseTokens(t *testing.T) {
	m, err := parseTokens(strings.NewReader("t1,alice,u1,\"devs,ops\"\nt2,bob,u2\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(m["t1"], userInfo{"alice", "u1", []string{"devs", "ops", "system:authenticated"}}) ||
		!reflect.DeepEqual(m["t2"], userInfo{"bob", "u2", []string{"system:authenticated"}}) {
		t.Fatalf("%+v", m)
	}
	if _, err := parseTokens(strings.NewReader("t1,alice\n")); err == nil {
		t.Fatal("two fields accepted")
	}
}

// ---- over HTTPS ----

const adminToken = "admin-token"

type fixture struct {
	t   *testing.T
	srv *server
	ts  *httptest.Server
}

func newFixture(t *testing.T, tune func(*config)) *fixture {
	cfg := &config{
		tokens: map[string]userInfo{
			adminToken:  {"admin", "u0", []string{"system:masters", "system:authenticated"}},
			"hub-token": {"system:serviceaccount:kopilot-system:kopilot-hub", "u1", []string{"system:serviceaccounts", "system:authenticated"}},
			"dev-token": {"alice", "u2", []string{"devs", "system:authenticated"}},
		},
		bookmarkInterval: time.Hour, history: 1000, webhookClient: &http.Client{Timeout: 10 * time.Second},
		mutatingName: "mutate.test", validatingName: "validate.test",
	}
	if tune != nil {
		tune(cfg)
	}
	f := &fixture{t: t, srv: newServer(cfg)}
	f.ts = httptest.NewTLSServer(f.srv)
	t.Cleanup(f.ts.Close)
	// First (cleanups run last-in first-out): drop open watches, so a
	// failed test does not leave Close waiting for their handlers.
	t.Cleanup(f.ts.CloseClientConnections)
	return f
}

func (f *fixture) req(token, method, path, ct, body string) (int, obj) {
	f.t.Helper()
	req, _ := http.NewRequest(method, f.ts.URL+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	resp, err := f.ts.Client().Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	var o obj
	if err := json.NewDecoder(resp.Body).Decode(&o); err != nil {
		f.t.Fatalf("%s %s: %d, body not JSON: %v", method, path, resp.StatusCode, err)
	}
	return resp.StatusCode, o
}

func (f *fixture) do(method, path, body string) (int, obj) {
	ct := "application/json"
	if method == http.MethodPatch {
		ct = "application/merge-patch+json"
	}
	return f.req(adminToken, method, path, ct, body)
}

// expect checks a response's code and, for errors, its Status reason.
func (f *fixture) expect(code int, reason string, gotCode int, o obj) {
	f.t.Helper()
	if gotCode != code || (reason != "" && (o["kind"] != "Status" || o["reason"] != reason || fmt.Sprint(o["code"]) != fmt.Sprint(code))) {
		f.t.Fatalf("want %d %s, got %d %s", code, reason, gotCode, mustJSON(o))
	}
}

const clusters = "/apis/kopilot.smartx.com/v1alpha1/namespaces/default/clusters"

func TestAuthAndErrors(t *testing.T) {
	f := newFixture(t, nil)
	c, o := f.req("", "GET", "/version", "", "")
	f.expect(401, "Unauthorized", c, o)
	c, o = f.req("wrong", "GET", "/apis", "", "")
	f.expect(401, "Unauthorized", c, o)
	c, o = f.do("GET", "/apis/nope/v1/things", "")
	f.expect(404, "NotFound", c, o)
	c, o = f.do("PUT", clusters, "{}")
	f.expect(405, "MethodNotAllowed", c, o)
	c, o = f.do("GET", "/apis/authentication.k8s.io/v1/tokenreviews", "")
	f.expect(405, "MethodNotAllowed", c, o)
	c, o = f.do("GET", clusters+"/missing", "")
	f.expect(404, "NotFound", c, o)
	c, o = f.do("GET", "/apis/kopilot.smartx.com/v1alpha1", "")
	if c != 200 || len(o["resources"].([]interface{})) != 2 {
		t.Fatalf("discovery: %d %s", c, mustJSON(o))
	}
}

func TestClusterLifecycle(t *testing.T) {
	f := newFixture(t, nil)
	c, o := f.do("POST", clusters, `{"apiVersion":"kopilot.smartx.com/v1alpha1","kind":"Cluster","metadata":{"name":"a"},"token":"t1","status":{"connected":true}}`)
	f.expect(201, "", c, o)
	if o["status"] != nil || str(o, "metadata", "uid") == "" || fmt.Sprint(field(o, "metadata", "generation")) != "1" {
		t.Fatalf("created: %s", mustJSON(o))
	}
	rv1 := str(o, "metadata", "resourceVersion")
	c, o = f.do("POST", clusters, `{"metadata":{"name":"a"},"token":"t1"}`)
	f.expect(409, "AlreadyExists", c, o)

	// PUT: stale resourceVersion -> Conflict; none -> Invalid (a custom resource).
	c, o = f.do("PUT", clusters+"/a", `{"metadata":{"name":"a","resourceVersion":"1"},"token":"t2"}`)
	f.expect(409, "Conflict", c, o)
	c, o = f.do("PUT", clusters+"/a", `{"metadata":{"name":"a"},"token":"t2"}`)
	f.expect(422, "Invalid", c, o)
	c, o = f.do("PUT", clusters+"/a", `{"metadata":{"name":"a","resourceVersion":"`+rv1+`"},"token":"t2","status":{"connected":true}}`)
	f.expect(200, "", c, o)
	if o["token"] != "t2" || o["status"] != nil || fmt.Sprint(field(o, "metadata", "generation")) != "2" || str(o, "metadata", "resourceVersion") == rv1 {
		t.Fatalf("PUT must change the token, ignore status and bump generation: %s", mustJSON(o))
	}

	// /status changes only .status, generation stays.
	c, o = f.do("PATCH", clusters+"/a/status", `{"token":"ignored","status":{"connected":true,"sessions":2}}`)
	f.expect(200, "", c, o)
	if o["token"] != "t2" || field(o, "status", "connected") != true || fmt.Sprint(field(o, "metadata", "generation")) != "2" {
		t.Fatalf("status patch: %s", mustJSON(o))
	}
	rv := str(o, "metadata", "resourceVersion")
	c, o = f.do("PUT", clusters+"/a/status", `{"metadata":{"name":"a","resourceVersion":"`+rv+`"},"status":{"connected":false}}`)
	f.expect(200, "", c, o)
	if field(o, "status", "sessions") != nil || field(o, "status", "connected") != false {
		t.Fatalf("status put: %s", mustJSON(o))
	}
	c, o = f.do("GET", clusters+"/a/status", "")
	f.expect(200, "", c, o)

	// JSON patch, and a merge patch with a stale resourceVersion.
	c, o = f.req(adminToken, "PATCH", clusters+"/a", "application/json-patch+json", `[{"op":"replace","path":"/token","value":"t3"}]`)
	f.expect(200, "", c, o)
	if o["token"] != "t3" || fmt.Sprint(field(o, "metadata", "generation")) != "3" {
		t.Fatalf("json patch: %s", mustJSON(o))
	}
	c, o = f.do("PATCH", clusters+"/a", `{"metadata":{"resourceVersion":"5"},"token":"t4"}`)
	f.expect(409, "Conflict", c, o)
	c, o = f.req(adminToken, "PATCH", clusters+"/a", "application/strategic-merge-patch+json", `{"token":"t4"}`)
	f.expect(415, "UnsupportedMediaType", c, o)
	// A no-op patch keeps the resourceVersion.
	_, before := f.do("GET", clusters+"/a", "")
	_, after := f.do("PATCH", clusters+"/a", `{"token":"t3"}`)
	if str(before, "metadata", "resourceVersion") != str(after, "metadata", "resourceVersion") {
		t.Fatal("no-op patch bumped the resourceVersion")
	}

	// Lists: all namespaces, per namespace, with kind in the items.
	f.do("POST", "/apis/kopilot.smartx.com/v1alpha1/namespaces/other/clusters", `{"metadata":{"name":"b"},"token":"x"}`)
	_, l := f.do("GET", "/apis/kopilot.smartx.com/v1alpha1/clusters", "")
	if len(l["items"].([]interface{})) != 2 || l["kind"] != "ClusterList" || str(l, "metadata", "resourceVersion") == "" {
		t.Fatalf("list: %s", mustJSON(l))
	}
	_, l = f.do("GET", clusters, "")
	if items := l["items"].([]interface{}); len(items) != 1 || items[0].(obj)["kind"] != "Cluster" {
		t.Fatalf("namespaced list: %s", mustJSON(l))
	}

	c, o = f.do("DELETE", clusters+"/a", "")
	f.expect(200, "", c, o)
	if o["kind"] != "Cluster" || o["token"] != "t3" {
		t.Fatalf("delete answers the object: %s", mustJSON(o))
	}
	c, o = f.do("GET", clusters+"/a", "")
	f.expect(404, "NotFound", c, o)
	c, o = f.do("DELETE", clusters+"/a", "")
	f.expect(404, "NotFound", c, o)
}

func TestPagination(t *testing.T) {
	f := newFixture(t, nil)
	for i := 0; i < 5; i++ {
		f.do("POST", "/api/v1/namespaces/default/configmaps", fmt.Sprintf(`{"metadata":{"name":"cm%d"}}`, i))
	}
	var names []string
	cont, rv := "", ""
	for pages := 0; pages < 10; pages++ {
		path := "/api/v1/namespaces/default/configmaps?limit=2"
		if cont != "" {
			path += "&continue=" + cont
		}
		_, l := f.do("GET", path, "")
		if rv == "" {
			rv = str(l, "metadata", "resourceVersion")
		} else if str(l, "metadata", "resourceVersion") != rv {
			t.Fatal("pages disagree on the list's resourceVersion")
		}
		for _, it := range l["items"].([]interface{}) {
			names = append(names, str(it.(obj), "metadata", "name"))
		}
		if cont = str(l, "metadata", "continue"); cont == "" {
			break
		}
	}
	if strings.Join(names, ",") != "cm0,cm1,cm2,cm3,cm4" {
		t.Fatalf("pages gave %v", names)
	}
	c, o := f.do("GET", "/api/v1/namespaces/default/configmaps?limit=2&continue=garbage", "")
	f.expect(400, "BadRequest", c, o)
}

// watch opens a watch and returns its events as they arrive.
func (f *fixture) watch(path string) (<-chan obj, func()) {
	f.t.Helper()
	req, _ := http.NewRequest("GET", f.ts.URL+path, nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := f.ts.Client().Do(req)
	if err != nil || resp.StatusCode != 200 {
		f.t.Fatalf("watch %s: %v %v", path, err, resp)
	}
	ch := make(chan obj, 100)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var ev obj
			if json.Unmarshal(sc.Bytes(), &ev) != nil {
				return
			}
			ch <- ev
		}
	}()
	return ch, func() { resp.Body.Close() }
}

// next is the next event; the deadline only stops a broken test from hanging.
func next(t *testing.T, ch <-chan obj) obj {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("watch ended")
		}
		return ev
	case <-time.After(20 * time.Second):
		t.Fatal("no event")
	}
	return nil
}

func ended(t *testing.T, ch <-chan obj) {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if ok {
			t.Fatalf("more events: %s", mustJSON(ev))
		}
	case <-time.After(20 * time.Second):
		t.Fatal("watch did not end")
	}
}

// skipBookmarks returns the next event that is not a BOOKMARK, nil when
// the stream ends; a stream of nothing but bookmarks fails the test.
func skipBookmarks(t *testing.T, ch <-chan obj) obj {
	t.Helper()
	for i := 0; i < 100; i++ {
		select {
		case ev, ok := <-ch:
			if !ok {
				return nil
			}
			if evType(ev) != "BOOKMARK" {
				return ev
			}
		case <-time.After(20 * time.Second):
			t.Fatal("no event")
		}
	}
	t.Fatal("only bookmarks")
	return nil
}

func evType(ev obj) string  { s, _ := ev["type"].(string); return s }
func evObj(ev obj) obj      { o, _ := ev["object"].(obj); return o }
func evName(ev obj) string  { return str(evObj(ev), "metadata", "name") }
func evRV(ev obj) string    { return str(evObj(ev), "metadata", "resourceVersion") }
func evToken(ev obj) string { return str(evObj(ev), "token") }

func TestWatch(t *testing.T) {
	f := newFixture(t, func(c *config) { c.history = 3 })
	_, a := f.do("POST", clusters, `{"metadata":{"name":"a"},"token":"t1"}`)
	start := str(a, "metadata", "resourceVersion")

	ch, stop := f.watch("/apis/kopilot.smartx.com/v1alpha1/clusters?watch=1&resourceVersion=0")
	if ev := next(t, ch); evType(ev) != "ADDED" || evName(ev) != "a" {
		t.Fatalf("synthetic ADDED: %s", mustJSON(ev))
	}
	f.do("PATCH", clusters+"/a", `{"token":"t2"}`)
	if ev := next(t, ch); evType(ev) != "MODIFIED" || evToken(ev) != "t2" {
		t.Fatalf("MODIFIED: %s", mustJSON(ev))
	}
	_, del := f.do("DELETE", clusters+"/a", "")
	if ev := next(t, ch); evType(ev) != "DELETED" || evRV(ev) != str(del, "metadata", "resourceVersion") {
		t.Fatalf("DELETED: %s", mustJSON(ev))
	}
	stop()

	// From the create's resourceVersion: the two changes after it.
	ch, stop = f.watch("/apis/kopilot.smartx.com/v1alpha1/namespaces/default/clusters?watch=true&resourceVersion=" + start)
	if a, b := next(t, ch), next(t, ch); evType(a) != "MODIFIED" || evType(b) != "DELETED" {
		t.Fatalf("replay: %s %s", mustJSON(a), mustJSON(b))
	}
	stop()

	// Past the history (3 events): HTTP 200 then ERROR 410 Expired.
	f.do("POST", "/api/v1/namespaces/default/configmaps", `{"metadata":{"name":"x"}}`)
	f.do("POST", "/api/v1/namespaces/default/configmaps", `{"metadata":{"name":"y"}}`)
	ch, _ = f.watch("/apis/kopilot.smartx.com/v1alpha1/clusters?watch=1&resourceVersion=" + start)
	if ev := next(t, ch); evType(ev) != "ERROR" || fmt.Sprint(evObj(ev)["code"]) != "410" || evObj(ev)["reason"] != "Expired" {
		t.Fatalf("want ERROR 410: %s", mustJSON(ev))
	}
	ended(t, ch)
}

func TestWatchSelectorsAndTimeout(t *testing.T) {
	f := newFixture(t, nil)
	ch, stop := f.watch("/apis/discovery.k8s.io/v1/namespaces/kopilot-system/endpointslices?watch=1&labelSelector=kubernetes.io%2Fservice-name%3Dkopilot-hub")
	defer stop()
	eps := "/apis/discovery.k8s.io/v1/namespaces/kopilot-system/endpointslices"
	c, o := f.do("POST", eps, `{"metadata":{"name":"other"},"addressType":"IPv4","endpoints":[]}`)
	f.expect(201, "", c, o)
	f.do("POST", eps, `{"metadata":{"name":"hub-1","labels":{"kubernetes.io/service-name":"kopilot-hub"}},"addressType":"IPv4",
		"endpoints":[{"addresses":["127.0.0.1"],"conditions":{"ready":true},"targetRef":{"kind":"Pod","name":"hub-0","namespace":"kopilot-system"}}],
		"ports":[{"name":"peer","port":9443,"protocol":"TCP"}]}`)
	if ev := next(t, ch); evType(ev) != "ADDED" || evName(ev) != "hub-1" {
		t.Fatalf("ADDED hub-1: %s", mustJSON(ev))
	}
	// Moving out of the selection reads as DELETED, back in as ADDED.
	f.do("PATCH", eps+"/hub-1", `{"metadata":{"labels":{"kubernetes.io/service-name":"else"}}}`)
	if ev := next(t, ch); evType(ev) != "DELETED" || evName(ev) != "hub-1" {
		t.Fatalf("DELETED: %s", mustJSON(ev))
	}
	f.do("PATCH", eps+"/hub-1", `{"metadata":{"labels":{"kubernetes.io/service-name":"kopilot-hub"}}}`)
	if ev := next(t, ch); evType(ev) != "ADDED" {
		t.Fatalf("ADDED again: %s", mustJSON(ev))
	}
	c, o = f.do("POST", eps, `{"metadata":{"name":"bad"}}`)
	f.expect(422, "Invalid", c, o)

	// fieldSelector metadata.name on configmaps, and timeoutSeconds ends the stream.
	cms := "/api/v1/namespaces/kopilot-system/configmaps"
	ch2, stop2 := f.watch(cms + "?watch=1&fieldSelector=metadata.name%3Dkopilot-hub&timeoutSeconds=1")
	defer stop2()
	f.do("POST", cms, `{"metadata":{"name":"unrelated"}}`)
	f.do("POST", cms, `{"metadata":{"name":"kopilot-hub"},"data":{"public_addr":"hub:443"}}`)
	if ev := next(t, ch2); evName(ev) != "kopilot-hub" {
		t.Fatalf("field selector: %s", mustJSON(ev))
	}
	ended(t, ch2)
}

func TestBookmarksCompactAndClose(t *testing.T) {
	f := newFixture(t, func(c *config) { c.bookmarkInterval = 20 * time.Millisecond })
	_, a := f.do("POST", clusters, `{"metadata":{"name":"a"},"token":"t1"}`)
	ch, stop := f.watch("/apis/kopilot.smartx.com/v1alpha1/clusters?watch=1&allowWatchBookmarks=true&resourceVersion=" + str(a, "metadata", "resourceVersion"))
	defer stop()
	ev := next(t, ch)
	if evType(ev) != "BOOKMARK" || evObj(ev)["kind"] != "Cluster" || evObj(ev)["apiVersion"] != "kopilot.smartx.com/v1alpha1" || evRV(ev) == "" {
		t.Fatalf("bookmark: %s", mustJSON(ev))
	}
	if len(evObj(ev)["metadata"].(obj)) != 1 {
		t.Fatalf("a bookmark carries only the resourceVersion: %s", mustJSON(ev))
	}
	// A change then a bookmark: the bookmark's resourceVersion is at least the change's.
	_, b := f.do("PATCH", clusters+"/a", `{"token":"t2"}`)
	if ev = next(t, ch); evType(ev) == "BOOKMARK" {
		// One may have been on its way before the change; never after it.
		if evRV(ev) == str(b, "metadata", "resourceVersion") {
			t.Fatal("bookmark at the change's resourceVersion before the change")
		}
		ev = next(t, ch)
	}
	if evType(ev) != "MODIFIED" {
		t.Fatalf("want MODIFIED: %s", mustJSON(ev))
	}
	ev = next(t, ch)
	if evType(ev) != "BOOKMARK" || evRV(ev) != str(b, "metadata", "resourceVersion") {
		t.Fatalf("bookmark after the change: %s, change at %s", mustJSON(ev), str(b, "metadata", "resourceVersion"))
	}

	// Compaction: the open watch gets ERROR 410 and ends; old resourceVersions get 410.
	c, o := f.do("POST", "/_fake/compact", "")
	f.expect(200, "", c, o)
	if ev = skipBookmarks(t, ch); evType(ev) != "ERROR" || fmt.Sprint(evObj(ev)["code"]) != "410" {
		t.Fatalf("want ERROR 410 after compaction: %s", mustJSON(ev))
	}
	ended(t, ch)
	ch, _ = f.watch("/apis/kopilot.smartx.com/v1alpha1/clusters?watch=1&resourceVersion=" + str(a, "metadata", "resourceVersion"))
	if ev = next(t, ch); evType(ev) != "ERROR" {
		t.Fatalf("old resourceVersion after compaction: %s", mustJSON(ev))
	}

	// close-watches ends streams without an error event.
	ch, _ = f.watch("/apis/kopilot.smartx.com/v1alpha1/clusters?watch=1&resourceVersion=" + str(b, "metadata", "resourceVersion"))
	c, o = f.do("POST", "/_fake/close-watches", "")
	f.expect(200, "", c, o)
	if ev = skipBookmarks(t, ch); ev != nil {
		t.Fatalf("close-watches sent %s", mustJSON(ev))
	}
}

func TestReviews(t *testing.T) {
	f := newFixture(t, nil)
	c, o := f.do("POST", "/apis/authentication.k8s.io/v1/tokenreviews", `{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":"dev-token"}}`)
	f.expect(201, "", c, o)
	if field(o, "status", "authenticated") != true || str(o, "status", "user", "username") != "alice" ||
		!reflect.DeepEqual(list(o, "status", "user", "groups"), []interface{}{"devs", "system:authenticated"}) {
		t.Fatalf("token review: %s", mustJSON(o))
	}
	c, o = f.do("POST", "/apis/authentication.k8s.io/v1/tokenreviews", `{"kind":"TokenReview","spec":{"token":"secret-unknown"}}`)
	f.expect(201, "", c, o)
	if field(o, "status", "authenticated") == true || str(o, "status", "error") == "" || strings.Contains(str(o, "status", "error"), "secret-unknown") {
		t.Fatalf("unknown token: %s", mustJSON(o))
	}
	c, o = f.do("POST", "/apis/authentication.k8s.io/v1/tokenreviews", `{"kind":"TokenReview","spec":{}}`)
	f.expect(400, "BadRequest", c, o)

	rbac := "/apis/rbac.authorization.k8s.io/v1/"
	f.do("POST", rbac+"clusterroles", `{"metadata":{"name":"proxy-a"},"rules":[{"nonResourceURLs":["/proxy/default_a/*"],"verbs":["get","list"]}]}`)
	f.do("POST", rbac+"clusterroles", `{"metadata":{"name":"all"},"rules":[{"nonResourceURLs":["*"],"verbs":["*"]}]}`)
	f.do("POST", rbac+"clusterroles", `{"metadata":{"name":"exact"},"rules":[{"nonResourceURLs":["/metrics"],"verbs":["get"]}]}`)
	f.do("POST", rbac+"clusterrolebindings", `{"metadata":{"name":"devs"},"roleRef":{"kind":"ClusterRole","name":"proxy-a"},"subjects":[{"kind":"Group","name":"devs"}]}`)
	f.do("POST", rbac+"clusterrolebindings", `{"metadata":{"name":"sa"},"roleRef":{"kind":"ClusterRole","name":"all"},"subjects":[{"kind":"ServiceAccount","name":"robot","namespace":"ci"}]}`)
	f.do("POST", rbac+"clusterrolebindings", `{"metadata":{"name":"bob"},"roleRef":{"kind":"ClusterRole","name":"exact"},"subjects":[{"kind":"User","name":"bob"}]}`)
	sar := func(user, groups, path, verb string) obj {
		c, o := f.do("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", fmt.Sprintf(
			`{"apiVersion":"authorization.k8s.io/v1","kind":"SubjectAccessReview","spec":{"user":%q,"groups":%s,"nonResourceAttributes":{"path":%q,"verb":%q}}}`,
			user, groups, path, verb))
		f.expect(201, "", c, o)
		return o
	}
	for _, c := range []struct {
		user, groups, path, verb string
		allowed                  bool
	}{
		{"alice", `["devs"]`, "/proxy/default_a/api/v1/pods", "get", true},
		{"alice", `["devs"]`, "/proxy/default_a/api/v1/pods", "create", false},
		{"alice", `["devs"]`, "/proxy/default_b/api", "get", false},
		{"alice", `[]`, "/proxy/default_a/api", "get", false},
		{"system:serviceaccount:ci:robot", `[]`, "/anything", "delete", true},
		{"system:serviceaccount:other:robot", `[]`, "/anything", "delete", false},
		{"bob", `[]`, "/metrics", "get", true},
		{"bob", `[]`, "/metrics/x", "get", false},
		{"root", `["system:masters"]`, "/x", "get", true},
	} {
		o := sar(c.user, c.groups, c.path, c.verb)
		if field(o, "status", "allowed") != c.allowed || field(o, "status", "denied") == true {
			t.Errorf("%s %s %s %s: %s", c.user, c.groups, c.verb, c.path, mustJSON(o["status"]))
		}
	}
	if r := str(sar("alice", `["devs"]`, "/proxy/default_a/x", "get"), "status", "reason"); !strings.Contains(r, `ClusterRoleBinding "devs"`) {
		t.Errorf("reason %q", r)
	}
	c, o = f.do("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", `{"kind":"SubjectAccessReview","spec":{"user":"x"}}`)
	f.expect(422, "Invalid", c, o)
}

func TestFaultsAndCounts(t *testing.T) {
	f := newFixture(t, nil)
	c, o := f.do("POST", "/_fake/faults", `{"pathPrefix":"/apis/authorization.k8s.io","status":503,"count":2}`)
	f.expect(201, "", c, o)
	sar := `{"kind":"SubjectAccessReview","spec":{"user":"x","nonResourceAttributes":{"path":"/","verb":"get"}}}`
	for i := 0; i < 2; i++ {
		c, o = f.do("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", sar)
		f.expect(503, "ServiceUnavailable", c, o)
	}
	c, o = f.do("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", sar)
	f.expect(201, "", c, o)
	f.do("POST", "/_fake/faults", `{"pathPrefix":"/version","status":500}`)
	for i := 0; i < 3; i++ {
		c, o = f.do("GET", "/version", "")
		f.expect(500, "InternalError", c, o)
	}
	f.do("DELETE", "/_fake/faults", "")
	c, o = f.do("GET", "/version", "")
	f.expect(200, "", c, o)
	_, counts := f.do("GET", "/_fake/requests", "")
	if fmt.Sprint(counts["POST /apis/authorization.k8s.io/v1/subjectaccessreviews"]) != "3" || fmt.Sprint(counts["GET /version"]) != "4" {
		t.Fatalf("counts %s", mustJSON(counts))
	}
	c, o = f.do("POST", "/_fake/faults", `{"status":200}`)
	f.expect(400, "BadRequest", c, o)
	c, o = f.do("GET", "/_fake/nothing", "")
	f.expect(404, "NotFound", c, o)
	c, o = f.req("", "GET", "/_fake/requests", "", "")
	f.expect(401, "Unauthorized", c, o)
}

// webhook answers AdmissionReviews the way the hub's webhook will: the
// mutating one fills an empty token, the validating one refuses a short one.
func webhook(t *testing.T, seen chan<- obj) *httptest.Server {
	ts := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var review obj
		if err := decodeJSON(mustJSON(mustDecode(r)), &review); err != nil {
			t.Error(err)
		}
		if r.URL.Query().Get("timeout") != "10s" {
			t.Errorf("webhook query %q", r.URL.RawQuery)
		}
		req := review["request"].(obj)
		seen <- req
		resp := obj{"uid": req["uid"], "allowed": true}
		token := str(req, "object", "token")
		switch r.URL.Path {
		case "/mutate":
			if token == "" {
				resp["patchType"] = "JSONPatch"
				resp["patch"] = base64.StdEncoding.EncodeToString([]byte(`[{"op":"add","path":"/token","value":"filled-by-webhook-0123456789"}]`))
			}
		case "/validate":
			if len(token) < 16 {
				resp["allowed"] = false
				resp["status"] = obj{"code": 422, "reason": "Invalid", "message": "token too short"}
			}
		case "/garbage":
			w.Write([]byte("not json"))
			return
		}
		writeJSON(w, 200, obj{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp})
	}))
	t.Cleanup(ts.Close)
	return ts
}

func mustDecode(r *http.Request) interface{} {
	var v interface{}
	json.NewDecoder(r.Body).Decode(&v)
	return v
}

func TestAdmission(t *testing.T) {
	seen := make(chan obj, 100)
	hook := webhook(t, seen)
	f := newFixture(t, func(c *config) {
		c.mutatingURL, c.validatingURL = hook.URL+"/mutate", hook.URL+"/validate"
		c.webhookClient = hook.Client()
	})
	c, o := f.do("POST", clusters, `{"metadata":{"name":"a"}}`)
	f.expect(201, "", c, o)
	if o["token"] != "filled-by-webhook-0123456789" {
		t.Fatalf("mutating webhook's patch not applied: %s", mustJSON(o))
	}
	m, v := <-seen, <-seen
	if m["operation"] != "CREATE" || m["namespace"] != "default" || m["name"] != "a" || str(m, "userInfo", "username") != "admin" ||
		str(m, "resource", "resource") != "clusters" || str(m, "kind", "kind") != "Cluster" || m["oldObject"] != nil || m["dryRun"] != false || m["uid"] == "" {
		t.Fatalf("mutating request: %s", mustJSON(m))
	}
	if str(v, "object", "token") != "filled-by-webhook-0123456789" {
		t.Fatalf("the validating webhook must see the mutated object: %s", mustJSON(v))
	}
	c, o = f.do("PATCH", clusters+"/a", `{"token":"short"}`)
	f.expect(422, "Invalid", c, o)
	if !strings.Contains(o["message"].(string), `admission webhook "validate.test" denied the request: token too short`) {
		t.Fatalf("denial message: %s", o["message"])
	}
	m = <-seen
	<-seen
	if m["operation"] != "UPDATE" || str(m, "oldObject", "token") != "filled-by-webhook-0123456789" {
		t.Fatalf("update request: %s", mustJSON(m))
	}
	// /status is not admitted.
	c, o = f.do("PATCH", clusters+"/a/status", `{"status":{"connected":true}}`)
	f.expect(200, "", c, o)
	select {
	case r := <-seen:
		t.Fatalf("status update went to the webhook: %s", mustJSON(r))
	default:
	}

	// Unreachable or garbage webhooks: 500 InternalError (failurePolicy Fail).
	f.srv.cfg.validatingURL = "https://127.0.0.1:1/validate"
	c, o = f.do("POST", clusters, `{"metadata":{"name":"b"},"token":"0123456789abcdef0123"}`)
	f.expect(500, "InternalError", c, o)
	if !strings.Contains(o["message"].(string), `failed calling webhook "validate.test"`) {
		t.Fatalf("message: %s", o["message"])
	}
	<-seen
	f.srv.cfg.validatingURL = hook.URL + "/garbage"
	c, o = f.do("POST", clusters, `{"metadata":{"name":"b"},"token":"0123456789abcdef0123"}`)
	f.expect(500, "InternalError", c, o)
	if _, ok := f.srv.store.get(resourceByKind("Cluster"), "default", "b"); ok {
		t.Fatal("refused object was stored")
	}
}
