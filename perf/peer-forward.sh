#!/usr/bin/env bash
# What a hop between hub replicas costs. Two kopilot-hub processes run in the
# Kubernetes mode against the fake host API server (Tests/FakeHostAPI); the
# agent holds its session on hub-b; wrk sends the same small GET
#   - to hub-b (the session is there: hub -> agent -> upstream), then
#   - to hub-a (forwarded over the peer listener: hub-a -> hub-b -> agent -> upstream),
# both authorized through TokenReview + SubjectAccessReview (cached after the
# first request). Prints one line per path and connection count.
#
#   swift build -c release && bash perf/peer-forward.sh [SECONDS] [CONNECTIONS...]
#
# Defaults: 10 s per run, 1 and 16 connections. Needs go, wrk, openssl, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
shift || true
conns=("${@:-1 16}")
# shellcheck disable=SC2206
conns=(${conns[*]})
bin=.build/release
for b in kopilot-hub kopilot-agent; do
  [ -x "$bin/$b" ] || { echo "peer-forward: $bin/$b is missing; run swift build -c release" >&2; exit 1; }
done
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

gobuild() { GO111MODULE=off GOFLAGS= GOPATH="$work/go:/usr/share/gocode" go build -o "$work/$2" "./$1"; }
gobuild perf/upstream upstream
gobuild Tests/FakeHostAPI fakehost

# Certificates: a CA and a 127.0.0.1 serving certificate; a peer CA and one
# certificate per replica with the name peers check (kopilot-hub-peer).
(
  cd "$work"
  ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
  openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.crt -days 1 -subj /CN=perf-ca 2>/dev/null
  openssl req "${ec[@]}" -keyout tls.key -out tls.csr -subj /CN=localhost 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > srv.cnf
  openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out tls.crt -days 1 -extfile srv.cnf 2>/dev/null
  openssl req -x509 "${ec[@]}" -keyout peer-ca.key -out peer-ca.crt -days 1 -subj /CN=perf-peer-ca 2>/dev/null
  printf 'subjectAltName=DNS:kopilot-hub-peer\nextendedKeyUsage=serverAuth,clientAuth\n' > peer.cnf
  for r in hub-a hub-b; do
    openssl req "${ec[@]}" -keyout $r.key -out $r.csr -subj /CN=kopilot-hub-peer 2>/dev/null
    openssl x509 -req -in $r.csr -CA peer-ca.crt -CAkey peer-ca.key -CAcreateserial -out $r.crt -days 1 -extfile peer.cnf 2>/dev/null
  done
)

port_of() { # FILE NEEDLE: waits for a line with NEEDLE and prints the number after it
  for _ in $(seq 300); do
    if grep -q "$2" "$1"; then grep -o "$2[0-9]*" "$1" | head -1 | sed "s/$2//"; return; fi
    sleep 0.1
  done
  echo "peer-forward: no '$2' in $1:" >&2; cat "$1" >&2; exit 1
}

hubsa=perf-hub-sa-token-0123456789 alice=perf-alice-token-0123456789
agenttoken=perf-cluster-token-0123456789abcdef
printf '%s,system:serviceaccount:kopilot-system:kopilot-hub,u1,"system:serviceaccounts"\n%s,alice,u2,\n' "$hubsa" "$alice" > "$work/tokens.csv"
"$work/fakehost" --cert "$work/tls.crt" --key "$work/tls.key" --tokens "$work/tokens.csv" > "$work/host.log" 2>&1 &
pids+=($!)
host=https://127.0.0.1:$(port_of "$work/host.log" "PORT ")
"$work/upstream" -bind 127.0.0.1:0 -tls-cert "$work/tls.crt" -tls-key "$work/tls.key" > "$work/upstream.log" 2>&1 &
pids+=($!)
upstream=$(port_of "$work/upstream.log" "listening on 127.0.0.1:")

