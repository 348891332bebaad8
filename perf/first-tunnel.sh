#!/usr/bin/env bash
# The first throughput figure: one large download through caller -> hub ->
# agent -> upstream on 127.0.0.1, next to the same download straight from the
# upstream and through the original design rebuilt in Go (perf/baseline/hub
# with perf/baseline/agent: gorilla/websocket + yamux + ReverseProxy), in
# one run. The upstream is nginx (TLS, serving a file of random
# bytes), so that the upstream is not what limits the tunnel.
#   bash perf/first-tunnel.sh [SIZE_MIB] [RUNS]     (default 1024 MiB, 3 runs)
# Prints MB/s (10^6 bytes/s, as curl reports) per run and the median.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
size_mib=${1:-1024}
runs=${2:-3}
command -v nginx >/dev/null || {
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get install -y -qq nginx-light >/dev/null
}
export PATH="$PATH:/usr/sbin"
bash "$root/Tests/setup-debian.sh"
(cd "$root" && swift build -c release >&2)
bin=$(cd "$root" && swift build -c release --show-bin-path)

work=$(mktemp -d)
pids=()
cleanup() { [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true; [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
chmod 755 "$work"  # nginx workers run as an unprivileged user
cd "$work"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=perf-ca 2>/dev/null
for n in hub up; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout $n.key -out $n.csr -subj /CN=$n 2>/dev/null
  printf "subjectAltName=DNS:localhost,IP:127.0.0.1\n" > ext
  openssl x509 -req -in $n.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out $n.crt -days 2 -extfile ext 2>/dev/null
done
mkdir www && head -c $((size_mib * 1048576)) /dev/urandom > www/blob && chmod -R a+rX www
echo "perf-token" > sa.token
# nginx cannot listen on port 0: take a free port from the kernel first.
up_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > nginx.conf <<EOT
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx.err;
events { worker_connections 1024; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$up_port ssl;
    ssl_certificate $work/up.crt;
    ssl_certificate_key $work/up.key;
    root $work/www;
  }
}
EOT
nginx -c "$work/nginx.conf"

wait_for() { for _ in $(seq 300); do grep -qa "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done; cat "$1" >&2; exit 1; }
token=perf-agent-token-0123456789
caller=perf-caller-token-0123456789
# The hub's embedded registry: one cluster and one caller (the first start
# adds the CA and rbac.yaml, whose admins group may use /proxy/*).
mkdir -p state
printf 'apiVersion: kopilot.smartx.com/v1alpha1\nkind: Cluster\nmetadata: {namespace: default, name: perf}\ntoken: %s\n' "$token" > state/clusters.yaml
printf '%s,perf,perf,"kopilot:admins"\n' "$caller" > state/tokens.csv
"$bin/kopilot-hub" --state-dir state --bind 127.0.0.1:0 ${HUB_ARGS:-} --tls-cert hub.crt --tls-key hub.key 2> hub.log &
pids+=($!)
wait_for hub.log 'listening on'
hub_port=$(grep -ao 'listening on 127.0.0.1:[0-9]*' hub.log | cut -d: -f2)

fetch() { curl -sS --cacert ca.crt -H "Authorization: Bearer $caller" "$1" -o /dev/null -w '%{speed_download} %{size_download}\n'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
report() { # LABEL URL
  local all=()
  for _ in $(seq "$runs"); do
    read -r speed got < <(fetch "$2")
    [ "$got" = "$((size_mib * 1048576))" ] || { echo "$1: short transfer ($got bytes)" >&2; exit 1; }
    all+=("$(awk -v s="$speed" 'BEGIN {printf "%.0f", s / 1e6}')")
  done
  printf '%-28s %s MB/s   (runs: %s)\n' "$1" "$(printf '%s\n' "${all[@]}" | median)" "${all[*]}"
}

echo "download of $size_mib MiB on 127.0.0.1, $(nproc) cores, $(date -u +%Y-%m-%d)"
report "direct (curl -> nginx)" "https://127.0.0.1:$up_port/blob"
for wire in framed raw; do
  "$bin/kopilot-agent" --connect "wss://127.0.0.1:$hub_port/connect?token=$token" --hub-ca ca.crt \
    --apiserver "https://127.0.0.1:$up_port" --token-file sa.token --ca-file ca.crt --wire $wire 2> agent-$wire.log &
  apid=$!
  wait_for agent-$wire.log 'connected'
  report "tunnel, $wire" "https://127.0.0.1:$hub_port/proxy/default_perf/blob"
  kill $apid; wait $apid 2>/dev/null || true
done
# The original design, rebuilt: Go hub + Go agent from Debian's packages.
gobuild() { (cd "$root" && GO111MODULE=off GOPATH="$work/go:/usr/share/gocode" GOFLAGS= GOCACHE="$work/go/cache" go build -o "$work/$1" "./$2"); }
gobuild basehub perf/baseline/hub
gobuild goagent perf/baseline/agent
"$work/basehub" --bind 127.0.0.1:0 --tls-cert hub.crt --tls-key hub.key --agent-token "$token" 2> basehub.log &
pids+=($!)
wait_for basehub.log 'listening on'
base_port=$(grep -ao 'listening on 127.0.0.1:[0-9]*' basehub.log | cut -d: -f2)
"$work/goagent" -connect "wss://127.0.0.1:$base_port/connect?token=$token" -hub-ca ca.crt \
  -apiserver "https://127.0.0.1:$up_port" -ca-file ca.crt -token-file sa.token 2> goagent.log &
pids+=($!)
wait_for basehub.log 'session up'
report "original design (Go)" "https://127.0.0.1:$base_port/proxy/default_perf/blob"
report "direct again" "https://127.0.0.1:$up_port/blob"
