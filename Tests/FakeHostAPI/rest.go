package main

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"
)

func readBody(r *http.Request) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r.Body, 8<<20))
	if err != nil {
		return nil, errBadRequest("reading the body: %v", err)
	}
	return b, nil
}

// decodeObject reads a JSON object body and checks its kind and apiVersion
// against the resource, as the apiserver's decoder does.
func decodeObject(ct string, b []byte, res *resource) (obj, error) {
	if ct != "" && !strings.HasPrefix(ct, "application/json") {
		return nil, &apiError{code: 415, reason: "UnsupportedMediaType",
			message: "the body of the request was in an unknown format - accepted media types include: application/json"}
	}
	var o obj
	if err := decodeJSON(b, &o); err != nil || o == nil {
		return nil, errBadRequest("the object provided is unrecognized (must be of type %s): %v", res.kind, err)
	}
	if k, _ := o["kind"].(string); k != "" && k != res.kind {
		return nil, errBadRequest("the object provided is unrecognized (must be of type %s): kind %q", res.kind, k)
	}
	if v, _ := o["apiVersion"].(string); v != "" && v != res.groupVersion() {
		return nil, errBadRequest("the API version in the data (%s) does not match the expected API version (%s)", v, res.groupVersion())
	}
	o["kind"], o["apiVersion"] = res.kind, res.groupVersion()
	if _, ok := o["metadata"].(obj); !ok && o["metadata"] != nil {
		return nil, errBadRequest("metadata must be an object")
	}
	return o, nil
}

// ---- list ----

// continueToken is what the "continue" string carries (base64 JSON, as the
// apiserver's etcd3 store encodes its own).
type continueToken struct {
	RV    int64  `json:"rv"`
	Start string `json:"start"`
}

func (s *server) serveList(w http.ResponseWriter, r *http.Request, res *resource, ns string) {
	q := r.URL.Query()
	sel, err := parseSelectors(q.Get("labelSelector"), q.Get("fieldSelector"))
	if err != nil {
		writeError(w, err)
		return
	}
	objs, rv := s.store.list(res, ns)
	listRV := rv
	var matched []obj
	for _, o := range objs {
		if sel.matches(o) {
			matched = append(matched, o)
		}
	}
	if c := q.Get("continue"); c != "" {
		var tok continueToken
		b, err := base64.RawURLEncoding.DecodeString(c)
		if err != nil || json.Unmarshal(b, &tok) != nil || tok.Start == "" {
			writeError(w, errBadRequest("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"))
			return
		}
		s.store.mu.Lock()
		expired := tok.RV < s.store.expired
		s.store.mu.Unlock()
		if expired {
			writeError(w, errExpired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter."))
			return
		}
		listRV = tok.RV
		i := 0
		for i < len(matched) && key(str(matched[i], "metadata", "namespace"), str(matched[i], "metadata", "name")) <= tok.Start {
			i++
		}
		matched = matched[i:]
	}
	listMeta := obj{"resourceVersion": rvString(listRV)}
	if limit, err := strconv.Atoi(q.Get("limit")); err == nil && limit > 0 && len(matched) > limit {
		last := matched[limit-1]
		tok := continueToken{RV: listRV, Start: key(str(last, "metadata", "namespace"), str(last, "metadata", "name"))}
		listMeta["continue"] = base64.RawURLEncoding.EncodeToString(mustJSON(tok))
		listMeta["remainingItemCount"] = len(matched) - limit
		matched = matched[:limit]
	}
	if wantsTable(r) {
		t := s.table(r, res, matched, rvString(listRV), true)
		t["metadata"] = listMeta
		writeJSON(w, 200, t)
		return
	}
	items := make([]interface{}, 0, len(matched))
	for _, o := range matched {
		if !res.custom {
			// Built-in kinds' list items carry no kind/apiVersion.
			delete(o, "kind")
			delete(o, "apiVersion")
		}
		items = append(items, o)
	}
	writeJSON(w, 200, obj{"apiVersion": res.groupVersion(), "kind": res.kind + "List", "metadata": listMeta, "items": items})
}

// ---- create ----

func (s *server) serveCreate(w http.ResponseWriter, r *http.Request, user userInfo, res *resource, ns string) {
	body, err := readBody(r)
	if err != nil {
		writeError(w, err)
		return
	}
	o, err := decodeObject(r.Header.Get("Content-Type"), body, res)
	if err != nil {
		writeError(w, err)
		return
	}
	m := meta(o)
	if res.namespaced {
		if n, _ := m["namespace"].(string); n != "" && n != ns {
			writeError(w, errBadRequest("the namespace of the provided object does not match the namespace sent on the request"))
			return
		}
		m["namespace"] = ns
	} else {
		delete(m, "namespace")
	}
	name, _ := m["name"].(string)
	if gen, _ := m["generateName"].(string); name == "" && gen != "" {
		name = gen + randomSuffix()
		m["name"] = name
	}
	if name == "" {
		writeError(w, errInvalid(res, "", "metadata.name", "Required value: name or generateName is required"))
		return
	}
	for _, k := range []string{"uid", "resourceVersion", "creationTimestamp", "generation", "deletionTimestamp"} {
		delete(m, k)
	}
	if res.status {
		// With the status subresource, create ignores .status (apiextensions' PrepareForCreate).
		delete(o, "status")
	}
	dryRun := r.URL.Query().Get("dryRun") == "All"
	if res.admission {
		if o, err = s.admit(r, user, res, "CREATE", o, nil, dryRun); err != nil {
			writeError(w, err)
			return
		}
	}
	if err := validate(res, o); err != nil {
		writeError(w, err)
		return
	}
	if dryRun {
		writeJSON(w, http.StatusCreated, o)
		return
	}
	stored, err := s.store.create(res, o)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, stored)
}

