package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// resource describes one REST resource of the core/v1 group: discovery,
// list kind and its server-side table columns.
type resource struct {
	name, singular, kind string
	namespaced           bool
	shortNames           []string
	verbs                []string
	columns              []column
	cells                func(obj object, now time.Time) []interface{}
}

// column is a metav1.TableColumnDefinition. Priority 0 columns are shown by
// default; priority 1 only with -o wide.
type column struct {
	Name        string `json:"name"`
	Type        string `json:"type"`
	Format      string `json:"format"`
	Description string `json:"description"`
	Priority    int    `json:"priority"`
}

var allVerbs = []string{"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}

var resources = []*resource{
	{
		name: "pods", singular: "pod", kind: "Pod", namespaced: true, shortNames: []string{"po"}, verbs: allVerbs,
		// The columns of the apiserver's pod printer (pkg/printers/internalversion).
		columns: []column{
			{"Name", "string", "name", "Name must be unique within a namespace.", 0},
			{"Ready", "string", "", "The aggregate readiness state of this pod for accepting traffic.", 0},
			{"Status", "string", "", "The aggregate status of the containers in this pod.", 0},
			{"Restarts", "string", "", "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.", 0},
			{"Age", "string", "", "CreationTimestamp is a timestamp representing the server time when this object was created.", 0},
			{"IP", "string", "", "IP address allocated to the pod. Routable at least within the cluster.", 1},
			{"Node", "string", "", "NodeName is a request to schedule this pod onto a specific node.", 1},
		},
		cells: func(obj object, now time.Time) []interface{} {
			p := obj.(*pod)
			ready := 0
			for _, c := range p.Status.ContainerStatuses {
				if c.Ready {
					ready++
				}
			}
			return []interface{}{p.Metadata.Name, fmt.Sprintf("%d/%d", ready, len(p.Spec.Containers)),
				p.Status.Phase, "0", age(p.Metadata.CreationTimestamp, now), p.Status.PodIP, p.Spec.NodeName}
		},
	},
	{
		name: "configmaps", singular: "configmap", kind: "ConfigMap", namespaced: true, shortNames: []string{"cm"}, verbs: allVerbs,
		columns: []column{
			{"Name", "string", "name", "Name must be unique within a namespace.", 0},
			{"Data", "string", "", "Data contains the configuration data.", 0},
			{"Age", "string", "", "CreationTimestamp is a timestamp representing the server time when this object was created.", 0},
		},
		cells: func(obj object, now time.Time) []interface{} {
			c := obj.(*configMap)
			return []interface{}{c.Metadata.Name, int64(len(c.Data) + len(c.BinaryData)), age(c.Metadata.CreationTimestamp, now)}
		},
	},
	{
		name: "namespaces", singular: "namespace", kind: "Namespace", namespaced: false, shortNames: []string{"ns"},
		verbs: []string{"create", "delete", "get", "list", "patch", "update", "watch"},
		columns: []column{
			{"Name", "string", "name", "Name must be unique within a namespace.", 0},
			{"Status", "string", "", "The status of the namespace", 0},
			{"Age", "string", "", "CreationTimestamp is a timestamp representing the server time when this object was created.", 0},
		},
		cells: func(obj object, now time.Time) []interface{} {
			n := obj.(*namespace)
			return []interface{}{n.Metadata.Name, n.Status["phase"], age(n.Metadata.CreationTimestamp, now)}
		},
	},
}

func findResource(name string) *resource {
	for _, r := range resources {
		if r.name == name {
			return r
		}
	}
	return nil
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

// ---- responses ----

func mustJSON(v interface{}) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func writeJSON(w http.ResponseWriter, code int, v interface{}) {
	b := mustJSON(v)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", fmt.Sprint(len(b)))
	w.WriteHeader(code)
	w.Write(b)
}

// status is metav1.Status, field order as the apiserver encodes it (the
// tests compare the 401 body byte for byte).
type status struct {
	Kind       string                 `json:"kind"`
	APIVersion string                 `json:"apiVersion"`
	Metadata   struct{}               `json:"metadata"`
	Status     string                 `json:"status"`
	Message    string                 `json:"message"`
	Reason     string                 `json:"reason"`
	Details    map[string]interface{} `json:"details,omitempty"`
	Code       int                    `json:"code"`
}

func statusBody(code int, reason, message string, details map[string]interface{}) *status {
	return &status{Kind: "Status", APIVersion: "v1", Status: "Failure", Message: message, Reason: reason, Details: details, Code: code}
}

func writeStatus(w http.ResponseWriter, code int, reason, message string, details map[string]interface{}) {
	writeJSON(w, code, statusBody(code, reason, message, details))
}

func notFound(w http.ResponseWriter, res, name string) {
	writeStatus(w, http.StatusNotFound, "NotFound", fmt.Sprintf("%s %q not found", res, name),
		map[string]interface{}{"name": name, "kind": res})
}

// ---- routing ----

func (s *server) route(w http.ResponseWriter, r *http.Request) {
	p := strings.TrimSuffix(r.URL.Path, "/")
	switch {
	case p == "/version":
		writeJSON(w, 200, map[string]string{
			"major": "1", "minor": "30", "gitVersion": "v1.30.0-fakeapi", "gitCommit": "0000000000000000000000000000000000000000",
			"gitTreeState": "clean", "buildDate": "2024-04-17T00:00:00Z", "goVersion": "go1.22.2", "compiler": "gc", "platform": "linux/amd64",
		})
	case p == "/api":
		// Plain JSON even when aggregated discovery (apidiscovery.k8s.io v2/v2beta1)
		// is asked for: client-go looks at the response Content-Type and then
		// reads this as legacy APIVersions and fetches /api/v1 on its own.
		writeJSON(w, 200, map[string]interface{}{
			"kind": "APIVersions", "versions": []string{"v1"},
			"serverAddressByClientCIDRs": []map[string]string{{"clientCIDR": "0.0.0.0/0", "serverAddress": r.Host}},
		})
	case p == "/apis":
		writeJSON(w, 200, map[string]interface{}{"kind": "APIGroupList", "apiVersion": "v1", "groups": []interface{}{}})
	case p == "/api/v1":
		s.serveResourceList(w)
	case strings.HasPrefix(p, "/openapi/v3"):
		serveOpenAPIv3(w, r, p)
	case p == "/healthz" || p == "/readyz" || p == "/livez":
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok")
	case strings.HasPrefix(p, "/_fake/"):
		s.serveHook(w, r, strings.TrimPrefix(p, "/_fake/"))
	case strings.HasPrefix(p, "/api/v1/"):
		s.serveCore(w, r, strings.Split(strings.TrimPrefix(p, "/api/v1/"), "/"))
	default:
		writeStatus(w, http.StatusNotFound, "NotFound", "the server could not find the requested resource", map[string]interface{}{})
	}
}

func (s *server) serveResourceList(w http.ResponseWriter) {
	var list []map[string]interface{}
	for _, r := range resources {
		list = append(list, map[string]interface{}{
			"name": r.name, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind,
			"verbs": r.verbs, "shortNames": r.shortNames, "storageVersionHash": "fake" + r.singular,
		})
		if r.name == "pods" {
			list[0]["categories"] = []string{"all"}
			for _, sub := range []struct {
				name, kind string
				verbs      []string
			}{
				{"pods/attach", "PodAttachOptions", []string{"create", "get"}},
				{"pods/exec", "PodExecOptions", []string{"create", "get"}},
				{"pods/log", "Pod", []string{"get"}},
				{"pods/portforward", "PodPortForwardOptions", []string{"create", "get"}},
			} {
				list = append(list, map[string]interface{}{"name": sub.name, "singularName": "", "namespaced": true, "kind": sub.kind, "verbs": sub.verbs})
			}
		}
	}
	writeJSON(w, 200, map[string]interface{}{"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1", "resources": list})
}

// serveCore handles /api/v1/... after the prefix: "pods",
// "namespaces/NS", "namespaces/NS/pods", "namespaces/NS/pods/NAME[/SUB]".
func (s *server) serveCore(w http.ResponseWriter, r *http.Request, parts []string) {
	var ns, resName, name, sub string
	switch {
	case len(parts) == 1:
		resName = parts[0]
	case len(parts) == 2 && parts[0] == "namespaces":
		resName, name = "namespaces", parts[1]
	case len(parts) >= 3 && parts[0] == "namespaces":
		ns, resName = parts[1], parts[2]
		if len(parts) >= 4 {
			name = parts[3]
		}
		if len(parts) == 5 {
			sub = parts[4]
		}
		if len(parts) > 5 {
			resName = ""
		}
	}
	res := findResource(resName)
	if res == nil || (ns != "" && !res.namespaced) {
		writeStatus(w, http.StatusNotFound, "NotFound", "the server could not find the requested resource", map[string]interface{}{})
		return
	}
	if ns != "" {
		if _, ok := s.store.get("namespaces", "", ns); !ok && name == "" && r.Method == http.MethodPost {
			notFound(w, "namespaces", ns)
			return
		}
	}
	if sub != "" {
		if res.name != "pods" {
			writeStatus(w, http.StatusNotFound, "NotFound", "the server could not find the requested resource", map[string]interface{}{})
			return
		}
		if _, ok := s.store.get("pods", ns, name); !ok {
			notFound(w, "pods", name)
			return
		}
		switch sub {
		case "log":
			s.serveLog(w, r, ns, name)
		case "exec", "attach":
			s.serveExec(w, r, ns, name, sub)
		case "portforward":
			s.servePortForward(w, r, ns, name)
		default:
			writeStatus(w, http.StatusNotFound, "NotFound", "the server could not find the requested resource", map[string]interface{}{})
		}
		return
	}
	q := r.URL.Query()
	switch {
	case r.Method == http.MethodGet && name == "" && (q.Get("watch") == "1" || q.Get("watch") == "true"):
		s.serveWatch(w, r, res, ns)
	case r.Method == http.MethodGet && name == "":
		s.serveList(w, r, res, ns)
	case r.Method == http.MethodGet:
		obj, ok := s.store.get(res.name, ns, name)
		if !ok {
			notFound(w, res.name, name)
			return
		}
		s.writeObjects(w, r, res, []object{obj}, "", false)
	case r.Method == http.MethodPost && name == "" && res.name == "configmaps":
		s.createConfigMap(w, r, ns)
	case r.Method == http.MethodDelete && name != "":
		obj, ok := s.store.remove(res.name, ns, name)
		if !ok {
			notFound(w, res.name, name)
			return
		}
		// Objects without finalizers are gone at once; the apiserver then
		// answers 200 with the object as it was deleted.
		writeJSON(w, 200, obj)
	default:
		writeStatus(w, http.StatusMethodNotAllowed, "MethodNotAllowed",
			fmt.Sprintf("%s is not supported on %s by this fake", r.Method, r.URL.Path), map[string]interface{}{})
	}
}

// wantsTable reports whether the Accept header asks for a meta.k8s.io/v1
// Table (kubectl get: "application/json;as=Table;v=v1;g=meta.k8s.io,...").
// Only v1 is offered; kubectl 1.27+ always lists v1 first.
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

// filter applies the fieldSelectors kubectl itself sends
// (metadata.name=X from "delete --wait", metadata.namespace=Y); others are
// rejected like the apiserver rejects unsupported field labels.
func filter(objs []object, selector string) ([]object, error) {
	if selector == "" {
		return objs, nil
	}
	var out []object
	for _, obj := range objs {
		keep := true
		for _, term := range strings.Split(selector, ",") {
			neg := strings.Contains(term, "!=")
			kv := strings.SplitN(strings.Replace(strings.Replace(term, "!=", "=", 1), "==", "=", 1), "=", 2)
			if len(kv) != 2 {
				return nil, fmt.Errorf("invalid selector: %q", selector)
			}
			var v string
			switch kv[0] {
			case "metadata.name":
				v = obj.meta().Name
			case "metadata.namespace":
				v = obj.meta().Namespace
			default:
				return nil, fmt.Errorf("field label not supported: %s", kv[0])
			}
			if (v == kv[1]) == neg {
				keep = false
			}
		}
		if keep {
			out = append(out, obj)
		}
	}
	return out, nil
}

func (s *server) serveList(w http.ResponseWriter, r *http.Request, res *resource, ns string) {
	objs, rv := s.store.list(res.name, ns)
	objs, err := filter(objs, r.URL.Query().Get("fieldSelector"))
	if err != nil {
		writeStatus(w, http.StatusBadRequest, "BadRequest", err.Error(), nil)
		return
	}
	s.writeObjects(w, r, res, objs, rv, true)
}

// writeObjects answers a get (one object) or a list, as a Table when asked.
func (s *server) writeObjects(w http.ResponseWriter, r *http.Request, res *resource, objs []object, rv string, isList bool) {
	if wantsTable(r) {
		writeJSON(w, 200, s.table(r, res, objs, rv, true))
		return
	}
	if !isList {
		writeJSON(w, 200, objs[0])
		return
	}
	items := make([]object, 0, len(objs))
	items = append(items, objs...)
	writeJSON(w, 200, map[string]interface{}{
		"kind": res.kind + "List", "apiVersion": "v1",
		"metadata": map[string]string{"resourceVersion": rv}, "items": items,
	})
}

// table builds a meta.k8s.io/v1 Table. Each row's object follows
// includeObject: Metadata (default; a PartialObjectMetadata carrying the
// namespace, which "get -A" prints), Object (the full object), None.
func (s *server) table(r *http.Request, res *resource, objs []object, rv string, withColumns bool) map[string]interface{} {
	now := time.Now()
	include := r.URL.Query().Get("includeObject")
	rows := make([]map[string]interface{}, 0, len(objs))
	for _, obj := range objs {
		row := map[string]interface{}{"cells": res.cells(obj, now)}
		switch include {
		case "None":
		case "Object":
			row["object"] = obj
		default:
			row["object"] = map[string]interface{}{"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.meta()}
		}
		rows = append(rows, row)
	}
	t := map[string]interface{}{"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": map[string]string{}, "rows": rows}
	if rv != "" {
		t["metadata"] = map[string]string{"resourceVersion": rv}
	}
	if withColumns {
		t["columnDefinitions"] = res.columns
	}
	return t
}

// createConfigMap accepts the body kubectl sends: protobuf for "kubectl
// create configmap" (typed client; it does not retry with JSON on 415),
// JSON for "kubectl create -f"/"apply".
func (s *server) createConfigMap(w http.ResponseWriter, r *http.Request, ns string) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
	if err != nil {
		writeStatus(w, http.StatusBadRequest, "BadRequest", err.Error(), nil)
		return
	}
	cm := &configMap{}
	ct := r.Header.Get("Content-Type")
	switch {
	case strings.HasPrefix(ct, "application/vnd.kubernetes.protobuf"):
		cm, err = decodeConfigMapProto(body)
	case strings.HasPrefix(ct, "application/json") || ct == "":
		err = json.Unmarshal(body, cm)
	default:
		writeStatus(w, http.StatusUnsupportedMediaType, "UnsupportedMediaType",
			fmt.Sprintf("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf"), nil)
		return
	}
	if err != nil {
		writeStatus(w, http.StatusBadRequest, "BadRequest", "the object provided is unrecognized: "+err.Error(), nil)
		return
	}
	if cm.Metadata.Namespace != "" && cm.Metadata.Namespace != ns {
		writeStatus(w, http.StatusBadRequest, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request", nil)
		return
	}
	if cm.Metadata.Name == "" {
		writeStatus(w, http.StatusUnprocessableEntity, "Invalid", "ConfigMap \"\" is invalid: metadata.name: Required value: name or generateName is required", nil)
		return
	}
	cm.typeMeta = typeMeta{"ConfigMap", "v1"}
	cm.Metadata.Namespace = ns
	cm.Metadata.ResourceVersion, cm.Metadata.UID, cm.Metadata.CreationTimestamp = "", "", ""
	if r.URL.Query().Get("dryRun") == "All" {
		writeJSON(w, http.StatusCreated, cm)
		return
	}
	if _, ok := s.store.add("configmaps", cm); !ok {
		writeStatus(w, http.StatusConflict, "AlreadyExists", fmt.Sprintf("configmaps %q already exists", cm.Metadata.Name),
			map[string]interface{}{"name": cm.Metadata.Name, "kind": "configmaps"})
		return
	}
	writeJSON(w, http.StatusCreated, cm)
}

// serveHook is the test-only surface: POST /_fake/pods?namespace=NS&name=N
// adds a Running pod (watchers see ADDED); DELETE removes it (DELETED).
func (s *server) serveHook(w http.ResponseWriter, r *http.Request, what string) {
	q := r.URL.Query()
	ns, name := q.Get("namespace"), q.Get("name")
	if ns == "" {
		ns = "default"
	}
	if what != "pods" || name == "" {
		writeStatus(w, http.StatusNotFound, "NotFound", "hooks: POST|DELETE /_fake/pods?namespace=NS&name=N", nil)
		return
	}
	switch r.Method {
	case http.MethodPost:
		image := q.Get("image")
		if image == "" {
			image = "busybox:1.36"
		}
		obj, ok := s.store.add("pods", newPod(ns, name, image, time.Now()))
		if !ok {
			writeStatus(w, http.StatusConflict, "AlreadyExists", fmt.Sprintf("pods %q already exists", name), nil)
			return
		}
		writeJSON(w, http.StatusCreated, obj)
	case http.MethodDelete:
		obj, ok := s.store.remove("pods", ns, name)
		if !ok {
			notFound(w, "pods", name)
			return
		}
		writeJSON(w, 200, obj)
	default:
		writeStatus(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "POST or DELETE", nil)
	}
}
