package main

import (
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"
)

// obj is an object as JSON decodes it (numbers as json.Number).
type obj = map[string]interface{}

// resource describes one REST resource: discovery, storage and tables.
type resource struct {
	group, version, name, singular, kind string
	namespaced                           bool
	verbs                                []string
	shortNames                           []string
	// status: a status subresource (the main resource ignores .status on
	// writes, /status changes only .status).
	status bool
	// custom: a CustomResourceDefinition's resource (unconditional PUT is
	// refused, list items carry kind and apiVersion, strategic merge patch is
	// refused, generation is kept).
	custom bool
	// admission: CREATE and UPDATE go through the --mutating-webhook and
	// --validating-webhook.
	admission bool
	// review: create-only virtual resources (TokenReview, SubjectAccessReview).
	review  bool
	columns []column
	cells   func(o obj, now time.Time) []interface{}
}

// column is a metav1.TableColumnDefinition.
type column struct {
	Name        string `json:"name"`
	Type        string `json:"type"`
	Format      string `json:"format"`
	Description string `json:"description"`
	Priority    int    `json:"priority"`
}

func (r *resource) groupVersion() string {
	if r.group == "" {
		return r.version
	}
	return r.group + "/" + r.version
}

// qualified is how apiserver messages name a resource: "clusters.kopilot.smartx.com", "configmaps".
func (r *resource) qualified() string {
	if r.group == "" {
		return r.name
	}
	return r.name + "." + r.group
}

