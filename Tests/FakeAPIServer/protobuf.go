package main

// A minimal reader for the Kubernetes protobuf encoding, enough to take a
// ConfigMap out of what "kubectl create configmap" POSTs. It does no I/O:
// every function takes the whole body and returns values pointing into it.
//
// Envelope (k8s.io/apimachinery/pkg/runtime/serializer/protobuf):
//
//	"k8s\x00" then a runtime.Unknown message:
//	  1: typeMeta  (TypeMeta: 1 apiVersion, 2 kind)
//	  2: raw       (the object's own message)
//	  3: contentEncoding, 4: contentType
//
// ConfigMap (k8s.io/api/core/v1/generated.proto): 1 metadata (ObjectMeta),
// 2 data map<string,string>, 3 binaryData map<string,bytes>, 4 immutable.
// ObjectMeta: 1 name, 2 generateName, 3 namespace, 11 labels, 12 annotations.
// A map field is a repeated entry message with 1 key and 2 value.

import (
	"errors"
	"fmt"
)

var protoMagic = []byte{'k', '8', 's', 0}

// Protobuf wire types (protobuf encoding spec, "Message Structure").
const (
	wireVarint  = 0
	wireFixed64 = 1
	wireBytes   = 2
	wireFixed32 = 5
)

var errTruncated = errors.New("protobuf: truncated message")

// pbField is one decoded field; bytes points into the caller's buffer.
type pbField struct {
	num    int
	wire   int
	varint uint64
	bytes  []byte
}

// pbVarint decodes a base-128 varint; n is the bytes consumed, 0 if b is
// too short, -1 if the varint is longer than 10 bytes.
func pbVarint(b []byte) (v uint64, n int) {
	for i := 0; i < len(b); i++ {
		if i == 10 {
			return 0, -1
		}
		v |= uint64(b[i]&0x7f) << (7 * uint(i))
		if b[i] < 0x80 {
			return v, i + 1
		}
	}
	return 0, 0
}

// pbNext decodes the field at the start of b and returns it with the
// number of bytes consumed.
func pbNext(b []byte) (pbField, int, error) {
	tag, n := pbVarint(b)
	if n <= 0 {
		return pbField{}, 0, errTruncated
	}
	f := pbField{num: int(tag >> 3), wire: int(tag & 7)}
	if f.num == 0 {
		return pbField{}, 0, errors.New("protobuf: field number 0")
	}
	rest := b[n:]
	switch f.wire {
	case wireVarint:
		v, m := pbVarint(rest)
		if m <= 0 {
			return pbField{}, 0, errTruncated
		}
		f.varint = v
		return f, n + m, nil
	case wireFixed64:
		if len(rest) < 8 {
			return pbField{}, 0, errTruncated
		}
		f.bytes = rest[:8]
		return f, n + 8, nil
	case wireFixed32:
		if len(rest) < 4 {
			return pbField{}, 0, errTruncated
		}
		f.bytes = rest[:4]
		return f, n + 4, nil
	case wireBytes:
		l, m := pbVarint(rest)
		if m <= 0 || l > uint64(len(rest)-m) {
			return pbField{}, 0, errTruncated
		}
		f.bytes = rest[m : m+int(l)]
		return f, n + m + int(l), nil
	}
	return pbField{}, 0, fmt.Errorf("protobuf: unsupported wire type %d", f.wire)
}

// pbEach calls fn for every field of a message, in order.
func pbEach(msg []byte, fn func(f pbField) error) error {
	for len(msg) > 0 {
		f, n, err := pbNext(msg)
		if err != nil {
			return err
		}
		if err := fn(f); err != nil {
			return err
		}
		msg = msg[n:]
	}
	return nil
}

// pbMapEntry decodes one map<string, string|bytes> entry.
func pbMapEntry(entry []byte) (k string, v []byte, err error) {
	err = pbEach(entry, func(f pbField) error {
		if f.wire != wireBytes {
			return nil
		}
		switch f.num {
		case 1:
			k = string(f.bytes)
		case 2:
			v = f.bytes
		}
		return nil
	})
	return
}

// decodeUnknown strips the envelope and returns kind, apiVersion and raw.
func decodeUnknown(body []byte) (apiVersion, kind string, raw []byte, err error) {
	if len(body) < len(protoMagic) || string(body[:4]) != string(protoMagic) {
		return "", "", nil, errors.New("protobuf: missing k8s magic prefix")
	}
	err = pbEach(body[4:], func(f pbField) error {
		if f.wire != wireBytes {
			return nil
		}
		switch f.num {
		case 1:
			return pbEach(f.bytes, func(t pbField) error {
				switch {
				case t.num == 1 && t.wire == wireBytes:
					apiVersion = string(t.bytes)
				case t.num == 2 && t.wire == wireBytes:
					kind = string(t.bytes)
				}
				return nil
			})
		case 2:
			raw = f.bytes
		}
		return nil
	})
	return
}

// decodeConfigMapProto decodes a protobuf-encoded v1 ConfigMap request body.
func decodeConfigMapProto(body []byte) (*configMap, error) {
	apiVersion, kind, raw, err := decodeUnknown(body)
	if err != nil {
		return nil, err
	}
	if raw == nil {
		return nil, errors.New("protobuf: envelope holds no object")
	}
	if (kind != "" && kind != "ConfigMap") || (apiVersion != "" && apiVersion != "v1") {
		return nil, fmt.Errorf("expected v1 ConfigMap, got %s %s", apiVersion, kind)
	}
	cm := &configMap{}
	err = pbEach(raw, func(f pbField) error {
		if f.wire != wireBytes {
			return nil
		}
		switch f.num {
		case 1:
			return decodeObjectMeta(f.bytes, &cm.Metadata)
		case 2, 3:
			k, v, err := pbMapEntry(f.bytes)
			if err != nil {
				return err
			}
			if f.num == 2 {
				if cm.Data == nil {
					cm.Data = map[string]string{}
				}
				cm.Data[k] = string(v)
			} else {
				if cm.BinaryData == nil {
					cm.BinaryData = map[string][]byte{}
				}
				cm.BinaryData[k] = append([]byte(nil), v...)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return cm, nil
}

func decodeObjectMeta(b []byte, m *objectMeta) error {
	return pbEach(b, func(f pbField) error {
		if f.wire != wireBytes {
			return nil
		}
		switch f.num {
		case 1:
			m.Name = string(f.bytes)
		case 3:
			m.Namespace = string(f.bytes)
		case 11, 12:
			k, v, err := pbMapEntry(f.bytes)
			if err != nil {
				return err
			}
			target := &m.Labels
			if f.num == 12 {
				target = &m.Annotations
			}
			if *target == nil {
				*target = map[string]string{}
			}
			(*target)[k] = string(v)
		}
		return nil
	})
}