func randomSuffix() string {
	const letters = "bcdfghjklmnpqrstvwxz2456789"
	var b [5]byte
	rand.Read(b[:])
	for i := range b {
		b[i] = letters[int(b[i])%len(letters)]
	}
	return string(b[:])
}

// validate checks the few schema rules the tests lean on.
func validate(res *resource, o obj) error {
	name := str(o, "metadata", "name")
	switch res.name {
	case "clusters":
		if t, ok := o["token"]; ok && t != nil {
			if _, isStr := t.(string); !isStr {
				return errInvalid(res, name, "token", fmt.Sprintf("Invalid value: %q: token in body must be of type string", fmt.Sprint(t)))
			}
		}
	case "endpointslices":
		if str(o, "addressType") == "" {
			return errInvalid(res, name, "addressType", "Required value")
		}
	}
	return nil
}

// ---- update and patch ----

// serveUpdate handles PUT and PATCH on an object or its /status. The
// change is computed against the current object and written only if the
// object did not change in between; a PUT, or a patch that names a
// metadata.resourceVersion, gets 409 Conflict when it is stale, other
// patches are retried on the newer object, as the apiserver's
// GuaranteedUpdate does.
func (s *server) serveUpdate(w http.ResponseWriter, r *http.Request, user userInfo, res *resource, ns, name, sub string) {
	body, err := readBody(r)
	if err != nil {
		writeError(w, err)
		return
	}
	var newObj func(cur obj) (obj, bool, error) // the object, whether the client named a resourceVersion
	if r.Method == http.MethodPut {
		req, err := decodeObject(r.Header.Get("Content-Type"), body, res)
		if err != nil {
			writeError(w, err)
			return
		}
		if n := str(req, "metadata", "name"); n != name {
			writeError(w, errBadRequest("the name of the object (%s) does not match the name on the URL (%s)", n, name))
			return
		}
		if n := str(req, "metadata", "namespace"); res.namespaced && n != "" && n != ns {
			writeError(w, errBadRequest("the namespace of the provided object does not match the namespace sent on the request"))
			return
		}
		if res.custom && str(req, "metadata", "resourceVersion") == "" {
			writeError(w, errInvalid(res, name, "metadata.resourceVersion", "Invalid value: 0x0: must be specified for an update"))
			return
		}
		newObj = func(cur obj) (obj, bool, error) {
			o := clone(req)
			return o, str(o, "metadata", "resourceVersion") != "", nil
		}
	} else {
		patchType := strings.TrimSpace(strings.Split(r.Header.Get("Content-Type"), ";")[0])
		switch patchType {
		case "application/merge-patch+json", "application/json-patch+json":
		case "application/strategic-merge-patch+json":
			if res.custom {
				writeError(w, &apiError{code: 415, reason: "UnsupportedMediaType",
					message: "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"})
				return
			}
			// Built-in kinds here have no list-merge keys the tests use, so a
			// strategic merge patch reads as a merge patch.
		default:
			writeError(w, &apiError{code: 415, reason: "UnsupportedMediaType",
				message: "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json"})
			return
		}
		var patch interface{}
		if err := decodeJSON(body, &patch); err != nil {
			writeError(w, errBadRequest("error decoding patch: %v", err))
			return
		}
		newObj = func(cur obj) (obj, bool, error) {
			var out interface{}
			var err error
			if patchType == "application/json-patch+json" {
				ops, ok := patch.([]interface{})
				if !ok {
					return nil, false, errBadRequest("the JSON patch must be an array of operations")
				}
				out, err = applyJSONPatch(clone(cur), ops)
				if err != nil {
					return nil, false, &apiError{code: 422, reason: "Invalid", message: err.Error()}
				}
			} else {
				if _, ok := patch.(obj); !ok {
					return nil, false, errBadRequest("the merge patch must be a JSON object")
				}
				out = mergePatch(clone(cur), patch)
			}
			o, ok := out.(obj)
			if !ok {
				return nil, false, errBadRequest("the patch did not leave an object")
			}
			rv := str(o, "metadata", "resourceVersion")
			return o, rv != "" && rv != str(cur, "metadata", "resourceVersion") || patchSetsRV(patch), nil
		}
	}
	for attempt := 0; ; attempt++ {
		cur, ok := s.store.get(res, ns, name)
		if !ok {
			writeError(w, errNotFound(res, name))
			return
		}
		curRV := str(cur, "metadata", "resourceVersion")
		o, pinned, err := newObj(cur)
		if err != nil {
			writeError(w, err)
			return
		}
		if pinned && str(o, "metadata", "resourceVersion") != curRV {
			writeError(w, errConflict(res, name))
			return
		}
		if str(o, "metadata", "name") != name {
			writeError(w, errBadRequest("the name of the object (%s) does not match the name on the URL (%s)", str(o, "metadata", "name"), name))
			return
		}
		o["kind"], o["apiVersion"] = res.kind, res.groupVersion()
		if sub == "status" {
			// /status changes .status only.
			st, has := o["status"]
			o = clone(cur)
			if has && st != nil {
				o["status"] = st
			} else {
				delete(o, "status")
			}
		} else {
			m, cm := meta(o), meta(cur)
			for _, k := range []string{"uid", "creationTimestamp", "generation", "namespace", "deletionTimestamp"} {
				if v, ok := cm[k]; ok {
					m[k] = v
				} else {
					delete(m, k)
				}
			}
			if res.status {
				if st, ok := cur["status"]; ok {
					o["status"] = st
				} else {
					delete(o, "status")
				}
			}
			if res.admission {
				dryRun := r.URL.Query().Get("dryRun") == "All"
				if o, err = s.admit(r, user, res, "UPDATE", o, cur, dryRun); err != nil {
					writeError(w, err)
					return
				}
			}
			if res.custom && specChanged(cur, o) {
				g, _ := strconv.ParseInt(fmt.Sprint(cm["generation"]), 10, 64)
				meta(o)["generation"] = json.Number(strconv.FormatInt(g+1, 10))
			}
		}
		if err := validate(res, o); err != nil {
			writeError(w, err)
			return
		}
		if r.URL.Query().Get("dryRun") == "All" {
			writeJSON(w, 200, o)
			return
		}
		stored, err := s.store.replace(res, ns, name, curRV, o)
		if e, isAPI := err.(*apiError); isAPI && e.reason == "Conflict" && !pinned && attempt < 5 {
			continue
		}
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, 200, stored)
		return
	}
}

