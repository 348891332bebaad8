#!/usr/bin/env bash
# Builds every libFuzzer target (Tests/Fuzz/fuzz_*.c) against the C core with
# ASan and UBSan, seeds each corpus from the test vectors, and runs each for
# N seconds (default 60), with Tests/Fuzz/<target>.dict when there is one.
#   Tests/Fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-60}; shift || true
out=Tests/Fuzz/out
mkdir -p "$out"
# The Swift toolchain's clang: it ships libFuzzer, the sanitizer runtimes and
# ld.lld, which Debian's clang needs extra packages for. $CC is not used, so a
# CI that sets CC=gcc still fuzzes; FUZZ_CC overrides.
cc=${FUZZ_CC:-$(dirname "$(readlink -f "$(command -v swift)")")/clang}
srcs=$(ls CSources/KopilotCore/*.c)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=($(cd Tests/Fuzz && ls fuzz_*.c | sed 's/\.c$//'))
for t in "${targets[@]}"; do
  "$cc" -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -fuse-ld=lld \
    -D_GNU_SOURCE -ICSources/KopilotCore/include -ICSources/KopilotCore \
    "Tests/Fuzz/$t.c" $srcs -luv -lssl -lcrypto -lpthread -o "$out/$t"
  corpus="$out/corpus-$t"
  mkdir -p "$corpus"
  seeds="Tests/Fuzz/seeds/${t#fuzz_}"
  [ -d "$seeds" ] && cp -n "$seeds"/* "$corpus"/ 2>/dev/null || true
  echo "== $t for ${secs}s"
  rc=0
  dict=()
  [ -f "Tests/Fuzz/$t.dict" ] && dict=(-dict="Tests/Fuzz/$t.dict")
  "$out/$t" -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="$out/$t-" "${dict[@]}" "$corpus" \
    >"$out/$t.log" 2>&1 || rc=$?
  grep -E "stat::number_of_executed_units|stat::average_exec_per_sec" "$out/$t.log" || true
  if [ $rc -ne 0 ]; then
    tail -40 "$out/$t.log" >&2
    echo "fuzz target $t failed (exit $rc); the input is in $out/" >&2
    exit 1
  fi
done
