package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"strings"
	"sync"
	"time"
)

// server routes requests; one per process (and one per unit test).
type server struct {
	cfg   *config
	store *store

	mu     sync.Mutex
	faults []*fault
	counts map[string]int
}

// fault is one POST /_fake/faults entry: requests whose path starts with
// PathPrefix wait DelayMs, then get Status (when not 0) instead of their
// answer. Count requests are hit, then the fault is gone; 0 means until
// DELETE /_fake/faults.
type fault struct {
	PathPrefix string `json:"pathPrefix"`
	DelayMs    int    `json:"delayMs"`
	Status     int    `json:"status"`
	Count      int    `json:"count"`
}

func newServer(cfg *config) *server {
	return &server{cfg: cfg, store: newStore(cfg.history), counts: map[string]int{}}
}

// recorder remembers the status for the -v log line; it keeps Flush so
// watches still stream through it.
type recorder struct {
	http.ResponseWriter
	r      *http.Request
	status int
	log    bool
}

func (w *recorder) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
		if w.log {
			// Method, target and status only: a token never travels in the
			// target (bearer tokens are headers, TokenReview tokens bodies).
			log.Printf("%s %s %d", w.r.Method, w.r.URL.RequestURI(), code)
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *recorder) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

func (w *recorder) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *server) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	w := &recorder{ResponseWriter: rw, r: r, log: s.cfg.verbose}
	isControl := strings.HasPrefix(r.URL.Path, "/_fake/")
	if !isControl {
		s.mu.Lock()
		s.counts[r.Method+" "+r.URL.Path]++
		s.mu.Unlock()
	}
	user, ok := s.authenticate(r)
	if !ok {
		writeStatus(w, http.StatusUnauthorized, "Unauthorized", "Unauthorized", nil)
		return
	}
	if isControl {
		s.serveControl(w, r, strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/_fake/"), "/"))
		return
	}
	if f := s.takeFault(r.URL.Path); f != nil {
		if f.DelayMs > 0 {
			select {
			case <-time.After(time.Duration(f.DelayMs) * time.Millisecond):
			case <-r.Context().Done():
				return
			}
		}
		if f.Status != 0 {
			writeStatus(w, f.Status, reasonFor(f.Status), fmt.Sprintf("injected fault: %d", f.Status), nil)
			return
		}
	}
	s.route(w, r, user)
}

// authenticate accepts "Bearer <token>" for a token of --tokens; the scheme
// is case-insensitive as in the apiserver's bearer authenticator.
func (s *server) authenticate(r *http.Request) (userInfo, bool) {
	if r.Header.Get("Authorization") == "" && r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		// A verified client certificate (--client-ca): CN is the user, O the groups.
		leaf := r.TLS.VerifiedChains[0][0]
		groups := append([]string{}, leaf.Subject.Organization...)
		return userInfo{Username: leaf.Subject.CommonName, Groups: append(groups, "system:authenticated")}, true
	}
	parts := strings.SplitN(r.Header.Get("Authorization"), " ", 2)
	if len(parts) != 2 || !strings.EqualFold(parts[0], "bearer") {
		return userInfo{}, false
	}
	u, ok := s.cfg.tokens[strings.TrimSpace(parts[1])]
	return u, ok
}

func (s *server) takeFault(path string) *fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, f := range s.faults {
		if strings.HasPrefix(path, f.PathPrefix) {
			if f.Count > 0 {
				f.Count--
				if f.Count == 0 {
					s.faults = append(s.faults[:i:i], s.faults[i+1:]...)
				}
			}
			c := *f
			return &c
		}
	}
	return nil
}

