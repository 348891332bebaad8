#!/usr/bin/env bash
# Self-test of the fake host-cluster kube-apiserver: builds it, makes a CA
# and a 127.0.0.1 certificate with openssl, starts it on port 0 and drives
# it with every real kubectl found (apply a Cluster, get its token with
# jsonpath, get clusters as a table, delete) and with curl (a watch with
# bookmarks, a 410 after compaction, TokenReview, SubjectAccessReview, 401).
# Prints PASS/FAIL per check and a summary; exits 1 if anything failed.
#
#   Tests/FakeHostAPI/selftest.sh
#   KUBECTLS="/usr/bin/kubectl" Tests/FakeHostAPI/selftest.sh
#   KEEP=1 ...                           # keep the work directory
#
# Needs: go (GOPATH mode, standard library only), openssl, curl, python3.
set -u

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
work=$(mktemp -d /tmp/fakehost-selftest.XXXXXX)
server_pid=""
cleanup() {
	[ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
	for p in $(jobs -p); do kill "$p" 2>/dev/null; done
	if [ -z "${KEEP:-}" ]; then rm -rf "$work"; else echo "work directory kept: $work"; fi
}
trap cleanup EXIT

fail_count=0
pass_count=0
summary=""
result() { # result TAG NAME STATUS [DETAIL]
	printf '%-6s %-10s %-34s %s\n' "$3" "$1" "$2" "${4:-}"
	if [ "$3" = PASS ]; then pass_count=$((pass_count + 1)); else fail_count=$((fail_count + 1)); summary="$summary\n  $1 $2 ${4:-}"; fi
}

echo "building fakehost in $work"
if ! (cd "$repo" && GO111MODULE=off GOPATH="$work/gopath" GOFLAGS= GOCACHE="$work/gocache" \
	go build -o "$work/fakehost" ./Tests/FakeHostAPI); then
	echo "FAIL build"; exit 1
fi

(
	cd "$work" || exit 1
	openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=fakehost-ca &&
	openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1 &&
	printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > ext.cnf &&
	openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile ext.cnf
) >"$work/openssl.log" 2>&1 || { echo "FAIL openssl (see $work/openssl.log)"; KEEP=1; exit 1; }

admin="admin-$RANDOM$RANDOM"
caller="caller-$RANDOM$RANDOM"
printf '%s,admin,uid-admin,"system:masters"\n%s,alice,uid-alice,"devs"\n' "$admin" "$caller" >"$work/tokens.csv"

"$work/fakehost" --cert "$work/server.crt" --key "$work/server.key" --tokens "$work/tokens.csv" \
	--bookmark-interval 200ms --history 50 -v >"$work/fakehost.out" 2>"$work/fakehost.log" &
server_pid=$!
port=""
for _ in $(seq 100); do
	port=$(awk '/^PORT /{print $2; exit}' "$work/fakehost.out")
	[ -n "$port" ] && break
	sleep 0.1
done
[ -n "$port" ] || { echo "FAIL fakehost did not print PORT"; cat "$work/fakehost.log"; exit 1; }
echo "fakehost listening on 127.0.0.1:$port"
base="https://127.0.0.1:$port"
C() { curl -sS --cacert "$work/ca.crt" -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' "$@"; }
MP() { curl -sS --cacert "$work/ca.crt" -H "Authorization: Bearer $admin" -H 'Content-Type: application/merge-patch+json' -X PATCH "$@"; }
clusters="$base/apis/kopilot.smartx.com/v1alpha1/namespaces/default/clusters"

# ---- curl ----
body=$(curl -sS --cacert "$work/ca.crt" -H "Authorization: Bearer wrong" "$base/apis")
case "$body" in *'"reason":"Unauthorized","code":401}') result curl "401 bad token" PASS ;; *) result curl "401 bad token" FAIL "$body" ;; esac

body=$(C -X POST "$base/apis/authentication.k8s.io/v1/tokenreviews" -d "{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"TokenReview\",\"spec\":{\"token\":\"$caller\"}}")
echo "$body" | python3 -c 'import json,sys; s=json.load(sys.stdin)["status"]; sys.exit(0 if s["authenticated"] and s["user"]["username"]=="alice" and "system:authenticated" in s["user"]["groups"] else 1)' &&
	result curl "TokenReview" PASS || result curl "TokenReview" FAIL "$body"