api() { curl -sfS --cacert "$work/ca.crt" -H "Authorization: Bearer $alice" -H 'Content-Type: application/json' -X "$1" "$host$2" --data-binary "$3" > /dev/null; }
api POST /apis/rbac.authorization.k8s.io/v1/clusterroles '{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"proxy"},"rules":[{"nonResourceURLs":["/proxy/*"],"verbs":["*"]}]}'
api POST /apis/rbac.authorization.k8s.io/v1/clusterrolebindings '{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRoleBinding","metadata":{"name":"alice"},"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"proxy"},"subjects":[{"kind":"User","name":"alice"}]}'
api POST /apis/kopilot.smartx.com/v1alpha1/namespaces/default/clusters "{\"apiVersion\":\"kopilot.smartx.com/v1alpha1\",\"kind\":\"Cluster\",\"metadata\":{\"name\":\"sample\"},\"token\":\"$agenttoken\"}"
cat > "$work/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: host, cluster: {server: "$host", certificate-authority: "$work/ca.crt"}}]
users: [{name: hub, user: {token: $hubsa}}]
contexts: [{name: host, context: {cluster: host, user: hub}}]
current-context: host
EOF

declare -A hubport
for r in hub-a hub-b; do
  "$bin/kopilot-hub" serve --kubeconfig "$work/kubeconfig" --namespace kopilot-system --pod-name $r --pod-ip 127.0.0.1 \
    --bind 127.0.0.1:0 --tls-cert "$work/tls.crt" --tls-key "$work/tls.key" --ca-file "$work/ca.crt" \
    --peer-bind 127.0.0.1:0 --peer-cert "$work/$r.crt" --peer-key "$work/$r.key" --peer-ca "$work/peer-ca.crt" \
    --webhook-bind off --public-addr 127.0.0.1:1 --log-level notice > "$work/$r.log" 2>&1 &
  pids+=($!)
done
for r in hub-a hub-b; do
  # The listening line is a notice; nothing per request is logged at notice.
  hubport[$r]=$(port_of "$work/$r.log" "listening on 127.0.0.1:")
  peer=$(port_of "$work/$r.log" "peer-port=")
  api POST /apis/discovery.k8s.io/v1/namespaces/kopilot-system/endpointslices "{\"apiVersion\":\"discovery.k8s.io/v1\",\"kind\":\"EndpointSlice\",\"metadata\":{\"name\":\"kopilot-hub-$r\",\"namespace\":\"kopilot-system\",\"labels\":{\"kubernetes.io/service-name\":\"kopilot-hub\"}},\"addressType\":\"IPv4\",\"endpoints\":[{\"addresses\":[\"127.0.0.1\"],\"conditions\":{\"ready\":true},\"targetRef\":{\"kind\":\"Pod\",\"name\":\"$r\",\"namespace\":\"kopilot-system\"}}],\"ports\":[{\"name\":\"peer\",\"port\":$peer}]}"
done
echo perf-upstream-token > "$work/upstream.token"
"$bin/kopilot-agent" --connect "wss://127.0.0.1:${hubport[hub-b]}/connect?token=$agenttoken" --hub-ca "$work/ca.crt" \
  --apiserver "https://127.0.0.1:$upstream" --token-file "$work/upstream.token" --ca-file "$work/ca.crt" --sessions 1 > "$work/agent.log" 2>&1 &
pids+=($!)

path=/proxy/default_sample/api/v1/namespaces/default/pods/small
for _ in $(seq 200); do
  code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$work/ca.crt" -H "Authorization: Bearer $alice" "https://127.0.0.1:${hubport[hub-a]}$path" || true)
  [ "$code" = 200 ] && break
  sleep 0.1
done
[ "$code" = 200 ] || { echo "peer-forward: hub-a never forwarded (last status $code)" >&2; tail -5 "$work"/*.log >&2; exit 1; }

printf '%-22s %5s %10s %9s %9s %9s\n' path conns req/s p50_us p99_us p999_us
for c in "${conns[@]}"; do
  for r in hub-b hub-a; do
    label=$([ $r = hub-b ] && echo "hub-b (session here)" || echo "hub-a (forwarded)")
    line=$(wrk -t1 -c"$c" -d"${secs}s" --timeout 10s -s perf/wrk-report.lua -H "Authorization: Bearer $alice" \
      "https://127.0.0.1:${hubport[$r]}$path" | grep '^{')
    python3 -c 'import json,sys; d=json.loads(sys.argv[1]); l=sys.argv[2]; c=sys.argv[3]
print("%-22s %5s %10.0f %9d %9d %9d" % (l, c, d["requests"]*1e6/d["duration_us"], d["p50_us"], d["p99_us"], d["p999_us"]))
bad = d["connect_errors"]+d["read_errors"]+d["write_errors"]+d["status_errors"]+d["timeouts"]
if bad: print("  errors:", bad)' "$line" "$label" "$c"
  done
done
