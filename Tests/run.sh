#!/usr/bin/env bash
# The test suite, as CI runs it: the plain pass, then the same suite under
# AddressSanitizer (with UBSan checks compiled into the C core) and under
# ThreadSanitizer, then a short smoke run of every fuzz target.
#   Tests/run.sh           everything
#   Tests/run.sh --quick   the plain pass only
set -euo pipefail
cd "$(dirname "$0")/.."
bash Tests/setup-debian.sh

echo "== swift test"
swift test

[ "${1:-}" = "--quick" ] && exit 0

echo "== swift test, AddressSanitizer + UBSan"
swift test --scratch-path .build-asan --sanitize=address --sanitize=undefined

echo "== swift test, ThreadSanitizer"
swift test --scratch-path .build-tsan --sanitize=thread

echo "== fuzz smoke"
bash Tests/Fuzz/run.sh 10