C -X POST "$base/apis/rbac.authorization.k8s.io/v1/clusterroles" -d '{"metadata":{"name":"proxy-sample"},"rules":[{"nonResourceURLs":["/proxy/default_sample/*"],"verbs":["get"]}]}' >/dev/null
C -X POST "$base/apis/rbac.authorization.k8s.io/v1/clusterrolebindings" -d '{"metadata":{"name":"devs"},"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"proxy-sample"},"subjects":[{"kind":"Group","name":"devs"}]}' >/dev/null
sar() { C -X POST "$base/apis/authorization.k8s.io/v1/subjectaccessreviews" -d "{\"kind\":\"SubjectAccessReview\",\"apiVersion\":\"authorization.k8s.io/v1\",\"spec\":{\"user\":\"alice\",\"groups\":[\"devs\"],\"nonResourceAttributes\":{\"path\":\"$1\",\"verb\":\"get\"}}}" |
	python3 -c 'import json,sys; print(json.load(sys.stdin)["status"]["allowed"])'; }
[ "$(sar /proxy/default_sample/api)" = True ] && [ "$(sar /proxy/default_other/api)" = False ] &&
	result curl "SubjectAccessReview" PASS || result curl "SubjectAccessReview" FAIL

# A watch with bookmarks sees a change, then a BOOKMARK at or past it;
# after /_fake/compact it gets ERROR 410 and ends.
rv=$(C "$base/apis/kopilot.smartx.com/v1alpha1/clusters" | python3 -c 'import json,sys; print(json.load(sys.stdin)["metadata"]["resourceVersion"])')
C -N "$base/apis/kopilot.smartx.com/v1alpha1/clusters?watch=1&allowWatchBookmarks=true&resourceVersion=$rv&timeoutSeconds=30" >"$work/watch.out" 2>&1 &
wpid=$!
sleep 0.5
C -X POST "$clusters" -d '{"apiVersion":"kopilot.smartx.com/v1alpha1","kind":"Cluster","metadata":{"name":"watched"},"token":"0123456789abcdef0123"}' >/dev/null
# wait (at most 10 s) for a BOOKMARK after the ADDED
for _ in $(seq 100); do [ -n "$(awk '/"ADDED"/{a=1} a&&/"BOOKMARK"/{print; exit}' "$work/watch.out" 2>/dev/null)" ] && break; sleep 0.1; done
C -X POST "$base/_fake/compact" >/dev/null
wait "$wpid"
if python3 - "$work/watch.out" <<'PY'
import json, sys
evs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
types = [e["type"] for e in evs]
added = [e for e in evs if e["type"] == "ADDED"]
marks = [e for e in evs if e["type"] == "BOOKMARK"]
ok = (len(added) == 1 and marks and types[-1] == "ERROR" and evs[-1]["object"]["code"] == 410
      and all(set(m["object"]["metadata"]) == {"resourceVersion"} for m in marks)
      and int(marks[-1]["object"]["metadata"]["resourceVersion"]) >= int(added[0]["object"]["metadata"]["resourceVersion"]))
sys.exit(0 if ok else 1)
PY
then result curl "watch: ADDED, BOOKMARK, ERROR 410" PASS
else result curl "watch: ADDED, BOOKMARK, ERROR 410" FAIL "$(head -c 400 "$work/watch.out")"; fi
body=$(C "$base/apis/kopilot.smartx.com/v1alpha1/clusters?watch=1&resourceVersion=$rv")
case "$body" in '{"type":"ERROR","object":{"kind":"Status"'*'"reason":"Expired","code":410}}') result curl "watch from compacted RV -> 410" PASS ;;
*) result curl "watch from compacted RV -> 410" FAIL "$body" ;; esac
h=$(C -o /dev/null -w '%{http_version}' "$base/version")
[ "$h" = "1.1" ] && result curl "HTTP/1.1 only" PASS || result curl "HTTP/1.1 only" FAIL "got HTTP/$h"
C -X DELETE "$clusters/watched" >/dev/null

# ---- kubectl ----
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
    token: $admin
contexts:
- name: fake
  context: {cluster: fake, user: tester, namespace: default}
current-context: fake
EOF
if [ -n "${KUBECTLS:-}" ]; then
	kubectls=$KUBECTLS