// patchSetsRV: the patch itself names metadata.resourceVersion (a
// precondition), whatever value it sets.
func patchSetsRV(patch interface{}) bool {
	switch p := patch.(type) {
	case obj:
		m, _ := p["metadata"].(obj)
		_, ok := m["resourceVersion"]
		return ok
	case []interface{}:
		for _, op := range p {
			if m, ok := op.(obj); ok && strings.HasPrefix(fmt.Sprint(m["path"]), "/metadata/resourceVersion") {
				return true
			}
		}
	}
	return false
}

// specChanged: anything outside metadata and status differs (what bumps a
// custom resource's generation; for a Cluster that is its token).
func specChanged(a, b obj) bool {
	strip := func(o obj) interface{} {
		c := clone(o)
		delete(c, "metadata")
		delete(c, "status")
		return normalize(c)
	}
	return !reflect.DeepEqual(strip(a), strip(b))
}

// ---- delete ----

func (s *server) serveDelete(w http.ResponseWriter, r *http.Request, res *resource, ns, name string) {
	body, err := readBody(r)
	if err != nil {
		writeError(w, err)
		return
	}
	var opts struct {
		Preconditions struct {
			UID             string `json:"uid"`
			ResourceVersion string `json:"resourceVersion"`
		} `json:"preconditions"`
	}
	if len(strings.TrimSpace(string(body))) > 0 {
		if err := json.Unmarshal(body, &opts); err != nil {
			writeError(w, errBadRequest("decoding DeleteOptions: %v", err))
			return
		}
	}
	if r.URL.Query().Get("dryRun") == "All" {
		o, ok := s.store.get(res, ns, name)
		if !ok {
			writeError(w, errNotFound(res, name))
			return
		}
		writeJSON(w, 200, o)
		return
	}
	o, err := s.store.remove(res, ns, name, opts.Preconditions.UID, opts.Preconditions.ResourceVersion)
	if err != nil {
		writeError(w, err)
		return
	}
	// No finalizers here: the object is gone at once and the answer is the
	// object as it was deleted.
	writeJSON(w, 200, o)
}