// serveControl is the test-only surface under /_fake/.
func (s *server) serveControl(w http.ResponseWriter, r *http.Request, what string) {
	switch {
	case what == "faults" && r.Method == http.MethodPost:
		f := &fault{}
		if err := json.NewDecoder(r.Body).Decode(f); err != nil || f.Count < 0 || (f.Status != 0 && (f.Status < 400 || f.Status > 599)) {
			writeStatus(w, http.StatusBadRequest, "BadRequest", `want {"pathPrefix":"/apis/...","delayMs":N,"status":4xx|5xx|0,"count":N}`, nil)
			return
		}
		s.mu.Lock()
		s.faults = append(s.faults, f)
		s.mu.Unlock()
		writeJSON(w, http.StatusCreated, f)
	case what == "faults" && r.Method == http.MethodDelete:
		s.mu.Lock()
		s.faults = nil
		s.mu.Unlock()
		writeSuccess(w)
	case what == "requests" && r.Method == http.MethodGet:
		s.mu.Lock()
		b := mustJSON(s.counts)
		s.mu.Unlock()
		writeRaw(w, http.StatusOK, b)
	case what == "requests" && r.Method == http.MethodDelete:
		s.mu.Lock()
		s.counts = map[string]int{}
		s.mu.Unlock()
		writeSuccess(w)
	case what == "compact" && r.Method == http.MethodPost:
		rv := s.store.compact()
		writeJSON(w, http.StatusOK, map[string]string{"compactedResourceVersion": fmt.Sprint(rv)})
	case what == "close-watches" && r.Method == http.MethodPost:
		n := s.store.closeWatches()
		writeJSON(w, http.StatusOK, map[string]int{"closed": n})
	case what == "webhooks" && r.Method == http.MethodPost:
		// Where the admission webhooks are, for a test that starts the
		// webhook server after this fake (its port is not known before).
		var hooks struct {
			Mutating   *string `json:"mutating"`
			Validating *string `json:"validating"`
		}
		if err := json.NewDecoder(r.Body).Decode(&hooks); err != nil {
			writeStatus(w, http.StatusBadRequest, "BadRequest", `want {"mutating":"https://...","validating":"https://..."} ("" turns one off)`, nil)
			return
		}
		s.mu.Lock()
		if hooks.Mutating != nil {
			s.cfg.mutatingURL = *hooks.Mutating
		}
		if hooks.Validating != nil {
			s.cfg.validatingURL = *hooks.Validating
		}
		s.mu.Unlock()
		writeSuccess(w)
	case what == "faults" || what == "requests" || what == "compact" || what == "close-watches" || what == "webhooks":
		methodNotAllowed(w)
	default:
		notFoundPath(w)
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

func writeRaw(w http.ResponseWriter, code int, b []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", fmt.Sprint(len(b)))
	w.WriteHeader(code)
	w.Write(b)
}

func writeJSON(w http.ResponseWriter, code int, v interface{}) { writeRaw(w, code, mustJSON(v)) }

// status is metav1.Status with the apiserver's field order.
type status struct {
	Kind       string                 `json:"kind"`
	APIVersion string                 `json:"apiVersion"`
	Metadata   struct{}               `json:"metadata"`
	Status     string                 `json:"status"`
	Message    string                 `json:"message,omitempty"`
	Reason     string                 `json:"reason,omitempty"`
	Details    map[string]interface{} `json:"details,omitempty"`
	Code       int                    `json:"code"`
}

func statusBody(code int, reason, message string, details map[string]interface{}) *status {
	return &status{Kind: "Status", APIVersion: "v1", Status: "Failure", Message: message, Reason: reason, Details: details, Code: code}
}

func writeStatus(w http.ResponseWriter, code int, reason, message string, details map[string]interface{}) {
	writeJSON(w, code, statusBody(code, reason, message, details))
}

func writeSuccess(w http.ResponseWriter) {
	writeJSON(w, http.StatusOK, &status{Kind: "Status", APIVersion: "v1", Status: "Success", Code: 200})
}

// apiError is an error that knows its Status.
type apiError struct {
	code    int
	reason  string
	message string
	details map[string]interface{}
}

func (e *apiError) Error() string { return e.message }

func writeError(w http.ResponseWriter, err error) {
	if e, ok := err.(*apiError); ok {
		writeStatus(w, e.code, e.reason, e.message, e.details)
		return
	}
	writeStatus(w, http.StatusInternalServerError, "InternalError", "Internal error occurred: "+err.Error(), nil)
}

func errBadRequest(format string, a ...interface{}) *apiError {
	return &apiError{code: 400, reason: "BadRequest", message: fmt.Sprintf(format, a...)}
}

func errNotFound(res *resource, name string) *apiError {
	return &apiError{code: 404, reason: "NotFound", message: fmt.Sprintf("%s %q not found", res.qualified(), name),
		details: map[string]interface{}{"name": name, "group": res.group, "kind": res.name}}
}

func errConflict(res *resource, name string) *apiError {
	return &apiError{code: 409, reason: "Conflict",
		message: fmt.Sprintf("Operation cannot be fulfilled on %s %q: the object has been modified; please apply your changes to the latest version and try again", res.qualified(), name),
		details: map[string]interface{}{"name": name, "group": res.group, "kind": res.name}}
}

func errAlreadyExists(res *resource, name string) *apiError {
	return &apiError{code: 409, reason: "AlreadyExists", message: fmt.Sprintf("%s %q already exists", res.qualified(), name),
		details: map[string]interface{}{"name": name, "group": res.group, "kind": res.name}}
}

func errInvalid(res *resource, name, field, detail string) *apiError {
	return &apiError{code: 422, reason: "Invalid", message: fmt.Sprintf("%s %q is invalid: %s: %s", res.kind, name, field, detail),
		details: map[string]interface{}{"name": name, "group": res.group, "kind": res.kind,
			"causes": []map[string]string{{"reason": "FieldValueInvalid", "message": detail, "field": field}}}}
}

func errExpired(message string) *apiError {
	return &apiError{code: 410, reason: "Expired", message: message}
}

func notFoundPath(w http.ResponseWriter) {
	writeStatus(w, http.StatusNotFound, "NotFound", "the server could not find the requested resource", map[string]interface{}{})
}

func methodNotAllowed(w http.ResponseWriter) {
	writeStatus(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "the server does not allow this method on the requested resource", map[string]interface{}{})
}

// reasonFor maps an HTTP status to the StatusReason the apiserver uses.
func reasonFor(code int) string {
	switch code {
	case 400:
		return "BadRequest"
	case 401:
		return "Unauthorized"
	case 403:
		return "Forbidden"
	case 404:
		return "NotFound"
	case 405:
		return "MethodNotAllowed"
	case 409:
		return "Conflict"
	case 410:
		return "Expired"
	case 422:
		return "Invalid"
	case 429:
		return "TooManyRequests"
	case 503:
		return "ServiceUnavailable"
	case 504:
		return "Timeout"
	default:
		if code >= 500 {
			return "InternalError"
		}
		return "Unknown"
	}
}

// decodeJSON reads a JSON body with numbers kept as written.
func decodeJSON(b []byte, v interface{}) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	return d.Decode(v)
}
