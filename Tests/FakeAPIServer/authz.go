package main

// Authentication, impersonation, authorization and audit, in the order
// kube-apiserver's handler chain applies them (authentication, audit,
// impersonation, authorization), after the Kubernetes docs "User
// impersonation", "Authorization" (request attributes, verbs) and
// "Auditing" (Audit-ID).
//
// Without --policy the fake authorizes as --authorization-mode=AlwaysAllow
// does: every authenticated user may do anything, impersonate included.
// With --policy FILE (JSON, below) it evaluates that file's rules, the way
// RBAC evaluates a union of grants, for the real user and for every
// impersonation step.
//
//	{"rules": [{"users": ["system:serviceaccount:kopilot:agent"], "groups": [],
//	            "verbs": ["impersonate"], "apiGroups": ["", "authentication.k8s.io"],
//	            "resources": ["users", "groups", "uids", "userextras/*"],
//	            "namespaces": [], "resourceNames": [], "nonResourceURLs": []}]}
//
// "*" matches anything in a list; an empty namespaces list matches every
// namespace and the cluster scope. As in the bootstrap policy
// (system:basic-user), every authenticated user may create
// selfsubjectreviews, selfsubjectaccessreviews and selfsubjectrulesreviews.

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
)

// userInfo is user.Info.
type userInfo struct {
	Username string              `json:"username"`
	UID      string              `json:"uid,omitempty"`
	Groups   []string            `json:"groups"`
	Extra    map[string][]string `json:"extra,omitempty"`
}

type rule struct {
	Users           []string `json:"users"`
	Groups          []string `json:"groups"`
	Verbs           []string `json:"verbs"`
	APIGroups       []string `json:"apiGroups"`
	Resources       []string `json:"resources"`
	Namespaces      []string `json:"namespaces"`
	ResourceNames   []string `json:"resourceNames"`
	NonResourceURLs []string `json:"nonResourceURLs"`
}

type policy struct {
	Rules []rule `json:"rules"`
}

func loadPolicy(path string) (*policy, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var p policy
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return &p, nil
}

// attributes are authorizer.Attributes.
type attributes struct {
	user        *userInfo
	verb        string
	apiGroup    string
	apiVersion  string
	resource    string
	subresource string
	namespace   string
	name        string
	path        string // non-resource requests
	isResource  bool
}

func listHas(list []string, v string) bool {
	for _, x := range list {
		if x == "*" || x == v {
			return true
		}
	}
	return false
}

func (r *rule) appliesTo(u *userInfo) bool {
	if listHas(r.Users, u.Username) {
		return true
	}
	for _, g := range u.Groups {
		if listHas(r.Groups, g) {
			return true
		}
	}
	return false
}

func (r *rule) allows(a *attributes) bool {
	if !r.appliesTo(a.user) || !listHas(r.Verbs, a.verb) {
		return false
	}
	if !a.isResource {
		for _, p := range r.NonResourceURLs {
			if p == a.path || p == "*" || (strings.HasSuffix(p, "*") && strings.HasPrefix(a.path, strings.TrimSuffix(p, "*"))) {
				return true
			}
		}
		return false
	}
	res := a.resource
	if a.subresource != "" {
		res += "/" + a.subresource
	}
	// RBAC's ResourceMatches: "*", the exact "resource/subresource", or
	// "*/subresource" (there is no "resource/*").
	okRes := listHas(r.Resources, res) || (a.subresource != "" && listHas(r.Resources, "*/"+a.subresource))
	okNS := len(r.Namespaces) == 0 || listHas(r.Namespaces, a.namespace)
	okName := len(r.ResourceNames) == 0 || listHas(r.ResourceNames, a.name)
	return okRes && okNS && okName && listHas(r.APIGroups, a.apiGroup)
}

// authorize: nil policy is AlwaysAllow.
func (s *server) authorize(a *attributes) bool {
	if s.cfg.policy == nil {
		return true
	}
	if a.isResource && a.verb == "create" && a.subresource == "" &&
		((a.apiGroup == "authentication.k8s.io" && a.resource == "selfsubjectreviews") ||
			(a.apiGroup == "authorization.k8s.io" && (a.resource == "selfsubjectaccessreviews" || a.resource == "selfsubjectrulesreviews"))) {
		return true // system:basic-user
	}
	for i := range s.cfg.policy.Rules {
		if s.cfg.policy.Rules[i].allows(a) {
			return true
		}
	}
	return false
}

