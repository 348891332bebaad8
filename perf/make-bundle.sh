#!/usr/bin/env bash
# Packs kopilot-perf and everything it starts into one .tar.xz that runs on
# an x86_64 or ARM64 Linux machine with neither Swift nor Go (for example a
# many-core machine borrowed for the scale scenario):
#
#   perf/make-bundle.sh [OUT.tar.xz]        (default: kopilot-perf-bundle.tar.xz)
#   # on the other machine:
#   tar xJf kopilot-perf-bundle.tar.xz && kopilot-perf-bundle/run.sh --scenarios scale
#
# Layout: bin/ holds one small launcher per program that needs shared
# libraries (our release binaries, stripped; wrk, curl, nginx from this
# machine). A launcher runs the real program from libexec/ through the
# bundled dynamic loader with --library-path lib, so the program gets the
# libraries `ldd` listed here, the Swift runtime and OpenSSL included,
# whatever the other machine has. --argv0 keeps the launcher's path as
# argv[0], which is how kopilot-perf finds its siblings. The Go programs
# are static (CGO_ENABLED=0) and go in perf/bin, where kopilot-perf looks
# before it tries to build them; perf/baseline marks the folder as a
# checkout for it. The loader needs glibc 2.33 or later for --argv0.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${1:-kopilot-perf-bundle.tar.xz}
case "$out" in /*) ;; *) out="$root/$out" ;; esac

echo "building the release binaries"
swift build -c release --scratch-path .build-release >/dev/null
rel=$(swift build -c release --scratch-path .build-release --show-bin-path)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
b="$stage/kopilot-perf-bundle"
mkdir -p "$b/bin" "$b/libexec" "$b/lib" "$b/perf/bin" "$b/perf/baseline"

# The loader every program here was linked against.
loader=$(readelf -l "$rel/kopilot-hub" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
[ -n "$loader" ] || { echo "make-bundle: no program interpreter in kopilot-hub" >&2; exit 1; }
cp -L "$loader" "$b/lib/"
loader_name=$(basename "$loader")

# Copies a program into libexec (stripped), its libraries into lib, and
# writes its launcher into bin.
add() {
  local name=$1 src=$2
  cp -L "$src" "$b/libexec/$name"
  strip --strip-unneeded "$b/libexec/$name" 2>/dev/null || true
  ldd "$src" | awk '/=> \// { print $3 } /^\t\// { print $1 }' | while read -r lib; do
    [ -e "$b/lib/$(basename "$lib")" ] || cp -L "$lib" "$b/lib/"
  done
  cat >"$b/bin/$name" <<EOF
#!/bin/sh
here=\$(CDPATH= cd -- "\$(dirname -- "\$0")/.." && pwd)
exec "\$here/lib/$loader_name" --library-path "\$here/lib" --argv0 "\$here/bin/$name" "\$here/libexec/$name" "\$@"
EOF
  chmod +x "$b/bin/$name"
}

for p in kopilot-perf kopilot-hub kopilot-agent; do add "$p" "$rel/$p"; done
for p in wrk curl nginx; do
  src=$(command -v "$p" || true)
  [ -n "$src" ] || { echo "make-bundle: $p not found (bash Tests/setup-debian.sh installs it)" >&2; exit 1; }
  add "$p" "$src"
done
strip --strip-unneeded "$b"/lib/*.so* 2>/dev/null || true

echo "building the Go programs (static)"
gocache="${HOME}/.cache/kopilot-perf/go-build"
gopath=$(mktemp -d)
build_go() {
  CGO_ENABLED=0 GO111MODULE=off GOFLAGS= GOCACHE="$gocache" GOPATH="$gopath:/usr/share/gocode" \
    go build -trimpath -ldflags "-s -w" -o "$b/perf/bin/$2" "./$1"
}
build_go perf/upstream upstream
build_go perf/watchers watchers
build_go perf/baseline/hub basehub
build_go perf/baseline/agent baseagent
rm -rf "$gopath"
cp perf/wrk-report.lua "$b/perf/"

cat >"$b/run.sh" <<'EOF'
#!/bin/sh
# kopilot-perf from the bundle; its tools come first on PATH. Results go to
# the bundle's perf/results unless --results says otherwise.
here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
PATH="$here/bin:$PATH"
export PATH
exec "$here/bin/kopilot-perf" "$@"
EOF
chmod +x "$b/run.sh"

echo "packing"
tar -C "$stage" -cf - kopilot-perf-bundle | xz -T0 -6 >"$out"
echo "$out: $(du -h "$out" | cut -f1)"
