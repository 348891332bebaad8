package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
)

// admissionResponse is admission.k8s.io/v1 AdmissionResponse.
type admissionResponse struct {
	UID       string `json:"uid"`
	Allowed   bool   `json:"allowed"`
	PatchType string `json:"patchType"`
	Patch     []byte `json:"patch"` // base64 in JSON
	Result    *struct {
		Message string `json:"message"`
		Reason  string `json:"reason"`
		Code    int    `json:"code"`
	} `json:"status"`
	Warnings []string `json:"warnings"`
}

// admit runs the mutating, then the validating webhook on a CREATE or
// UPDATE (failurePolicy Fail, timeoutSeconds 10, sideEffects None), and
// returns the object as the mutating webhook's JSONPatch left it.
func (s *server) admit(r *http.Request, user userInfo, res *resource, op string, o, old obj, dryRun bool) (obj, error) {
	// The URLs come from the flags or, later, from POST /_fake/webhooks.
	s.mu.Lock()
	mutatingURL, validatingURL := s.cfg.mutatingURL, s.cfg.validatingURL
	s.mu.Unlock()
	for _, hook := range []struct {
		name, url string
		mutating  bool
	}{
		{s.cfg.mutatingName, mutatingURL, true},
		{s.cfg.validatingName, validatingURL, false},
	} {
		if hook.url == "" {
			continue
		}
		resp, err := s.callWebhook(hook.name, hook.url, user, res, op, o, old, dryRun)
		if err != nil {
			return nil, err
		}
		if !resp.Allowed {
			code, reason, msg := http.StatusForbidden, "", ""
			if resp.Result != nil {
				if resp.Result.Code != 0 {
					code = resp.Result.Code
				}
				reason, msg = resp.Result.Reason, resp.Result.Message
			}
			if msg == "" {
				msg = fmt.Sprintf("admission webhook %q denied the request without explanation", hook.name)
			} else {
				msg = fmt.Sprintf("admission webhook %q denied the request: %s", hook.name, msg)
			}
			if reason == "" {
				reason = reasonFor(code)
			}
			return nil, &apiError{code: code, reason: reason, message: msg}
		}
		if len(resp.Patch) == 0 {
			continue
		}
		if !hook.mutating {
			return nil, webhookFailure(hook.name, fmt.Errorf("validating webhook may not return a patch"))
		}
		if resp.PatchType != "JSONPatch" {
			return nil, webhookFailure(hook.name, fmt.Errorf("unsupported patch type %q", resp.PatchType))
		}
		var ops []interface{}
		if err := decodeJSON(resp.Patch, &ops); err != nil {
			return nil, webhookFailure(hook.name, fmt.Errorf("the patch is not a JSON patch: %v", err))
		}
		out, err := applyJSONPatch(clone(o), ops)
		if err != nil {
			return nil, webhookFailure(hook.name, err)
		}
		patched, ok := out.(obj)
		if !ok {
			return nil, webhookFailure(hook.name, fmt.Errorf("the patch did not leave an object"))
		}
		o = patched
	}
	return o, nil
}

func webhookFailure(name string, err error) *apiError {
	return &apiError{code: 500, reason: "InternalError",
		message: fmt.Sprintf("Internal error occurred: failed calling webhook %q: %v", name, err),
		details: map[string]interface{}{"causes": []map[string]string{{"message": fmt.Sprintf("failed calling webhook %q: %v", name, err)}}}}
}

func (s *server) callWebhook(name, hookURL string, user userInfo, res *resource, op string, o, old obj, dryRun bool) (*admissionResponse, error) {
	uid := newUID()
	gvk := obj{"group": res.group, "version": res.version, "kind": res.kind}
	gvr := obj{"group": res.group, "version": res.version, "resource": res.name}
	optKind := "CreateOptions"
	if op == "UPDATE" {
		optKind = "UpdateOptions"
	}
	var oldObject interface{}
	if old != nil {
		oldObject = old
	}
	review := obj{
		"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1",
		"request": obj{
			"uid": uid, "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
			"name": str(o, "metadata", "name"), "namespace": str(o, "metadata", "namespace"), "operation": op,
			"userInfo": user, "object": o, "oldObject": oldObject, "dryRun": dryRun,
			"options": obj{"kind": optKind, "apiVersion": "meta.k8s.io/v1"},
		},
	}
	// The apiserver tells the webhook its timeout in the query.
	u, err := url.Parse(hookURL)
	if err != nil {
		return nil, webhookFailure(name, err)
	}
	qv := u.Query()
	qv.Set("timeout", "10s")
	u.RawQuery = qv.Encode()
	req, _ := http.NewRequest(http.MethodPost, u.String(), bytes.NewReader(mustJSON(review)))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, */*")
	resp, err := s.cfg.webhookClient.Do(req)
	if err != nil {
		return nil, webhookFailure(name, fmt.Errorf("failed to call webhook: %v", err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, webhookFailure(name, fmt.Errorf("failed to call webhook: %v", err))
	}
	if resp.StatusCode != http.StatusOK {
		return nil, webhookFailure(name, fmt.Errorf("failed to call webhook: the server responded with status %d", resp.StatusCode))
	}
	var answer struct {
		Kind       string             `json:"kind"`
		APIVersion string             `json:"apiVersion"`
		Response   *admissionResponse `json:"response"`
	}
	if err := json.Unmarshal(body, &answer); err != nil {
		return nil, webhookFailure(name, fmt.Errorf("received invalid webhook response: %v", err))
	}
	if answer.Kind != "AdmissionReview" || answer.APIVersion != "admission.k8s.io/v1" {
		return nil, webhookFailure(name, fmt.Errorf("received invalid webhook response: expected admission.k8s.io/v1 AdmissionReview, got %s %s", answer.APIVersion, answer.Kind))
	}
	if answer.Response == nil {
		return nil, webhookFailure(name, fmt.Errorf("webhook response was absent"))
	}
	if answer.Response.UID != uid {
		return nil, webhookFailure(name, fmt.Errorf("expected response.uid=%q, got %q", uid, answer.Response.UID))
	}
	return answer.Response, nil
}