else
	kubectls=$(ls /usr/lib/google-cloud-sdk/bin/kubectl.1.* 2>/dev/null | sort -t. -k3 -n)
	[ -x /usr/bin/kubectl ] && kubectls="$kubectls /usr/bin/kubectl"
fi
[ -n "$kubectls" ] || { echo "FAIL no kubectl found"; exit 1; }

for kc in $kubectls; do
	[ -x "$kc" ] || continue
	v=$("$kc" version --client -o json 2>/dev/null | python3 -c 'import json,sys; c=json.load(sys.stdin)["clientVersion"]; print(c["major"]+"."+c["minor"].rstrip("+"))' 2>/dev/null)
	[ -n "$v" ] || v=$(basename "$kc")
	tag=$v
	[ "$kc" = /usr/bin/kubectl ] && tag="$v(usr)"
	cache="$work/cache-$(echo "$tag" | tr -c 'a-z0-9.\n' '_')"
	K() { timeout -k 2 30 "$kc" --kubeconfig "$work/kubeconfig" --cache-dir "$cache" "$@"; }
	out="$work/out-$tag"
	name="sample-$(echo "$tag" | tr -c 'a-z0-9\n' '-')"
	token="tok-$RANDOM$RANDOM-0123456789"
	printf 'apiVersion: kopilot.smartx.com/v1alpha1\nkind: Cluster\nmetadata:\n  name: %s\n  namespace: default\ntoken: %s\n' "$name" "$token" >"$work/cluster.yaml"
	echo "== kubectl $v ($kc)"

	if K apply --validate=false -f "$work/cluster.yaml" >"$out" 2>&1 && grep -q "cluster.kopilot.smartx.com/$name created" "$out"; then
		result "$tag" "apply -f (create)" PASS
	else result "$tag" "apply -f (create)" FAIL "$(head -2 "$out")"; fi
	got=$(K get cluster "$name" -o jsonpath='{.token}' 2>&1)
	[ "$got" = "$token" ] && result "$tag" "get -o jsonpath={.token}" PASS || result "$tag" "get -o jsonpath={.token}" FAIL "$got"

	# apply again with a new token: a merge patch; generation goes to 2
	sed -i "s/^token: .*/token: $token-2/" "$work/cluster.yaml"
	K apply --validate=false -f "$work/cluster.yaml" >"$out" 2>&1
	got=$(K get cluster "$name" -o jsonpath='{.token} {.metadata.generation}' 2>&1)
	patched=$(grep -c "PATCH /apis/kopilot.smartx.com/v1alpha1/namespaces/default/clusters/$name?.* 200" "$work/fakehost.log")
	[ "$got" = "$token-2 2" ] && [ "$patched" = 1 ] && result "$tag" "apply -f (patch)" PASS || result "$tag" "apply -f (patch)" FAIL "$got, $patched PATCH, $(head -2 "$out")"

	MP "$clusters/$name/status" -d '{"status":{"connected":true,"sessions":2}}' >/dev/null
	if K get clusters >"$out" 2>&1 && grep -Eq '^NAME +CONNECTED +SESSIONS +AGE' "$out" && grep -Eq "^$name +true +2 +[0-9]+s" "$out"; then
		result "$tag" "get clusters (table)" PASS
	else result "$tag" "get clusters (table)" FAIL "$(tr '\n' '|' <"$out" | head -c 300)"; fi
	if K get clusters -A >"$out" 2>&1 && grep -Eq "^default +$name +true +2" "$out"; then
		result "$tag" "get clusters -A" PASS
	else result "$tag" "get clusters -A" FAIL "$(tr '\n' '|' <"$out" | head -c 300)"; fi

	if K delete -f "$work/cluster.yaml" >"$out" 2>&1 && grep -q "cluster.kopilot.smartx.com \"$name\" deleted" "$out" &&
		K get cluster "$name" 2>&1 | grep -q NotFound; then
		result "$tag" "delete -f" PASS
	else result "$tag" "delete -f" FAIL "$(head -2 "$out")"; fi
done

echo
echo "passed: $pass_count, failed: $fail_count"
if [ "$fail_count" -gt 0 ]; then
	printf "failures:$summary\n"
	KEEP=1
	exit 1
fi
exit 0