// forbiddenMessage is kube-apiserver's wording of a denial
// (responsewriters.forbiddenMessage).
func forbiddenMessage(a *attributes) string {
	who := fmt.Sprintf("User %q", a.user.Username)
	if !a.isResource {
		return fmt.Sprintf("forbidden: %s cannot %s path %q", who, a.verb, a.path)
	}
	res := a.resource
	if a.subresource != "" {
		res += "/" + a.subresource
	}
	subject := res
	if a.name != "" {
		subject = fmt.Sprintf("%s %q", res, a.name)
	}
	scope := "at the cluster scope"
	if a.namespace != "" {
		scope = fmt.Sprintf("in the namespace %q", a.namespace)
	}
	return fmt.Sprintf("%s is forbidden: %s cannot %s resource %q in API group %q %s", subject, who, a.verb, res, a.apiGroup, scope)
}

func writeForbidden(w http.ResponseWriter, a *attributes) {
	res := a.resource
	if a.subresource != "" {
		res += "/" + a.subresource
	}
	writeStatus(w, http.StatusForbidden, "Forbidden", forbiddenMessage(a),
		map[string]interface{}{"name": a.name, "group": a.apiGroup, "kind": res})
}

// requestAttributes is RequestInfo's resolution of a request: the path
// (/api/v1/..., /apis/GROUP/VERSION/...) and the verb from the method.
func requestAttributes(r *http.Request, u *userInfo) *attributes {
	a := &attributes{user: u, path: r.URL.Path}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	switch {
	case len(parts) >= 3 && parts[0] == "api":
		a.apiVersion, parts = parts[1], parts[2:]
	case len(parts) >= 4 && parts[0] == "apis":
		a.apiGroup, a.apiVersion, parts = parts[1], parts[2], parts[3:]
	default:
		a.verb = strings.ToLower(r.Method)
		if a.verb == "head" {
			a.verb = "get"
		}
		return a
	}
	a.isResource = true
	if len(parts) >= 2 && parts[0] == "namespaces" && len(parts) != 2 {
		a.namespace, parts = parts[1], parts[2:]
	} else if len(parts) == 2 && parts[0] == "namespaces" {
		a.name = parts[1]
		a.resource = "namespaces"
		parts = nil
	}
	if len(parts) >= 1 {
		a.resource = parts[0]
	}
	if len(parts) >= 2 {
		a.name = parts[1]
	}
	if len(parts) >= 3 {
		a.subresource = parts[2]
	}
	if a.resource == "namespaces" && a.name != "" {
		a.namespace = a.name
	}
	q := r.URL.Query()
	collection := a.name == ""
	switch r.Method {
	case "GET", "HEAD":
		switch {
		case q.Get("watch") == "1" || q.Get("watch") == "true":
			a.verb = "watch"
		case collection:
			a.verb = "list"
		default:
			a.verb = "get"
		}
	case "POST":
		a.verb = "create"
	case "PUT":
		a.verb = "update"
	case "PATCH":
		a.verb = "patch"
	case "DELETE":
		if collection {
			a.verb = "deletecollection"
		} else {
			a.verb = "delete"
		}
	default:
		a.verb = strings.ToLower(r.Method)
	}
	// exec, attach and port-forward change the pod's state whatever the
	// method: newer kube-apiservers authorize a WebSocket upgrade to them
	// as create too, which is what RBAC examples grant.
	if a.resource == "pods" && (a.subresource == "exec" || a.subresource == "attach" || a.subresource == "portforward") {
		a.verb = "create"
	}
	return a
}

