package main

import (
	"crypto/sha256"
	"fmt"
	"net/http"
)

// OpenAPI v3, just enough for "kubectl apply/create -f" with default
// validation (1.29+). kubectl reads the index /openapi/v3, fetches the
// group-version document it points to, and looks for the PATCH operation
// whose x-kubernetes-group-version-kind names the object's kind and which
// lists the "fieldValidation" query parameter; when it finds one it trusts
// the server to validate (fieldValidation=Strict) instead of downloading
// /openapi/v2 to validate client-side. The schemas are open objects: we never reject
// fields, nor does kubectl on our behalf.
//
// OpenAPI v2 (/openapi/v2, protobuf only, read by 1.27 and 1.28) is not
// served: those versions need --validate=false for apply/create -f.

func openAPIv3Doc() map[string]interface{} {
	schemas := map[string]interface{}{}
	paths := map[string]interface{}{}
	for _, r := range resources {
		gvk := map[string]string{"group": "", "kind": r.kind, "version": "v1"}
		op := func(id string) map[string]interface{} {
			return map[string]interface{}{
				"operationId":                     id + "CoreV1" + r.kind,
				"x-kubernetes-group-version-kind": gvk,
				"parameters": []map[string]interface{}{
					{"name": "dryRun", "in": "query", "schema": map[string]string{"type": "string"}},
					{"name": "fieldManager", "in": "query", "schema": map[string]string{"type": "string"}},
					{"name": "fieldValidation", "in": "query", "schema": map[string]string{"type": "string"}},
				},
			}
		}
		item, collection := "/api/v1/"+r.name+"/{name}", "/api/v1/"+r.name
		if r.namespaced {
			item, collection = "/api/v1/namespaces/{namespace}/"+r.name+"/{name}", "/api/v1/namespaces/{namespace}/"+r.name
		}
		paths[item] = map[string]interface{}{"patch": op("patch"), "put": op("replace")}
		paths[collection] = map[string]interface{}{"post": op("create")}
		schemas["io.k8s.api.core.v1."+r.kind] = map[string]interface{}{
			"type":                                 "object",
			"description":                          r.kind + " (fakeapi: fields are not validated)",
			"x-kubernetes-preserve-unknown-fields": true,
			"x-kubernetes-group-version-kind":      []map[string]string{{"group": "", "kind": r.kind, "version": "v1"}},
		}
	}
	return map[string]interface{}{
		"openapi":    "3.0.0",
		"info":       map[string]string{"title": "Kubernetes", "version": "v1.30.0"},
		"paths":      paths,
		"components": map[string]interface{}{"schemas": schemas},
	}
}

var openAPIv3Body = mustJSON(openAPIv3Doc())

// serveOpenAPIv3 answers the index and the "api/v1" document.
func serveOpenAPIv3(w http.ResponseWriter, r *http.Request, path string) {
	switch path {
	case "/openapi/v3":
		hash := fmt.Sprintf("%X", sha256.Sum256(openAPIv3Body))
		writeJSON(w, 200, map[string]interface{}{"paths": map[string]interface{}{
			"api/v1": map[string]string{"serverRelativeURL": "/openapi/v3/api/v1?hash=" + hash},
		}})
	case "/openapi/v3/api/v1":
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(200)
		w.Write(openAPIv3Body)
	default:
		writeStatus(w, http.StatusNotFound, "NotFound", "the server could not find the requested resource", map[string]interface{}{})
	}
}