var (
	crudVerbs   = []string{"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}
	nameColumn  = column{"Name", "string", "name", "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: http://kubernetes.io/docs/user-guide/identifiers#names", 0}
	ageColumn   = column{"Age", "string", "", "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata", 0}
	nameAgeCell = func(o obj, now time.Time) []interface{} {
		return []interface{}{str(o, "metadata", "name"), age(str(o, "metadata", "creationTimestamp"), now)}
	}
)

var resources = []*resource{
	{
		group: "kopilot.smartx.com", version: "v1alpha1", name: "clusters", singular: "cluster", kind: "Cluster",
		namespaced: true, verbs: crudVerbs, status: true, custom: true, admission: true,
		// The CRD's additionalPrinterColumns: Connected (.status.connected,
		// boolean), Sessions (.status.sessions, integer), Age
		// (.metadata.creationTimestamp, date), after the implicit Name.
		columns: []column{
			nameColumn,
			{"Connected", "boolean", "", "Whether an agent of this cluster holds a session with a hub replica", 0},
			{"Sessions", "integer", "", "Agent sessions open across the hub replicas", 0},
			{"Age", "date", "", "", 0},
		},
		cells: func(o obj, now time.Time) []interface{} {
			return []interface{}{str(o, "metadata", "name"), field(o, "status", "connected"), field(o, "status", "sessions"),
				age(str(o, "metadata", "creationTimestamp"), now)}
		},
	},
	{
		group: "discovery.k8s.io", version: "v1", name: "endpointslices", singular: "endpointslice", kind: "EndpointSlice",
		namespaced: true, verbs: crudVerbs,
		columns: []column{nameColumn, {"AddressType", "string", "", "", 0}, {"Ports", "string", "", "", 0}, {"Endpoints", "string", "", "", 0}, ageColumn},
		cells: func(o obj, now time.Time) []interface{} {
			var ports, addrs []string
			for _, p := range list(o, "ports") {
				if pm, ok := p.(obj); ok {
					ports = append(ports, fmt.Sprint(pm["port"]))
				}
			}
			for _, e := range list(o, "endpoints") {
				if em, ok := e.(obj); ok {
					for _, a := range list(em, "addresses") {
						addrs = append(addrs, fmt.Sprint(a))
					}
				}
			}
			return []interface{}{str(o, "metadata", "name"), str(o, "addressType"), joinOrNone(ports), joinOrNone(addrs),
				age(str(o, "metadata", "creationTimestamp"), now)}
		},
	},
	{
		group: "", version: "v1", name: "configmaps", singular: "configmap", kind: "ConfigMap",
		namespaced: true, verbs: crudVerbs, shortNames: []string{"cm"},
		columns: []column{nameColumn, {"Data", "string", "", "Data contains the configuration data.", 0}, ageColumn},
		cells: func(o obj, now time.Time) []interface{} {
			n := 0
			if d, ok := o["data"].(obj); ok {
				n += len(d)
			}
			if d, ok := o["binaryData"].(obj); ok {
				n += len(d)
			}
			return []interface{}{str(o, "metadata", "name"), n, age(str(o, "metadata", "creationTimestamp"), now)}
		},
	},
	{
		group: "rbac.authorization.k8s.io", version: "v1", name: "clusterroles", singular: "clusterrole", kind: "ClusterRole",
		verbs: crudVerbs, columns: []column{nameColumn, ageColumn}, cells: nameAgeCell,
	},
	{
		group: "rbac.authorization.k8s.io", version: "v1", name: "clusterrolebindings", singular: "clusterrolebinding", kind: "ClusterRoleBinding",
		verbs: crudVerbs, columns: []column{nameColumn, ageColumn}, cells: nameAgeCell,
	},
	{group: "authentication.k8s.io", version: "v1", name: "tokenreviews", singular: "tokenreview", kind: "TokenReview", verbs: []string{"create"}, review: true},
	{group: "authorization.k8s.io", version: "v1", name: "subjectaccessreviews", singular: "subjectaccessreview", kind: "SubjectAccessReview", verbs: []string{"create"}, review: true},
}

func findResource(groupVersion, name string) *resource {
	for _, r := range resources {
		if r.groupVersion() == groupVersion && r.name == name {
			return r
		}
	}
	return nil
}

func resourceByKind(kind string) *resource {
	for _, r := range resources {
		if r.kind == kind {
			return r
		}
	}
	return nil
}

// ---- field access on decoded JSON ----

func field(o obj, path ...string) interface{} {
	var cur interface{} = o
	for _, p := range path {
		m, ok := cur.(obj)
		if !ok {
			return nil
		}
		cur = m[p]
	}
	return cur
}

func str(o obj, path ...string) string {
	s, _ := field(o, path...).(string)
	return s
}

func list(o obj, path ...string) []interface{} {
	l, _ := field(o, path...).([]interface{})
	return l
}

func meta(o obj) obj {
	m, ok := o["metadata"].(obj)
	if !ok {
		m = obj{}
		o["metadata"] = m
	}
	return m
}

func joinOrNone(s []string) string {
	if len(s) == 0 {
		return "<unset>"
	}
	return strings.Join(s, ",")
}

// age renders like the apiserver's duration.HumanDuration: 45s, 12m, 3h, 5d.
func age(ts string, now time.Time) string {
	t, err := time.Parse(time.RFC3339, ts)
	if err != nil {
		return "<unknown>"
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return "0s"
	case d < 2*time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < 10*time.Minute:
		if sec := int(d.Seconds()) % 60; sec != 0 {
			return fmt.Sprintf("%dm%ds", int(d.Minutes()), sec)
		}
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 3*time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 8*time.Hour:
		if m := int(d.Minutes()) % 60; m != 0 {
			return fmt.Sprintf("%dh%dm", int(d.Hours()), m)
		}
		return fmt.Sprintf("%dh", int(d.Hours()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	default:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
}

// ---- discovery ----

func groupsServed() []string {
	seen := map[string]bool{}
	var out []string
	for _, r := range resources {
		if r.group != "" && !seen[r.group] {
			seen[r.group] = true
			out = append(out, r.group)
		}
	}
	sort.Strings(out)
	return out
}

func apiGroup(g string) obj {
	for _, r := range resources {
		if r.group == g {
			gv := obj{"groupVersion": r.groupVersion(), "version": r.version}
			return obj{"name": g, "versions": []interface{}{gv}, "preferredVersion": gv}
		}
	}
	return nil
}

func resourceList(gv string) obj {
	var out []interface{}
	for _, r := range resources {
		if r.groupVersion() != gv {
			continue
		}
		e := obj{"name": r.name, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind, "verbs": r.verbs}
		if len(r.shortNames) > 0 {
			e["shortNames"] = r.shortNames
		}
		if !r.review {
			e["storageVersionHash"] = "fake" + r.singular
		}
		out = append(out, e)
		if r.status {
			out = append(out, obj{"name": r.name + "/status", "singularName": "", "namespaced": r.namespaced, "kind": r.kind,
				"verbs": []string{"get", "patch", "update"}})
		}
	}
	if out == nil {
		return nil
	}
	return obj{"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}
}

// route dispatches discovery and the REST paths.
func (s *server) route(w http.ResponseWriter, r *http.Request, user userInfo) {
	p := strings.TrimSuffix(r.URL.Path, "/")
	parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
	switch {
	case p == "/version":
		onlyGet(w, r, func() {
			writeJSON(w, 200, map[string]string{
				"major": "1", "minor": "30", "gitVersion": "v1.30.0-fakehost", "gitCommit": "0000000000000000000000000000000000000000",
				"gitTreeState": "clean", "buildDate": "2024-04-17T00:00:00Z", "goVersion": "go1.22.2", "compiler": "gc", "platform": "linux/amd64",
			})
		})
	case p == "/healthz" || p == "/readyz" || p == "/livez":
		onlyGet(w, r, func() {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Write([]byte("ok"))
		})
	case p == "/api":
		// Plain JSON even when aggregated discovery is asked for: client-go
		// reads the Content-Type and falls back to the per-version lists.
		onlyGet(w, r, func() {
			writeJSON(w, 200, obj{"kind": "APIVersions", "versions": []string{"v1"},
				"serverAddressByClientCIDRs": []obj{{"clientCIDR": "0.0.0.0/0", "serverAddress": r.Host}}})
		})
	case p == "/apis":
		onlyGet(w, r, func() {
			var groups []interface{}
			for _, g := range groupsServed() {
				groups = append(groups, apiGroup(g))
			}
			writeJSON(w, 200, obj{"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
		})
	case p == "/api/v1":
		onlyGet(w, r, func() { writeJSON(w, 200, resourceList("v1")) })
	case len(parts) == 2 && parts[0] == "apis" && apiGroup(parts[1]) != nil:
		onlyGet(w, r, func() {
			g := apiGroup(parts[1])
			g["kind"], g["apiVersion"] = "APIGroup", "v1"
			writeJSON(w, 200, g)
		})
	case len(parts) == 3 && parts[0] == "apis" && resourceList(parts[1]+"/"+parts[2]) != nil:
		onlyGet(w, r, func() { writeJSON(w, 200, resourceList(parts[1]+"/"+parts[2])) })
	case len(parts) >= 3 && parts[0] == "api" && parts[1] == "v1":
		s.serveREST(w, r, user, "v1", parts[2:])
	case len(parts) >= 4 && parts[0] == "apis":
		s.serveREST(w, r, user, parts[1]+"/"+parts[2], parts[3:])
	default:
		notFoundPath(w)
	}
}

func onlyGet(w http.ResponseWriter, r *http.Request, f func()) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		methodNotAllowed(w)
		return
	}
	f()
}

// serveREST handles what follows /api/v1 or /apis/G/V:
// RES | RES/NAME[/SUB] | namespaces/NS/RES[/NAME[/SUB]].
func (s *server) serveREST(w http.ResponseWriter, r *http.Request, user userInfo, gv string, parts []string) {
	var ns, resName, name, sub string
	if parts[0] == "namespaces" && len(parts) >= 3 {
		ns, parts = parts[1], parts[2:]
	}
	if len(parts) > 3 || parts[0] == "" {
		notFoundPath(w)
		return
	}
	resName = parts[0]
	if len(parts) > 1 {
		name = parts[1]
	}
	if len(parts) > 2 {
		sub = parts[2]
	}
	res := findResource(gv, resName)
	if res == nil || (ns != "" && !res.namespaced) || (res.namespaced && ns == "" && name != "") || (sub != "" && !(sub == "status" && res.status)) {
		notFoundPath(w)
		return
	}
	if res.review {
		if name != "" || r.Method != http.MethodPost {
			methodNotAllowed(w)
			return
		}
		s.serveReview(w, r, res)
		return
	}
	q := r.URL.Query()
	switch {
	case name == "" && r.Method == http.MethodGet && (q.Get("watch") == "1" || q.Get("watch") == "true"):
		s.serveWatch(w, r, res, ns)
	case name == "" && r.Method == http.MethodGet:
		s.serveList(w, r, res, ns)
	case name == "" && r.Method == http.MethodPost && ns == "" && res.namespaced:
		methodNotAllowed(w)
	case name == "" && r.Method == http.MethodPost:
		s.serveCreate(w, r, user, res, ns)
	case name != "" && r.Method == http.MethodGet:
		o, ok := s.store.get(res, ns, name)
		if !ok {
			writeError(w, errNotFound(res, name))
			return
		}
		if wantsTable(r) {
			writeJSON(w, 200, s.table(r, res, []obj{o}, "", true))
			return
		}
		writeJSON(w, 200, o)
	case name != "" && (r.Method == http.MethodPut || r.Method == http.MethodPatch):
		s.serveUpdate(w, r, user, res, ns, name, sub)
	case name != "" && sub == "" && r.Method == http.MethodDelete:
		s.serveDelete(w, r, res, ns, name)
	default:
		methodNotAllowed(w)
	}
}

// wantsTable: the Accept header asks for a meta.k8s.io/v1 Table
// ("application/json;as=Table;v=v1;g=meta.k8s.io,...", kubectl get).
func wantsTable(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		params := map[string]string{}
		for _, kv := range strings.Split(part, ";")[1:] {
			if i := strings.IndexByte(kv, '='); i > 0 {
				params[strings.TrimSpace(kv[:i])] = strings.TrimSpace(kv[i+1:])
			}
		}
		if params["as"] == "Table" && params["v"] == "v1" && params["g"] == "meta.k8s.io" {
			return true
		}
	}
	return false
}

// table builds a meta.k8s.io/v1 Table; each row's object follows
// includeObject (Metadata by default, as a PartialObjectMetadata carrying
// the namespace that "get -A" prints; Object; None).
func (s *server) table(r *http.Request, res *resource, objs []obj, rv string, withColumns bool) obj {
	now := time.Now()
	include := r.URL.Query().Get("includeObject")
	rows := make([]interface{}, 0, len(objs))
	for _, o := range objs {
		row := obj{"cells": res.cells(o, now)}
		switch include {
		case "None":
		case "Object":
			row["object"] = o
		default:
			row["object"] = obj{"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}
		}
		rows = append(rows, row)
	}
	t := obj{"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": obj{}, "rows": rows}
	if rv != "" {
		t["metadata"] = obj{"resourceVersion": rv}
	}
	if withColumns {
		t["columnDefinitions"] = res.columns
	}
	return t
}