// impersonate applies the Impersonate-* headers: each one must be allowed
// to the authenticated user (verb impersonate on users, groups, uids,
// userextras/<key>), and the request then runs as the impersonated user,
// in system:authenticated, with the headers removed. Returns the user to
// authorize as, or false when it answered.
func (s *server) impersonate(w http.ResponseWriter, r *http.Request, u *userInfo) (*userInfo, bool) {
	name := r.Header.Values("Impersonate-User")
	groups := r.Header.Values("Impersonate-Group")
	uid := r.Header.Values("Impersonate-Uid")
	extra := map[string][]string{}
	for k, vs := range r.Header {
		if strings.HasPrefix(strings.ToLower(k), "impersonate-extra-") {
			key, err := url.PathUnescape(strings.ToLower(k[len("Impersonate-Extra-"):]))
			if err != nil {
				writeStatus(w, http.StatusInternalServerError, "InternalError", fmt.Sprintf("Internal error occurred: invalid extra key %q", k), nil)
				return nil, false
			}
			extra[key] = append(extra[key], vs...)
		}
	}
	if len(name) == 0 {
		if len(groups) > 0 || len(uid) > 0 || len(extra) > 0 {
			writeStatus(w, http.StatusInternalServerError, "InternalError",
				"Internal error occurred: requested impersonation of groups, uid or extra without impersonating a user", nil)
			return nil, false
		}
		return u, true
	}
	if len(name) > 1 || len(uid) > 1 {
		writeStatus(w, http.StatusInternalServerError, "InternalError", "Internal error occurred: more than one user or uid to impersonate", nil)
		return nil, false
	}
	check := func(a *attributes) bool {
		a.user, a.verb, a.isResource = u, "impersonate", true
		if s.authorize(a) {
			return true
		}
		writeForbidden(w, a)
		return false
	}
	user := &userInfo{Username: name[0], Extra: extra}
	if strings.HasPrefix(name[0], "system:serviceaccount:") {
		p := strings.SplitN(strings.TrimPrefix(name[0], "system:serviceaccount:"), ":", 2)
		if len(p) == 2 && !check(&attributes{resource: "serviceaccounts", namespace: p[0], name: p[1]}) {
			return nil, false
		}
		user.Groups = append(user.Groups, "system:serviceaccounts", "system:serviceaccounts:"+p[0])
	} else if !check(&attributes{resource: "users", name: name[0]}) {
		return nil, false
	}
	for _, g := range groups {
		if !check(&attributes{resource: "groups", name: g}) {
			return nil, false
		}
	}
	if len(uid) == 1 {
		if !check(&attributes{apiGroup: "authentication.k8s.io", resource: "uids", name: uid[0]}) {
			return nil, false
		}
		user.UID = uid[0]
	}
	keys := make([]string, 0, len(extra))
	for k := range extra {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range extra[k] {
			if !check(&attributes{apiGroup: "authentication.k8s.io", resource: "userextras", subresource: k, name: v}) {
				return nil, false
			}
		}
	}
	user.Groups = append(user.Groups, groups...)
	if user.Username != "system:anonymous" && !listHas(user.Groups, "system:authenticated") {
		user.Groups = append(user.Groups, "system:authenticated")
	}
	if len(user.Extra) == 0 {
		user.Extra = nil
	}
	for k := range r.Header {
		if strings.HasPrefix(strings.ToLower(k), "impersonate-") {
			r.Header.Del(k)
		}
	}
	return user, true
}

// ---- audit ----

// auditEvent is the part of audit.k8s.io/v1 Event the tests read.
type auditEvent struct {
	Kind             string    `json:"kind"`
	APIVersion       string    `json:"apiVersion"`
	Level            string    `json:"level"`
	AuditID          string    `json:"auditID"`
	Stage            string    `json:"stage"`
	RequestURI       string    `json:"requestURI"`
	Verb             string    `json:"verb"`
	User             userInfo  `json:"user"`
	ImpersonatedUser *userInfo `json:"impersonatedUser,omitempty"`
	ResponseStatus   struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
}

type auditLog struct {
	mu sync.Mutex
	f  *os.File
}

func (l *auditLog) write(e *auditEvent) {
	if l == nil {
		return
	}
	b := mustJSON(e)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.f.Write(append(b, '\n'))
}

