#!/usr/bin/env bash
# The test suite, as CI runs it: a -Werror pass over the C sources, the plain
# `swift test`, the same suite under AddressSanitizer (with UBSan compiled into
# the C targets) and under ThreadSanitizer, then a short smoke run of every
# fuzz target.
#   Tests/run.sh           everything
#   Tests/run.sh --quick   the warnings gate and the plain pass only
# FUZZ_SECONDS (default 10) sets how long each fuzz target runs.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bash Tests/setup-debian.sh

step() { echo; echo "== $* ($(date +%T))"; }

# Warnings gate. Package.swift builds the C core with -Wall -Wextra but
# without -Werror (a newer compiler's new warning must not break users'
# builds), so CI fails on any warning here instead. SwiftPM rejects
# `-Xcc -Werror`, so clang checks the sources directly, with the warning
# flags read from Package.swift so the two cannot drift apart.
step "C warnings gate (-Werror)"
wflags=$(sed -n 's/^let cWarnings: \[CSetting\] = \[\.unsafeFlags(\[\(.*\)\])\]$/\1/p' Package.swift | tr -d '",')
[ -n "$wflags" ] || { echo "run.sh: cannot find cWarnings in Package.swift" >&2; exit 1; }
# The toolchain's clang, the one SwiftPM compiles the C targets with.
clang=$(dirname "$(readlink -f "$(command -v swift)")")/clang
"$clang" -fsyntax-only $wflags -Werror -D_GNU_SOURCE \
  -ICSources/KopilotCore/include -ICSources/KopilotCore -ITests/KopilotTestSupport/include \
  CSources/KopilotCore/*.c Tests/KopilotTestSupport/*.c Tests/Fuzz/*.c
echo "no warnings"

# The hub and the agent run one loop per CPU by default. The plain pass
# pins two loops each (LOOPS), whatever the CI machine has, so moving
# connections between loops is always exercised; the end-to-end suites
# then run once more with one loop each, the shape a pod with limits.cpu 1
# gets. The sanitizer passes keep the default.
step "swift test (LOOPS=2)"
LOOPS=2 swift test

# The kubectl matrix's older end (the *127Tests classes) and the replica
# smuggling suite, which repeats the single-hub one through a peer, run in
# the plain pass only; that keeps a clean-clone run of this script near 45
# minutes on two cores.
once='127Tests|SmugglingTestsAcrossReplicas'

step "end-to-end tests with LOOPS=1"
LOOPS=1 swift test --skip-build --filter EndToEndTests --skip "$once"

[ "${1:-}" = "--quick" ] && exit 0

# The benchmark harness's smoke pass: every scenario against every target
# with small sizes, on the debug build just made. It checks that each
# scenario works and yields numbers; it asserts no timing.
step "kopilot-perf --quick (smoke; no timing asserted)"
swift build --product kopilot-perf
"$(swift build --show-bin-path)/kopilot-perf" --quick --results "${TMPDIR:-/tmp}/kopilot-perf-results"

# Each sanitizer pass has its own scratch path: sharing .build would rebuild
# everything at each switch, and SwiftPM keys its build on the flags, so a
# pass never links objects built for another.

# UBSan: this Swift rejects `swift test --sanitize=undefined` on Linux, so
# Package.swift adds -fsanitize=undefined to the C targets when KOPILOT_UBSAN=1
# (it links through the ASan runtime). A UB finding aborts the test process.
# LeakSanitizer stays on; Tests/lsan.supp hides only the Swift runtime's,
# XCTest's and Foundation's own allocations, so a leak in the C core still
# fails the pass. The path is absolute because the tests' child processes
# (built with ASan too) inherit these variables from another directory.
step "swift test, AddressSanitizer + UBSan (C targets)"
KOPILOT_UBSAN=1 \
LSAN_OPTIONS="suppressions=$root/Tests/lsan.supp:print_suppressions=0" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
  swift test --scratch-path .build-asan --sanitize=address --skip "$once"

# TSan exits 66 at the end of a run that reported anything, which fails the
# pass. Tests/tsan.supp exists for runtime-library noise only (see there).
# KOPILOT_TSAN=1 swaps Synchronization's Mutex, whose contended hand-over
# happens in the kernel where TSan cannot see it, for a pthread one with the
# same calls (Sources/KopilotBase/TSanMutex.swift).
# The pass runs the suites whose threads live in the test process: the unit
# suites and the end-to-end suites that run a hub, an agent or their
# Services in process. The other end-to-end suites drive hubs and agents in
# child processes, whose TSan reports go to their own logs, not to this
# process; ASan and UBSan abort a child on their first finding, which those
# suites do see.
step "swift test, ThreadSanitizer"
KOPILOT_TSAN=1 TSAN_OPTIONS="suppressions=$root/Tests/tsan.supp:second_deadlock_stack=1" \
  swift test --scratch-path .build-tsan --sanitize=thread \
  --filter 'KopilotCoreTests|KopilotIOTests|KopilotBaseTests|KopilotHubTests|KopilotKubeTests|EndToEndTests\.(LoopsTests|PeerForwardTests|AgentTokenTests|ServiceShutdownTests)'

step "fuzz smoke (${FUZZ_SECONDS:-10}s per target)"
LSAN_OPTIONS="suppressions=$root/Tests/lsan.supp" bash Tests/Fuzz/run.sh "${FUZZ_SECONDS:-10}"

step "all passes done"
