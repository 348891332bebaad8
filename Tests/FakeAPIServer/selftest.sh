#!/usr/bin/env bash
# Self-test of the fake kube-apiserver: builds it, makes a CA and a server
# certificate with openssl, starts it on 127.0.0.1 port 0 and drives it with
# every real kubectl found, directly (no tunnel). Prints PASS/FAIL per
# command and per kubectl version, and a summary; exits 1 if anything failed.
#
#   Tests/FakeAPIServer/selftest.sh                 # every kubectl found
#   KUBECTLS="/usr/bin/kubectl" Tests/FakeAPIServer/selftest.sh
#   KEEP=1 ...                                      # keep the work directory
#
# Needs: go (GOPATH mode, Debian's /usr/share/gocode), openssl, curl, python3.
set -u

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
work=$(mktemp -d /tmp/fakeapi-selftest.XXXXXX)
server_pid=""
cleanup() {
	[ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
	# Background kubectl processes started below are killed by their own ids.
	for p in $(jobs -p); do kill "$p" 2>/dev/null; done
	if [ -z "${KEEP:-}" ]; then rm -rf "$work"; else echo "work directory kept: $work"; fi
}
trap cleanup EXIT

fail_count=0
pass_count=0
summary=""
result() { # result VERSION NAME STATUS [DETAIL]
	printf '%-6s %-5s %-28s %s\n' "$3" "$1" "$2" "${4:-}"
	if [ "$3" = PASS ]; then pass_count=$((pass_count + 1)); else fail_count=$((fail_count + 1)); summary="$summary\n  $1 $2 ${4:-}"; fi
}

# ---- build ----
echo "building fakeapi in $work"
if ! (cd "$repo" && GO111MODULE=off GOPATH="$work/gopath:/usr/share/gocode" GOFLAGS= GOCACHE="$work/gocache" \
	go build -o "$work/fakeapi" ./Tests/FakeAPIServer); then
	echo "FAIL build"; exit 1
fi

# ---- certificates: a CA and a server certificate for 127.0.0.1 ----
(
	cd "$work" || exit 1
	openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=fakeapi-ca &&
	openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1 &&
	printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > ext.cnf &&
	openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile ext.cnf
) >"$work/openssl.log" 2>&1 || { echo "FAIL openssl (see $work/openssl.log)"; KEEP=1; exit 1; }

# ---- start the fake; wait for its readiness line ----
token="selftest-$RANDOM$RANDOM"
"$work/fakeapi" --cert "$work/server.crt" --key "$work/server.key" --token "$token" -v \
	>"$work/fakeapi.out" 2>"$work/fakeapi.log" &
server_pid=$!
port=""
for _ in $(seq 100); do
	port=$(awk '/^PORT /{print $2; exit}' "$work/fakeapi.out")
	[ -n "$port" ] && break
	sleep 0.1
done
[ -n "$port" ] || { echo "FAIL fakeapi did not print PORT"; cat "$work/fakeapi.log"; exit 1; }
echo "fakeapi listening on 127.0.0.1:$port"
base="https://127.0.0.1:$port"
curl_fake() { curl -sS --cacert "$work/ca.crt" -H "Authorization: Bearer $token" "$@"; }

cat >"$work/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: $base
    certificate-authority: $work/ca.crt
users:
- name: tester
  user:
    token: $token
contexts:
- name: fake
  context: {cluster: fake, user: tester, namespace: default}
current-context: fake
EOF

read -r _ big_data_digest < <("$work/fakeapi" --print-big-digest | grep '^data ')
read -r _ big_raw_digest < <("$work/fakeapi" --print-big-digest | grep '^raw ')

# ---- server-level checks (curl), once ----
body=$(curl -sS --cacert "$work/ca.crt" -H "Authorization: Bearer wrong" "$base/api/v1/pods")
if [ "$body" = '{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}' ]; then
	result curl "401 bad token" PASS
else result curl "401 bad token" FAIL "$body"; fi
body=$(curl_fake "$base/api/v1/namespaces/default/pods?watch=1&resourceVersion=1")
case "$body" in '{"type":"ERROR","object":{"kind":"Status"'*'"reason":"Expired","code":410}}') result curl "watch rv=1 -> 410 Expired" PASS ;;
*) result curl "watch rv=1 -> 410 Expired" FAIL "$body" ;; esac
h=$(curl_fake -o /dev/null -w '%{http_version}' "$base/version")
[ "$h" = "1.1" ] && result curl "HTTP/1.1 only" PASS || result curl "HTTP/1.1 only" FAIL "got HTTP/$h"
d=$(curl_fake "$base/api/v1/namespaces/default/configmaps/big" | sha256sum | cut -d' ' -f1)
[ "$d" = "$big_raw_digest" ] && result curl "big raw digest" PASS || result curl "big raw digest" FAIL "$d != $big_raw_digest"

