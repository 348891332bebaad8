#!/usr/bin/env bash
# Starts a hub on the embedded default, an agent and a stand-in for a member
# cluster's API server on 127.0.0.1, writes a kubeconfig and prints the
# kubectl command that goes through the tunnel.
#   bash deploy/quickstart.sh           run until Ctrl-C
#   bash deploy/quickstart.sh --check   kubectl get pods -A through the tunnel, then stop
# State is kept in ./kopilot-state (KOPILOT_STATE overrides).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
check=0
[ "${1:-}" = "--check" ] && check=1
bash "$root/Tests/setup-debian.sh"

echo "building (release)..." >&2
(cd "$root" && swift build -c release --product kopilot-hub >&2 && swift build -c release --product kopilot-agent >&2)
bin=$(cd "$root" && swift build -c release --show-bin-path)

state=${KOPILOT_STATE:-$PWD/kopilot-state}
mkdir -p "$state/quickstart"
work="$state/quickstart"

pids=()
cleanup() { [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() { # FILE PATTERN
  for _ in $(seq 300); do grep -qa "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "quickstart: timed out waiting for '$2' in $1:" >&2; cat "$1" >&2; exit 1
}

# The member cluster's API server stand-in (Tests/FakeAPIServer, Go, built
# offline from Debian's packages) with its own CA and the agent's token.
echo "building the API server stand-in..." >&2
(cd "$root" && GO111MODULE=off GOPATH="$work/go:/usr/share/gocode" GOFLAGS= GOCACHE="$work/go/cache" \
  go build -o "$work/fakeapi" ./Tests/FakeAPIServer)
if [ ! -f "$work/member-ca.crt" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$work/member-ca.key" \
    -out "$work/member-ca.crt" -days 3650 -subj /CN=member-ca 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$work/apiserver.key" \
    -out "$work/apiserver.csr" -subj /CN=apiserver 2>/dev/null
  printf "subjectAltName=DNS:localhost,IP:127.0.0.1\n" > "$work/apiserver.ext"
  openssl x509 -req -in "$work/apiserver.csr" -CA "$work/member-ca.crt" -CAkey "$work/member-ca.key" \
    -CAcreateserial -out "$work/apiserver.crt" -days 3650 -extfile "$work/apiserver.ext" 2>/dev/null
  openssl rand -hex 24 > "$work/sa.token"
fi
"$work/fakeapi" --cert "$work/apiserver.crt" --key "$work/apiserver.key" --token "$(cat "$work/sa.token")" \
  > "$work/apiserver.out" 2> "$work/apiserver.log" &
pids+=($!)
wait_for "$work/apiserver.out" PORT
up_port=$(awk '/PORT/ {print $2; exit}' "$work/apiserver.out")

# The hub's embedded registry: one cluster, default/sample (made once).
if [ ! -f "$work/agent.token" ]; then
  "$bin/kopilot-hub" clusters add default/sample --state-dir "$state" > "$work/agent.token"
fi
"$bin/kopilot-hub" --state-dir "$state" --bind 127.0.0.1:0 > "$work/hub.out" 2> "$work/hub.log" &
pids+=($!)
wait_for "$work/hub.log" 'listening on'
hub_port=$(grep -ao 'listening on 127.0.0.1:[0-9]*' "$work/hub.log" | cut -d: -f2)
admin=$(grep -v '^#' "$state/tokens.csv" | awk -F, '$2 == "kopilot-admin" {print $1; exit}')

"$bin/kopilot-agent" --connect "wss://127.0.0.1:$hub_port/connect?token=$(cat "$work/agent.token")" \
  --hub-ca "$state/ca.crt" --apiserver "https://127.0.0.1:$up_port" --token-file "$work/sa.token" \
  --ca-file "$work/member-ca.crt" 2> "$work/agent.log" &
pids+=($!)
wait_for "$work/hub.log" 'session up'

kubeconfig="$work/kubeconfig"
cat > "$kubeconfig" <<EOT
apiVersion: v1
kind: Config
clusters:
- name: default_sample
  cluster:
    server: https://127.0.0.1:$hub_port/proxy/default_sample
    certificate-authority: $state/ca.crt
users:
- name: kopilot-admin
  user:
    token: $admin
contexts:
- name: default_sample
  context: {cluster: default_sample, user: kopilot-admin}
current-context: default_sample
EOT
cmd="kubectl --kubeconfig $kubeconfig get pods -A"
if [ $check = 1 ]; then
  $cmd --cache-dir "$work/kube-cache"
  echo "quickstart: OK - kubectl went through hub -> agent -> the API server stand-in" >&2
  exit 0
fi
cat >&2 <<EOT

Kopilot is up on the embedded default: a hub on 127.0.0.1:$hub_port (state in $state), an agent
for cluster default/sample, and a stand-in for that member's API server on 127.0.0.1:$up_port.
Try:

  $cmd

Logs are in $work. Ctrl-C stops everything.
EOT
wait
