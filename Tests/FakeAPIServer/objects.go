package main

import (
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"
)

// The object shapes below are the JSON of core/v1 as kube-apiserver writes
// it, trimmed to the fields kubectl reads (printers, exec's container
// choice, port-forward's phase check). Field order follows the real types so
// "-o json" looks familiar.

type typeMeta struct {
	Kind       string `json:"kind,omitempty"`
	APIVersion string `json:"apiVersion,omitempty"`
}

type objectMeta struct {
	Name              string            `json:"name,omitempty"`
	Namespace         string            `json:"namespace,omitempty"`
	UID               string            `json:"uid,omitempty"`
	ResourceVersion   string            `json:"resourceVersion,omitempty"`
	CreationTimestamp string            `json:"creationTimestamp,omitempty"`
	Labels            map[string]string `json:"labels,omitempty"`
	Annotations       map[string]string `json:"annotations,omitempty"`
}

type container struct {
	Name  string          `json:"name"`
	Image string          `json:"image"`
	Ports []containerPort `json:"ports,omitempty"`
}

type containerPort struct {
	Name          string `json:"name,omitempty"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
}

type podSpec struct {
	Containers    []container `json:"containers"`
	RestartPolicy string      `json:"restartPolicy"`
	NodeName      string      `json:"nodeName"`
}

type containerStatus struct {
	Name         string                       `json:"name"`
	State        map[string]map[string]string `json:"state"`
	Ready        bool                         `json:"ready"`
	RestartCount int                          `json:"restartCount"`
	Image        string                       `json:"image"`
	ImageID      string                       `json:"imageID"`
	ContainerID  string                       `json:"containerID"`
	Started      bool                         `json:"started"`
}

type podStatus struct {
	Phase             string            `json:"phase"`
	HostIP            string            `json:"hostIP"`
	PodIP             string            `json:"podIP"`
	StartTime         string            `json:"startTime"`
	ContainerStatuses []containerStatus `json:"containerStatuses"`
}

type pod struct {
	typeMeta
	Metadata objectMeta `json:"metadata"`
	Spec     podSpec    `json:"spec"`
	Status   podStatus  `json:"status"`
}

type configMap struct {
	typeMeta
	Metadata   objectMeta        `json:"metadata"`
	Data       map[string]string `json:"data,omitempty"`
	BinaryData map[string][]byte `json:"binaryData,omitempty"`
}

type namespace struct {
	typeMeta
	Metadata objectMeta          `json:"metadata"`
	Spec     map[string][]string `json:"spec"`
	Status   map[string]string   `json:"status"`
}

// object is what the store keeps: any of the kinds above.
type object interface{ meta() *objectMeta }

func (p *pod) meta() *objectMeta       { return &p.Metadata }
func (c *configMap) meta() *objectMeta { return &c.Metadata }
func (n *namespace) meta() *objectMeta { return &n.Metadata }

// watchEvent is one line of a watch stream (metav1.WatchEvent).
type watchEvent struct {
	Type   string
	Object object
}

// watcher receives the events of one resource, optionally in one namespace.
type watcher struct {
	resource  string
	namespace string // "" = all namespaces
	ch        chan watchEvent
}

// store holds every object in memory, keyed by resource, then
// "namespace/name". One resourceVersion counter for all, as etcd has.
type store struct {
	mu       sync.Mutex
	rv       int64
	objs     map[string]map[string]object
	watchers map[*watcher]struct{}
	uidSeq   int
}

// firstRV is where resourceVersions start: well above "1", which a watch
// uses to ask for a compacted (410 Expired) revision.
const firstRV = 1000

func newStore() *store {
	s := &store{rv: firstRV, objs: map[string]map[string]object{}, watchers: map[*watcher]struct{}{}}
	for _, r := range resources {
		s.objs[r.name] = map[string]object{}
	}
	started := time.Now().Add(-3 * time.Hour)
	for _, ns := range []string{"default", "kube-system"} {
		s.add("namespaces", &namespace{
			typeMeta: typeMeta{"Namespace", "v1"},
			Metadata: objectMeta{Name: ns, CreationTimestamp: rfc3339(started.Add(-time.Hour)),
				Labels: map[string]string{"kubernetes.io/metadata.name": ns}},
			Spec:   map[string][]string{"finalizers": {"kubernetes"}},
			Status: map[string]string{"phase": "Active"},
		})
	}
	seed := []struct{ ns, name, image string }{
		{"default", "web-0", "nginx:1.27"},
		{"default", "web-1", "nginx:1.27"},
		{"default", "api-7d4b9c8f6-x2x9z", "example/api:2.3"},
		{"kube-system", "coredns-5d78c9869d-abcde", "registry.k8s.io/coredns/coredns:v1.11.1"},
		{"kube-system", "etcd-node-1", "registry.k8s.io/etcd:3.5.12-0"},
		{"kube-system", "kube-apiserver-node-1", "registry.k8s.io/kube-apiserver:v1.30.0"},
	}
	for i, p := range seed {
		s.add("pods", newPod(p.ns, p.name, p.image, started.Add(time.Duration(i)*time.Minute)))
	}
	s.add("configmaps", &configMap{typeMeta: typeMeta{"ConfigMap", "v1"},
		Metadata: objectMeta{Name: "kube-root-ca.crt", Namespace: "default", CreationTimestamp: rfc3339(started)},
		Data:     map[string]string{"ca.crt": "-----BEGIN CERTIFICATE-----\nfake\n-----END CERTIFICATE-----\n"}})
	s.addFixed("configmaps", bigConfigMap())
	return s
}

// newPod builds a Running single-container pod on node-1.
func newPod(ns, name, image string, started time.Time) *pod {
	cname := image
	if i := lastIndexAny(cname, "/"); i >= 0 {
		cname = cname[i+1:]
	}
	if i := lastIndexAny(cname, ":"); i >= 0 {
		cname = cname[:i]
	}
	return &pod{
		typeMeta: typeMeta{"Pod", "v1"},
		Metadata: objectMeta{Name: name, Namespace: ns, CreationTimestamp: rfc3339(started),
			Labels: map[string]string{"app": cname}},
		Spec: podSpec{
			Containers:    []container{{Name: cname, Image: image, Ports: []containerPort{{Name: "http", ContainerPort: 80, Protocol: "TCP"}}}},
			RestartPolicy: "Always", NodeName: "node-1",
		},
		Status: podStatus{
			Phase: "Running", HostIP: "10.0.0.11", PodIP: fmt.Sprintf("10.244.0.%d", 10+len(name)%200),
			StartTime: rfc3339(started),
			ContainerStatuses: []containerStatus{{
				Name: cname, Ready: true, Started: true, Image: image,
				ImageID:     "docker.io/library/" + image + "@sha256:0000",
				ContainerID: "containerd://" + fmt.Sprintf("%064x", len(name)),
				State:       map[string]map[string]string{"running": {"startedAt": rfc3339(started.Add(5 * time.Second))}},
			}},
		},
	}
}

func lastIndexAny(s, chars string) int {
	for i := len(s) - 1; i >= 0; i-- {
		for j := 0; j < len(chars); j++ {
			if s[i] == chars[j] {
				return i
			}
		}
	}
	return -1
}

func rfc3339(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func key(ns, name string) string { return ns + "/" + name }

// add stores obj under a fresh resourceVersion and uid and tells watchers.
// The caller must not hold s.mu.
func (s *store) add(resource string, obj object) (object, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := obj.meta()
	k := key(m.Namespace, m.Name)
	if _, exists := s.objs[resource][k]; exists {
		return nil, false
	}
	s.rv++
	s.uidSeq++
	m.ResourceVersion = strconv.FormatInt(s.rv, 10)
	m.UID = fmt.Sprintf("6b1f0e2c-0000-4000-8000-%012d", s.uidSeq)
	if m.CreationTimestamp == "" {
		m.CreationTimestamp = rfc3339(time.Now())
	}
	s.objs[resource][k] = obj
	s.notify(resource, watchEvent{"ADDED", obj})
	return obj, true
}

// addFixed stores obj with the metadata it already carries (the big
// configmap: its raw JSON digest must not depend on start-up order).
func (s *store) addFixed(resource string, obj object) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := obj.meta()
	s.objs[resource][key(m.Namespace, m.Name)] = obj
}

func (s *store) remove(resource, ns, name string) (object, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := key(ns, name)
	obj, ok := s.objs[resource][k]
	if !ok {
		return nil, false
	}
	delete(s.objs[resource], k)
	s.rv++
	// The DELETED event carries the object at the deletion's revision, as etcd3's watcher does.
	obj.meta().ResourceVersion = strconv.FormatInt(s.rv, 10)
	s.notify(resource, watchEvent{"DELETED", obj})
	return obj, true
}

func (s *store) get(resource, ns, name string) (object, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	obj, ok := s.objs[resource][key(ns, name)]
	return obj, ok
}

// list returns the objects of one namespace ("" = all), sorted by
// namespace then name as the apiserver's etcd key order gives, and the
// current resourceVersion.
func (s *store) list(resource, ns string) ([]object, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []object
	for _, obj := range s.objs[resource] {
		if ns == "" || obj.meta().Namespace == ns {
			out = append(out, obj)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].meta(), out[j].meta()
		return key(a.Namespace, a.Name) < key(b.Namespace, b.Name)
	})
	return out, strconv.FormatInt(s.rv, 10)
}

// watch registers a watcher; the events of objects changed after this call
// arrive on w.ch. The returned snapshot lets a watch from resourceVersion 0
// start with synthetic ADDED events, as the watch cache does.
func (s *store) watch(resource, ns string) (*watcher, []object) {
	snapshot, _ := s.list(resource, ns)
	s.mu.Lock()
	defer s.mu.Unlock()
	w := &watcher{resource: resource, namespace: ns, ch: make(chan watchEvent, 1024)}
	s.watchers[w] = struct{}{}
	return w, snapshot
}

func (s *store) unwatch(w *watcher) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.watchers, w)
}

// notify runs with s.mu held. A watcher too slow to take 1024 events is
// dropped (its channel closed), as the apiserver terminates slow watchers;
// the client then re-lists.
func (s *store) notify(resource string, ev watchEvent) {
	for w := range s.watchers {
		if w.resource != resource || (w.namespace != "" && w.namespace != ev.Object.meta().Namespace) {
			continue
		}
		select {
		case w.ch <- ev:
		default:
			delete(s.watchers, w)
			close(w.ch)
		}
	}
}