# ---- kubectl versions ----
if [ -n "${KUBECTLS:-}" ]; then
	kubectls=$KUBECTLS
else
	kubectls=$(ls /usr/lib/google-cloud-sdk/bin/kubectl.1.* 2>/dev/null | sort -t. -k3 -n)
	[ -x /usr/bin/kubectl ] && kubectls="$kubectls /usr/bin/kubectl"
fi
[ -n "$kubectls" ] || { echo "FAIL no kubectl found"; exit 1; }

# echo_check PORT: sends a line through a TCP connection, half-closes, and
# expects the same bytes back (the fake's forwarded ports are echo services).
echo_check() {
	python3 - "$1" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
msg = b"echo through port-forward\n" * 100
s.sendall(msg)
s.shutdown(socket.SHUT_WR)
got = b""
while True:
    c = s.recv(65536)
    if not c:
        break
    got += c
sys.exit(0 if got == msg else 1)
PY
}

# upgrade_seen: how the last upgrade request in the server log came in.
upgrade_seen() {
	grep "$1" "$work/fakeapi.log" | tail -1 | sed -n 's/^[0-9/]* [0-9:]* \([A-Z]*\) .*Upgrade="\([^"]*\)".*/\1 \2/p'
}

for kc in $kubectls; do
	[ -x "$kc" ] || continue
	v=$("$kc" version --client -o json 2>/dev/null | python3 -c 'import json,sys; c=json.load(sys.stdin)["clientVersion"]; print(c["major"]+"."+c["minor"].rstrip("+"))' 2>/dev/null)
	[ -n "$v" ] || v=$(basename "$kc")
	tag=$v
	[ "$kc" = /usr/bin/kubectl ] && tag="$v(usr)"
	cache="$work/cache-$(echo "$tag" | tr -c 'a-z0-9.\n' '_')"
	K() { timeout -k 2 "${TMO:-30}" "$kc" --kubeconfig "$work/kubeconfig" --cache-dir "$cache" "$@"; }
	out="$work/out-$tag"
	echo "== kubectl $v ($kc)"

	# get pods -A: server-side table with the NAMESPACE column
	if K get pods -A >"$out" 2>&1 && grep -q '^NAMESPACE ' "$out" && grep -Eq '^kube-system +etcd-node-1 +1/1 +Running' "$out"; then
		result "$tag" "get pods -A" PASS
	else result "$tag" "get pods -A" FAIL "$(head -3 "$out")"; fi

	# get pods -o json: PodList decoded, items with namespace
	if K get pods -o json >"$out" 2>&1 && python3 -c '
