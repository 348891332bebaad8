#!/usr/bin/env bash
# Starts a hub, an agent and a stand-in for a member cluster's API server on
# 127.0.0.1, and prints a command that goes through the tunnel.
#   bash deploy/quickstart.sh           run until Ctrl-C
#   bash deploy/quickstart.sh --check   one request through the tunnel, then stop
# State (CA, certificates, token) is kept in ./kopilot-state/quickstart.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
check=0
[ "${1:-}" = "--check" ] && check=1
bash "$root/Tests/setup-debian.sh"

echo "building (release)..." >&2
(cd "$root" && swift build -c release --product kopilot-hub >&2 && swift build -c release --product kopilot-agent >&2)
bin=$(cd "$root" && swift build -c release --show-bin-path)

state=${KOPILOT_STATE:-$PWD/kopilot-state/quickstart}
mkdir -p "$state"
cd "$state"
if [ ! -f ca.crt ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout ca.key -out ca.crt -days 3650 -subj /CN=kopilot-quickstart-ca 2>/dev/null
  for n in hub apiserver; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout $n.key -out $n.csr -subj /CN=$n 2>/dev/null
    printf "subjectAltName=DNS:localhost,IP:127.0.0.1\n" > $n.ext
    openssl x509 -req -in $n.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -out $n.crt -days 3650 -extfile $n.ext 2>/dev/null
  done
  # 24 random bytes, URL-safe base64: the agent's token for cluster default/sample.
  openssl rand -base64 24 | tr '+/' '-_' | tr -d '=\n' > agent.token
  echo "stand-in-service-account-token" > sa.token
fi

pids=()
cleanup() { [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() { # FILE PATTERN
  for _ in $(seq 300); do grep -qa "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "quickstart: timed out waiting for '$2' in $1:" >&2; cat "$1" >&2; exit 1
}

python3 "$root/Tests/EndToEndTests/upstream.py" --cert apiserver.crt --key apiserver.key > upstream.out 2> upstream.log &
pids+=($!)
wait_for upstream.out 'PORT'
up_port=$(awk '/PORT/ {print $2; exit}' upstream.out)

"$bin/kopilot-hub" --bind 127.0.0.1:0 --tls-cert hub.crt --tls-key hub.key \
  --agent-token "default/sample=$(cat agent.token)" 2> hub.log &
pids+=($!)
wait_for hub.log 'listening on'
hub_port=$(grep -ao 'listening on 127.0.0.1:[0-9]*' hub.log | cut -d: -f2)

"$bin/kopilot-agent" --connect "wss://127.0.0.1:$hub_port/connect?token=$(cat agent.token)" \
  --hub-ca ca.crt --apiserver "https://127.0.0.1:$up_port" --token-file sa.token --ca-file ca.crt 2> agent.log &
pids+=($!)
wait_for hub.log 'session up'

cmd="curl -sS --cacert $state/ca.crt https://127.0.0.1:$hub_port/proxy/default_sample/headers"
if [ $check = 1 ]; then
  out=$($cmd -H 'Authorization: Bearer caller-token')
  echo "$out"
  grep -q "stand-in-service-account-token" <<<"$out"
  ! grep -q "caller-token" <<<"$out"
  echo "quickstart: OK - a request went through hub -> agent -> API server stand-in" >&2
  exit 0
fi
cat >&2 <<EOT

Kopilot is up: a hub on 127.0.0.1:$hub_port, an agent for cluster default/sample, and an API
server stand-in on 127.0.0.1:$up_port. Try this (the stand-in answers with the headers it got:
the agent's token has replaced yours):

  $cmd -H 'Authorization: Bearer caller-token'

Logs are in $state. Ctrl-C stops everything.
EOT
wait
