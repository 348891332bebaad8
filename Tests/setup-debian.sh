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
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "setup-debian: installing ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