import json,sys; d=json.load(open(sys.argv[1])); names=[i["metadata"]["name"] for i in d["items"]]
sys.exit(0 if "web-0" in names and all(i["metadata"]["namespace"]=="default" for i in d["items"]) else 1)' "$out"; then
		result "$tag" "get pods -o json" PASS
	else result "$tag" "get pods -o json" FAIL "$(head -3 "$out")"; fi

	# get pods -w: initial rows, then a pod added by the test hook appears
	newpod="added-$(echo "$tag" | tr -c 'a-z0-9\n' '-')-$RANDOM"
	TMO=6 K get pods -w >"$out" 2>&1 &
	wpid=$!
	sleep 2.5
	curl_fake -o /dev/null -X POST "$base/_fake/pods?namespace=default&name=$newpod"
	wait "$wpid" 2>/dev/null
	if grep -Eq '^web-0 +1/1 +Running' "$out" && grep -Eq "^$newpod +1/1 +Running" "$out"; then
		result "$tag" "get pods -w" PASS
	else result "$tag" "get pods -w" FAIL "$(tr '\n' '|' <"$out" | head -c 300)"; fi

	# logs -f: lines keep arriving (5 are "history", line 10+ came by follow)
	TMO=2 K logs -f web-0 >"$out" 2>&1
	n=$(grep -c 'INFO default/web-0 line' "$out")
	if [ "$n" -ge 10 ]; then result "$tag" "logs -f" PASS "$n lines in 2 s"; else result "$tag" "logs -f" FAIL "$n lines: $(head -2 "$out")"; fi

	# exec -- echo hello
	K exec web-0 -- echo hello >"$out" 2>&1
	rc=$?
	how=$(upgrade_seen 'pods/web-0/exec?command=echo')
	if [ $rc = 0 ] && [ "$(cat "$out")" = hello ]; then result "$tag" "exec echo hello" PASS "($how)"
	else result "$tag" "exec echo hello" FAIL "rc=$rc $(head -2 "$out") ($how)"; fi

	# exec -- sh -c 'exit 3': the exit code comes from the v4/v5 Status
	K exec web-0 -- sh -c 'exit 3' >"$out" 2>&1
	rc=$?
	[ $rc = 3 ] && result "$tag" "exec sh -c 'exit 3'" PASS || result "$tag" "exec sh -c 'exit 3'" FAIL "rc=$rc $(head -2 "$out")"

	# exec -i -- cat: stdin comes back, and the session ends when stdin does
	printf 'one\ntwo\nthree\n' | K exec -i web-0 -- cat >"$out" 2>"$out.err"
	rc=$?
	if [ $rc = 0 ] && [ "$(cat "$out")" = "$(printf 'one\ntwo\nthree')" ]; then result "$tag" "exec -i cat" PASS
	else result "$tag" "exec -i cat" FAIL "rc=$rc $(head -c 200 "$out" "$out.err")"; fi

	# port-forward pod/web-0 0:80, then echo through the printed local port
	TMO=60 K port-forward pod/web-0 0:80 >"$out" 2>&1 &
	pfpid=$!
	lport=""
	for _ in $(seq 100); do
		lport=$(sed -n 's/^Forwarding from 127.0.0.1:\([0-9]*\) -> 80$/\1/p' "$out" | head -1)
		[ -n "$lport" ] && break
		sleep 0.1
	done
	if [ -n "$lport" ] && echo_check "$lport" && echo_check "$lport"; then
		result "$tag" "port-forward echo" PASS "($(upgrade_seen 'pods/web-0/portforward'))"
	else result "$tag" "port-forward echo" FAIL "port=$lport $(head -3 "$out")"; fi
	kill "$pfpid" 2>/dev/null
	wait "$pfpid" 2>/dev/null

	# create configmap (protobuf body from newer kubectl, JSON from older)
	cm="cm-$(echo "$tag" | tr -c 'a-z0-9\n' '-')"
	K create configmap "$cm" --from-literal=a=b >"$out" 2>&1
	rc=$?
	ct=$(grep "POST /api/v1/namespaces/default/configmaps?" "$work/fakeapi.log" | tail -1 | sed -n 's/.*Content-Type="\([^"]*\)".*/\1/p')
	if [ $rc = 0 ] && grep -q "configmap/$cm created" "$out" && [ "$(K get cm "$cm" -o jsonpath='{.data.a}')" = b ]; then
		result "$tag" "create configmap" PASS "(body $ct)"
	else result "$tag" "create configmap" FAIL "rc=$rc $(head -2 "$out") (body $ct)"; fi

	# delete configmap: finishes (it GETs until 404), then the object is gone
	TMO=20 K delete configmap "$cm" >"$out" 2>&1
	rc=$?
	if [ $rc = 0 ] && grep -q "configmap \"$cm\" deleted" "$out" && K get cm "$cm" 2>&1 | grep -q NotFound; then
		result "$tag" "delete configmap" PASS
	else result "$tag" "delete configmap" FAIL "rc=$rc $(head -2 "$out")"; fi

	# apply -f: default validation needs OpenAPI v3 (1.29+); 1.27/1.28 read
	# only protobuf OpenAPI v2, which the fake does not serve
	printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: %s-applied\ndata:\n  k: v\n' "$cm" >"$work/apply.yaml"
	validate=""
	case "$v" in 1.27 | 1.28) validate="--validate=false" ;; esac
	if K apply $validate -f "$work/apply.yaml" >"$out" 2>&1 && grep -q created "$out" && K delete -f "$work/apply.yaml" >/dev/null 2>&1; then
		result "$tag" "apply -f $validate" PASS
	else result "$tag" "apply -f $validate" FAIL "$(head -2 "$out")"; fi

	# get configmap big -o json: 16 MiB, the data value's digest matches
	TMO=60 K get configmap big -o json >"$out" 2>&1
	d=$(python3 -c 'import json,sys,hashlib; print(hashlib.sha256(json.load(open(sys.argv[1]))["data"]["big"].encode()).hexdigest())' "$out" 2>/dev/null)
	if [ "$d" = "$big_data_digest" ]; then result "$tag" "get configmap big -o json" PASS "($(stat -c %s "$out") bytes)"
	else result "$tag" "get configmap big -o json" FAIL "digest '$d'"; fi
done

echo
echo "passed: $pass_count, failed: $fail_count"
if [ "$fail_count" -gt 0 ]; then
	printf "failures:$summary\n"
	KEEP=1
	exit 1
fi
exit 0
