package main

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
)

// mergePatch applies an RFC 7386 JSON merge patch: objects merge key by
// key, null removes a key, anything else replaces.
func mergePatch(target, patch interface{}) interface{} {
	p, ok := patch.(obj)
	if !ok {
		return patch
	}
	t, ok := target.(obj)
	if !ok {
		t = obj{}
	}
	for k, v := range p {
		if v == nil {
			delete(t, k)
		} else {
			t[k] = mergePatch(t[k], v)
		}
	}
	return t
}

// applyJSONPatch applies RFC 6902 operations (add, remove, replace, move,
// copy, test) to doc, which it may change in place; it returns the result.
func applyJSONPatch(doc interface{}, ops []interface{}) (interface{}, error) {
	for i, raw := range ops {
		op, ok := raw.(obj)
		if !ok {
			return nil, fmt.Errorf("json patch operation %d is not an object", i)
		}
		name, _ := op["op"].(string)
		path, ok := op["path"].(string)
		if !ok {
			return nil, fmt.Errorf("json patch operation %d (%s): missing path", i, name)
		}
		toks, err := pointer(path)
		if err != nil {
			return nil, err
		}
		value, hasValue := op["value"]
		switch name {
		case "add", "replace", "test":
			if !hasValue {
				return nil, fmt.Errorf("json patch %s operation does not apply: missing value", name)
			}
		}
		switch name {
		case "add":
			doc, err = addAt(doc, toks, value)
		case "remove":
			doc, _, err = removeAt(doc, toks)
		case "replace":
			if _, err = getAt(doc, toks); err == nil {
				if doc, _, err = removeAt(doc, toks); err == nil {
					doc, err = addAt(doc, toks, value)
				}
			}
		case "move", "copy":
			from, ok := op["from"].(string)
			if !ok {
				return nil, fmt.Errorf("json patch %s operation: missing from", name)
			}
			ftoks, err2 := pointer(from)
			if err2 != nil {
				return nil, err2
			}
			var v interface{}
			if name == "move" {
				doc, v, err = removeAt(doc, ftoks)
			} else {
				v, err = getAt(doc, ftoks)
				if err == nil {
					v = cloneValue(v)
				}
			}
			if err == nil {
				doc, err = addAt(doc, toks, v)
			}
		case "test":
			var cur interface{}
			if cur, err = getAt(doc, toks); err == nil && !reflect.DeepEqual(normalizeValue(cur), normalizeValue(value)) {
				err = fmt.Errorf("testing value %s failed", path)
			}
		default:
			return nil, fmt.Errorf("unexpected kind of json patch operation: %q", name)
		}
		if err != nil {
			return nil, err
		}
	}
	return doc, nil
}

// pointer splits an RFC 6901 JSON pointer ("" is the whole document).
func pointer(p string) ([]string, error) {
	if p == "" {
		return nil, nil
	}
	if !strings.HasPrefix(p, "/") {
		return nil, fmt.Errorf("json pointer %q does not start with /", p)
	}
	toks := strings.Split(p[1:], "/")
	for i, t := range toks {
		toks[i] = strings.ReplaceAll(strings.ReplaceAll(t, "~1", "/"), "~0", "~")
	}
	return toks, nil
}

func index(t string, n int, allowEnd bool) (int, error) {
	if allowEnd && t == "-" {
		return n, nil
	}
	i, err := strconv.Atoi(t)
	if err != nil || i < 0 || (t != "0" && strings.HasPrefix(t, "0")) {
		return 0, fmt.Errorf("invalid array index %q", t)
	}
	max := n - 1
	if allowEnd {
		max = n
	}
	if i > max {
		return 0, fmt.Errorf("array index %d out of bounds", i)
	}
	return i, nil
}

func getAt(doc interface{}, toks []string) (interface{}, error) {
	cur := doc
	for _, t := range toks {
		switch c := cur.(type) {
		case obj:
			v, ok := c[t]
			if !ok {
				return nil, fmt.Errorf("doc is missing path: %q", "/"+strings.Join(toks, "/"))
			}
			cur = v
		case []interface{}:
			i, err := index(t, len(c), false)
			if err != nil {
				return nil, err
			}
			cur = c[i]
		default:
			return nil, fmt.Errorf("doc is missing path: %q", "/"+strings.Join(toks, "/"))
		}
	}
	return cur, nil
}

// update rebuilds the path to toks' parent, letting f change the parent
// (a slice may grow or shrink, so each level stores the new child back).
func update(doc interface{}, toks []string, f func(parent interface{}, last string) (interface{}, error)) (interface{}, error) {
	if len(toks) == 1 {
		return f(doc, toks[0])
	}
	child, err := getAt(doc, toks[:1])
	if err != nil {
		return nil, err
	}
	nc, err := update(child, toks[1:], f)
	if err != nil {
		return nil, err
	}
	switch c := doc.(type) {
	case obj:
		c[toks[0]] = nc
	case []interface{}:
		i, _ := index(toks[0], len(c), false)
		c[i] = nc
	}
	return doc, nil
}

func addAt(doc interface{}, toks []string, v interface{}) (interface{}, error) {
	if len(toks) == 0 {
		return v, nil
	}
	return update(doc, toks, func(parent interface{}, last string) (interface{}, error) {
		switch p := parent.(type) {
		case obj:
			p[last] = v
			return p, nil
		case []interface{}:
			i, err := index(last, len(p), true)
			if err != nil {
				return nil, err
			}
			out := append(append(append([]interface{}{}, p[:i]...), v), p[i:]...)
			return out, nil
		}
		return nil, fmt.Errorf("add operation does not apply: the parent of %q is not a container", last)
	})
}

func removeAt(doc interface{}, toks []string) (interface{}, interface{}, error) {
	if len(toks) == 0 {
		return nil, nil, fmt.Errorf("cannot remove the whole document")
	}
	var removed interface{}
	out, err := update(doc, toks, func(parent interface{}, last string) (interface{}, error) {
		switch p := parent.(type) {
		case obj:
			v, ok := p[last]
			if !ok {
				return nil, fmt.Errorf("remove operation does not apply: doc is missing key: %q", last)
			}
			removed = v
			delete(p, last)
			return p, nil
		case []interface{}:
			i, err := index(last, len(p), false)
			if err != nil {
				return nil, err
			}
			removed = p[i]
			return append(append([]interface{}{}, p[:i]...), p[i+1:]...), nil
		}
		return nil, fmt.Errorf("remove operation does not apply: the parent of %q is not a container", last)
	})
	return out, removed, err
}

func cloneValue(v interface{}) interface{} {
	var out interface{}
	if err := decodeJSON(mustJSON(v), &out); err != nil {
		panic(err)
	}
	return out
}

func normalizeValue(v interface{}) interface{} { return normalize(obj{"v": v}) }
