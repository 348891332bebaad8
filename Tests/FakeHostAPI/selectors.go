package main

import (
	"fmt"
	"strings"
)

// requirement is one term of a label or field selector.
type requirement struct {
	key    string
	op     string // "=", "!=", "in", "notin", "exists", "!"
	values []string
}

type selectors struct {
	labels []requirement
	fields []requirement
}

// parseSelectors reads labelSelector (=, ==, !=, in, notin, key, !key)
// and fieldSelector (metadata.name and metadata.namespace with =, ==, !=;
// other fields are refused as the apiserver refuses them).
func parseSelectors(label, fieldSel string) (*selectors, error) {
	s := &selectors{}
	var err error
	if s.labels, err = parseLabelSelector(label); err != nil {
		return nil, errBadRequest("unable to parse requirement: %v", err)
	}
	for _, term := range splitTerms(fieldSel) {
		req, err := parseEquality(term)
		if err != nil || req.op == "exists" || req.op == "!" {
			return nil, errBadRequest("invalid selector: '%s'; can't understand '%s'", fieldSel, term)
		}
		if req.key != "metadata.name" && req.key != "metadata.namespace" {
			return nil, errBadRequest("field label not supported: %s", req.key)
		}
		s.fields = append(s.fields, req)
	}
	return s, nil
}

// splitTerms splits on commas outside parentheses.
func splitTerms(sel string) []string {
	var out []string
	depth, start := 0, 0
	for i, c := range sel {
		switch c {
		case '(':
			depth++
		case ')':
			depth--
		case ',':
			if depth == 0 {
				out = append(out, strings.TrimSpace(sel[start:i]))
				start = i + 1
			}
		}
	}
	if t := strings.TrimSpace(sel[start:]); t != "" || len(out) > 0 {
		out = append(out, t)
	}
	return out
}

func parseEquality(term string) (requirement, error) {
	for _, op := range []string{"!=", "==", "="} {
		if i := strings.Index(term, op); i >= 0 {
			k, v := strings.TrimSpace(term[:i]), strings.TrimSpace(term[i+len(op):])
			if k == "" {
				return requirement{}, fmt.Errorf("empty key in %q", term)
			}
			if op == "==" {
				op = "="
			}
			return requirement{key: k, op: op, values: []string{v}}, nil
		}
	}
	if strings.HasPrefix(term, "!") {
		return requirement{key: strings.TrimSpace(term[1:]), op: "!"}, nil
	}
	if term == "" || strings.ContainsAny(term, " ()") {
		return requirement{}, fmt.Errorf("cannot parse %q", term)
	}
	return requirement{key: term, op: "exists"}, nil
}

func parseLabelSelector(sel string) ([]requirement, error) {
	var out []requirement
	for _, term := range splitTerms(sel) {
		fields := strings.Fields(term)
		if len(fields) >= 2 && (fields[1] == "in" || fields[1] == "notin" || strings.HasPrefix(fields[1], "in(") || strings.HasPrefix(fields[1], "notin(")) {
			k := fields[0]
			rest := strings.TrimSpace(strings.TrimPrefix(term, k))
			op := "in"
			if strings.HasPrefix(rest, "notin") {
				op = "notin"
			}
			rest = strings.TrimSpace(strings.TrimPrefix(rest, op))
			if !strings.HasPrefix(rest, "(") || !strings.HasSuffix(rest, ")") {
				return nil, fmt.Errorf("expected a parenthesised set in %q", term)
			}
			var vals []string
			for _, v := range strings.Split(rest[1:len(rest)-1], ",") {
				vals = append(vals, strings.TrimSpace(v))
			}
			out = append(out, requirement{key: k, op: op, values: vals})
			continue
		}
		req, err := parseEquality(term)
		if err != nil {
			return nil, err
		}
		out = append(out, req)
	}
	return out, nil
}

func (r requirement) matches(v string, present bool) bool {
	switch r.op {
	case "exists":
		return present
	case "!":
		return !present
	case "=":
		return present && v == r.values[0]
	case "!=":
		return !present || v != r.values[0]
	case "in":
		if !present {
			return false
		}
		for _, x := range r.values {
			if x == v {
				return true
			}
		}
		return false
	case "notin":
		for _, x := range r.values {
			if present && x == v {
				return false
			}
		}
		return true
	}
	return false
}

func (s *selectors) matches(o obj) bool {
	labels, _ := field(o, "metadata", "labels").(obj)
	for _, req := range s.labels {
		v, present := labels[req.key]
		sv, _ := v.(string)
		if !req.matches(sv, present) {
			return false
		}
	}
	for _, req := range s.fields {
		if !req.matches(str(o, strings.Split(req.key, ".")...), true) {
			return false
		}
	}
	return true
}
