package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
)

// serveReview answers POST tokenreviews and subjectaccessreviews with 201
// and the review, its status filled in.
func (s *server) serveReview(w http.ResponseWriter, r *http.Request, res *resource) {
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
	spec, _ := o["spec"].(obj)
	if spec == nil {
		spec = obj{}
	}
	switch res.name {
	case "tokenreviews":
		token, _ := spec["token"].(string)
		if token == "" {
			writeError(w, errBadRequest("token is required for TokenReview in authentication"))
			return
		}
		auds := list(spec, "audiences")
		if len(auds) == 0 {
			// The apiserver answers with its own audiences when none were asked.
			auds = []interface{}{"https://kubernetes.default.svc.cluster.local"}
		}
		if u, ok := s.cfg.tokens[token]; ok {
			o["status"] = obj{"authenticated": true, "user": u, "audiences": auds}
		} else {
			// The error names no token.
			o["status"] = obj{"user": obj{}, "error": "invalid bearer token"}
		}
	case "subjectaccessreviews":
		var sp sarSpec
		if err := decodeJSON(mustJSON(spec), &sp); err != nil {
			writeError(w, errBadRequest("decoding spec: %v", err))
			return
		}
		if (sp.ResourceAttributes == nil) == (sp.NonResourceAttributes == nil) {
			writeError(w, errInvalid(res, "", "spec.resourceAttributes",
				"Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified"))
			return
		}
		if sp.User == "" && len(sp.Groups) == 0 {
			writeError(w, errInvalid(res, "", "spec.user", "Invalid value: \"\": at least one of user or group must be specified"))
			return
		}
		allowed, reason := s.authorize(sp)
		st := obj{"allowed": allowed}
		if reason != "" {
			st["reason"] = reason
		}
		o["status"] = st
	}
	meta(o)
	writeJSON(w, http.StatusCreated, o)
}

type sarSpec struct {
	User               string   `json:"user"`
	UID                string   `json:"uid"`
	Groups             []string `json:"groups"`
	ResourceAttributes *struct {
		Namespace   string `json:"namespace"`
		Verb        string `json:"verb"`
		Group       string `json:"group"`
		Resource    string `json:"resource"`
		Subresource string `json:"subresource"`
		Name        string `json:"name"`
	} `json:"resourceAttributes"`
	NonResourceAttributes *struct {
		Path string `json:"path"`
		Verb string `json:"verb"`
	} `json:"nonResourceAttributes"`
}

type policyRule struct {
	Verbs           []string `json:"verbs"`
	APIGroups       []string `json:"apiGroups"`
	Resources       []string `json:"resources"`
	ResourceNames   []string `json:"resourceNames"`
	NonResourceURLs []string `json:"nonResourceURLs"`
}

type clusterRole struct {
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Rules []policyRule `json:"rules"`
}

type clusterRoleBinding struct {
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Subjects []struct {
		Kind      string `json:"kind"`
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"subjects"`
	RoleRef struct {
		Kind string `json:"kind"`
		Name string `json:"name"`
	} `json:"roleRef"`
}

func has(list []string, v string) bool {
	for _, x := range list {
		if x == "*" || x == v {
			return true
		}
	}
	return false
}

// urlMatches is RBAC's NonResourceURLMatches: exact, "*" for all, or a
// prefix ending in "*".
func urlMatches(rules []string, path string) bool {
	for _, u := range rules {
		if u == "*" || u == path || (strings.HasSuffix(u, "*") && strings.HasPrefix(path, strings.TrimSuffix(u, "*"))) {
			return true
		}
	}
	return false
}

func (sp *sarSpec) ruleAllows(rule policyRule) bool {
	if nr := sp.NonResourceAttributes; nr != nil {
		return has(rule.Verbs, nr.Verb) && urlMatches(rule.NonResourceURLs, nr.Path)
	}
	ra := sp.ResourceAttributes
	res := ra.Resource
	if ra.Subresource != "" {
		res += "/" + ra.Subresource
	}
	return has(rule.Verbs, ra.Verb) && has(rule.APIGroups, ra.Group) && has(rule.Resources, res) &&
		(len(rule.ResourceNames) == 0 || has(rule.ResourceNames, ra.Name))
}

// authorize evaluates the review against the stored ClusterRoleBindings
// and ClusterRoles the way the RBAC authorizer does (members of
// system:masters may do anything), with its reason for an allow.
func (s *server) authorize(sp sarSpec) (bool, string) {
	if contains(sp.Groups, "system:masters") {
		return true, ""
	}
	roleRes, bindRes := resourceByKind("ClusterRole"), resourceByKind("ClusterRoleBinding")
	roles := map[string]clusterRole{}
	rs, _ := s.store.list(roleRes, "")
	for _, o := range rs {
		var cr clusterRole
		if json.Unmarshal(mustJSON(o), &cr) == nil {
			roles[cr.Metadata.Name] = cr
		}
	}
	bs, _ := s.store.list(bindRes, "")
	for _, o := range bs {
		var b clusterRoleBinding
		if json.Unmarshal(mustJSON(o), &b) != nil || b.RoleRef.Kind != "ClusterRole" {
			continue
		}
		for _, subj := range b.Subjects {
			var matched bool
			var who string
			switch subj.Kind {
			case "User":
				matched, who = sp.User == subj.Name, fmt.Sprintf("User %q", subj.Name)
			case "Group":
				matched, who = contains(sp.Groups, subj.Name), fmt.Sprintf("Group %q", subj.Name)
			case "ServiceAccount":
				matched = sp.User == "system:serviceaccount:"+subj.Namespace+":"+subj.Name
				who = fmt.Sprintf("ServiceAccount %q", subj.Namespace+"/"+subj.Name)
			}
			if !matched {
				continue
			}
			role, ok := roles[b.RoleRef.Name]
			if !ok {
				continue
			}
			for _, rule := range role.Rules {
				if sp.ruleAllows(rule) {
					return true, fmt.Sprintf("RBAC: allowed by ClusterRoleBinding %q of ClusterRole %q to %s", b.Metadata.Name, role.Metadata.Name, who)
				}
			}
		}
	}
	return false, ""
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}
