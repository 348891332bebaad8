package main

import (
	"fmt"
	"strings"
)

// The big object: configmap default/big whose one data value is 16 MiB of
// deterministic ASCII text, to check that large bodies cross the tunnel
// intact. Its metadata is fixed (not drawn from the store's counters), so
// both digests printed by --print-big-digest are stable across runs:
//
//	data: SHA-256 of the value of .data.big
//	      (kubectl get cm big -o jsonpath='{.data.big}' | sha256sum)
//	raw:  SHA-256 of the JSON body of GET /api/v1/namespaces/default/configmaps/big
//	      with a plain JSON Accept (kubectl get --raw ... | sha256sum)
const (
	bigKey  = "big"
	bigSize = 16 << 20
)

// bigLine is one 64-byte line: "%010d " then letters cycling with the line
// number, then "\n". No character needs JSON escaping, so the JSON body is
// the value plus a fixed envelope.
func bigLine(i int, sb *strings.Builder) {
	fmt.Fprintf(sb, "%010d ", i)
	for j := 0; j < 52; j++ {
		sb.WriteByte(byte('a' + (i+j)%26))
	}
	sb.WriteByte('\n')
}

var bigCache *configMap

func bigConfigMap() *configMap {
	if bigCache != nil {
		return bigCache
	}
	var sb strings.Builder
	sb.Grow(bigSize)
	for i := 0; i < bigSize/64; i++ {
		bigLine(i, &sb)
	}
	bigCache = &configMap{
		typeMeta: typeMeta{"ConfigMap", "v1"},
		Metadata: objectMeta{Name: "big", Namespace: "default", UID: "6b1f0e2c-0000-4000-8000-b16b16b16b16",
			ResourceVersion: "999", CreationTimestamp: "2024-01-01T00:00:00Z"},
		Data: map[string]string{bigKey: sb.String()},
	}
	return bigCache
}
