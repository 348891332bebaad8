package main

import (
	"bytes"
	"strings"
	"testing"
)

// pbBytes encodes one length-delimited field (tag = num<<3 | 2).
func pbBytes(num int, b []byte) []byte {
	out := []byte{byte(num<<3 | wireBytes)}
	l := len(b)
	for l >= 0x80 {
		out = append(out, byte(l)|0x80)
		l >>= 7
	}
	out = append(out, byte(l))
	return append(out, b...)
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// configMapVector is what kubectl 1.33 "create configmap x
// --from-literal=a=b -n default" sends, rebuilt field by field from
// generated.proto (runtime.Unknown around a v1.ConfigMap).
func configMapVector() []byte {
	meta := cat(pbBytes(1, []byte("x")), pbBytes(3, []byte("default")),
		pbBytes(11, cat(pbBytes(1, []byte("app")), pbBytes(2, []byte("demo")))))
	cm := cat(pbBytes(1, meta), pbBytes(2, cat(pbBytes(1, []byte("a")), pbBytes(2, []byte("b")))))
	typeMeta := cat(pbBytes(1, []byte("v1")), pbBytes(2, []byte("ConfigMap")))
	unknown := cat(pbBytes(1, typeMeta), pbBytes(2, cm), pbBytes(3, nil), pbBytes(4, nil))
	return cat(protoMagic, unknown)
}

func TestWireConstants(t *testing.T) {
	if string(protoMagic) != "k8s\x00" {
		t.Fatalf("magic %q", protoMagic)
	}
	if chanStdin != 0 || chanStdout != 1 || chanStderr != 2 || chanError != 3 || chanResize != 4 || chanClose != 255 {
		t.Fatal("channel.k8s.io stream numbers changed")
	}
	if protoPortForwardWS != "SPDY/3.1+portforward.k8s.io" {
		t.Fatal(protoPortForwardWS)
	}
}

func TestDecodeConfigMapProto(t *testing.T) {
	cm, err := decodeConfigMapProto(configMapVector())
	if err != nil {
		t.Fatal(err)
	}
	if cm.Metadata.Name != "x" || cm.Metadata.Namespace != "default" || cm.Data["a"] != "b" || cm.Metadata.Labels["app"] != "demo" {
		t.Fatalf("decoded %+v", cm)
	}
}

// Every truncation of the vector must fail cleanly (no panic, no bogus object).
func TestDecodeConfigMapProtoTruncated(t *testing.T) {
	v := configMapVector()
	for i := 0; i < len(v); i++ {
		if _, err := decodeConfigMapProto(v[:i]); err == nil && i < len(v)-4 {
			// Cutting exactly between fields of the outer message is valid
			// protobuf; only the trailing empty fields can go unnoticed.
			t.Errorf("truncated at %d/%d: no error", i, len(v))
		}
	}
}

func TestDecodeMalformed(t *testing.T) {
	for _, c := range []struct {
		note string
		in   []byte
	}{
		{"no magic", []byte("{}")},
		{"length past the end", cat(protoMagic, []byte{0x12, 0x05, 0x0a})},
		{"11-byte varint", cat(protoMagic, bytes.Repeat([]byte{0xff}, 11))},
		{"field number 0", cat(protoMagic, []byte{0x02, 0x00})},
		{"wrong kind", cat(protoMagic, pbBytes(1, pbBytes(2, []byte("Secret"))))},
	} {
		if _, err := decodeConfigMapProto(c.in); err == nil {
			t.Errorf("%s: no error", c.note)
		}
	}
}

func TestShell(t *testing.T) {
	for _, c := range []struct {
		argv  []string
		stdin string
		out   string
		code  int
	}{
		{[]string{"echo", "hello"}, "", "hello\n", 0},
		{[]string{"sh", "-c", "exit 3"}, "", "", 3},
		{[]string{"/bin/sh", "-c", "echo 'a b'; exit 4"}, "", "a b\n", 4},
		{[]string{"sh", "-c", "false && echo no"}, "", "", 1},
		{[]string{"cat"}, "abc", "abc", 0},
		{[]string{"nosuch"}, "", "", 127},
	} {
		var out, errb bytes.Buffer
		code := runShell(c.argv, strings.NewReader(c.stdin), &out, &errb)
		if code != c.code || out.String() != c.out {
			t.Errorf("%v: code %d out %q, want %d %q", c.argv, code, out.String(), c.code, c.out)
		}
	}
}

func TestExitStatus(t *testing.T) {
	if got := string(exitStatus(0, nil)); got != `{"metadata":{},"status":"Success"}` {
		t.Error(got)
	}
	got := string(exitStatus(3, []string{"sh", "-c", "exit 3"}))
	for _, want := range []string{`"reason":"NonZeroExitCode"`, `"causes":[{"message":"3","reason":"ExitCode"}]`, `"status":"Failure"`} {
		if !strings.Contains(got, want) {
			t.Errorf("%s lacks %s", got, want)
		}
	}
}

func TestUnauthorizedBody(t *testing.T) {
	got := string(mustJSON(statusBody(401, "Unauthorized", "Unauthorized", nil)))
	want := `{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}`
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}