// auditID is the request's Audit-ID header when it sends one (the apiserver
// adopts a caller's ID), else a new UUID.
func auditID(r *http.Request) string {
	if id := r.Header.Get("Audit-ID"); id != "" {
		return id
	}
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// codeWriter remembers the status written, for the audit event.
type codeWriter struct {
	http.ResponseWriter
	code int
}

func (c *codeWriter) WriteHeader(code int) {
	if c.code == 0 {
		c.code = code
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *codeWriter) Write(b []byte) (int, error) {
	if c.code == 0 {
		c.code = 200
	}
	return c.ResponseWriter.Write(b)
}

// Flush and Hijack pass through: watches flush, upgrades hijack (and
// write their 101 themselves).
func (c *codeWriter) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (c *codeWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h, ok := c.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, fmt.Errorf("fakeapi: the connection cannot be hijacked")
	}
	if c.code == 0 {
		c.code = http.StatusSwitchingProtocols
	}
	return h.Hijack()
}

// ---- SelfSubjectReview and SelfSubjectAccessReview ----

// selfSubjectReview answers kubectl auth whoami: who the request runs as.
func selfSubjectReview(w http.ResponseWriter, r *http.Request, version string, u *userInfo) {
	io.Copy(io.Discard, r.Body)
	writeJSON(w, http.StatusCreated, map[string]interface{}{
		"kind": "SelfSubjectReview", "apiVersion": "authentication.k8s.io/" + version,
		"metadata": map[string]interface{}{"creationTimestamp": nil},
		"status":   map[string]interface{}{"userInfo": u},
	})
}

type ssarSpec struct {
	ResourceAttributes *struct {
		Namespace   string `json:"namespace"`
		Verb        string `json:"verb"`
		Group       string `json:"group"`
		Version     string `json:"version"`
		Resource    string `json:"resource"`
		Subresource string `json:"subresource"`
		Name        string `json:"name"`
	} `json:"resourceAttributes"`
	NonResourceAttributes *struct {
		Path string `json:"path"`
		Verb string `json:"verb"`
	} `json:"nonResourceAttributes"`
}

// selfSubjectAccessReview answers kubectl auth can-i: JSON or protobuf
// (SelfSubjectAccessReview: spec = 2; spec.resourceAttributes = 1 with
// namespace 1, verb 2, group 3, version 4, resource 5, subresource 6,
// name 7; spec.nonResourceAttributes = 2 with path 1, verb 2).
func (s *server) selfSubjectAccessReview(w http.ResponseWriter, r *http.Request, u *userInfo) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	a := &attributes{user: u}
	var spec ssarSpec
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/vnd.kubernetes.protobuf") {
		_, _, raw, err := decodeUnknown(body)
		if err == nil {
			err = pbEach(raw, func(f pbField) error {
				if f.num != 2 {
					return nil
				}
				return pbEach(f.bytes, func(g pbField) error {
					switch g.num {
					case 1:
						a.isResource = true
						return pbEach(g.bytes, func(h pbField) error {
							v := string(h.bytes)
							switch h.num {
							case 1:
								a.namespace = v
							case 2:
								a.verb = v
							case 3:
								a.apiGroup = v
							case 4:
								a.apiVersion = v
							case 5:
								a.resource = v
							case 6:
								a.subresource = v
							case 7:
								a.name = v
							}
							return nil
						})
					case 2:
						return pbEach(g.bytes, func(h pbField) error {
							switch h.num {
							case 1:
								a.path = string(h.bytes)
							case 2:
								a.verb = string(h.bytes)
							}
							return nil
						})
					}
					return nil
				})
			})
		}
		if err != nil {
			writeStatus(w, http.StatusBadRequest, "BadRequest", "the body is not a SelfSubjectAccessReview: "+err.Error(), nil)
			return
		}
	} else {
		var obj struct {
			Spec ssarSpec `json:"spec"`
		}
		if err := json.Unmarshal(body, &obj); err != nil {
			writeStatus(w, http.StatusBadRequest, "BadRequest", "the body is not a SelfSubjectAccessReview: "+err.Error(), nil)
			return
		}
		spec = obj.Spec
		if ra := spec.ResourceAttributes; ra != nil {
			a.isResource, a.namespace, a.verb, a.apiGroup, a.apiVersion = true, ra.Namespace, ra.Verb, ra.Group, ra.Version
			a.resource, a.subresource, a.name = ra.Resource, ra.Subresource, ra.Name
		} else if nr := spec.NonResourceAttributes; nr != nil {
			a.path, a.verb = nr.Path, nr.Verb
		}
	}
	allowed := s.authorize(a)
	// RBAC gives no reason for a denial (it has no deny rules), so kubectl
	// prints a bare "no".
	st := map[string]interface{}{"allowed": allowed}
	specOut := map[string]interface{}{}
	if a.isResource {
		specOut["resourceAttributes"] = map[string]string{"namespace": a.namespace, "verb": a.verb, "group": a.apiGroup,
			"version": a.apiVersion, "resource": a.resource, "subresource": a.subresource, "name": a.name}
	} else {
		specOut["nonResourceAttributes"] = map[string]string{"path": a.path, "verb": a.verb}
	}
	writeJSON(w, http.StatusCreated, map[string]interface{}{
		"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
		"metadata": map[string]interface{}{"creationTimestamp": nil}, "spec": specOut, "status": st,
	})
}

// serveAuthAPIs answers the review endpoints; false when p is none of them.
func (s *server) serveAuthAPIs(w http.ResponseWriter, r *http.Request, p string, u *userInfo) bool {
	for _, v := range []string{"v1", "v1beta1", "v1alpha1"} {
		if p == "/apis/authentication.k8s.io/"+v+"/selfsubjectreviews" && r.Method == "POST" {
			selfSubjectReview(w, r, v, u)
			return true
		}
	}
	if p == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews" && r.Method == "POST" {
		s.selfSubjectAccessReview(w, r, u)
		return true
	}
	return false
}

