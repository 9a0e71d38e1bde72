#!/bin/bash
# Runs every bunce test on a fresh Debian 12 machine: core unit tests (GoogleTest), then
# pg_regress, isolation specs and TAP tests against throwaway PostgreSQL 15 servers.
# As root it installs what it needs and runs PostgreSQL as the unprivileged "postgres" user
# (initdb refuses root); as any other user it expects the packages to be there.
# Ends with one line: "N passed, N failed".
# ONLY=unit|sanitize|fuzz|regress|isolation|tap runs one suite; PROVE_TESTS='test/t/020_*.pl'
# picks TAP files; FUZZ_SECONDS (default 30) is the time per fuzz target.
set -uo pipefail
cd "$(dirname "$0")/.."
SRC=$(pwd)
. test/deps.sh
install_bunce_deps || { echo "package installation failed"; echo "0 passed, 1 failed"; exit 1; }
export PATH="/usr/lib/postgresql/15/bin:$PATH"
LOGDIR=$(mktemp -d /tmp/bunce-tests.XXXXXX)
chmod 755 "$LOGDIR"
passed=0
failed=0
summary=()
record() {  # record NAME PASSED FAILED
    passed=$((passed + $2))
    failed=$((failed + $3))
    summary+=("$(printf '%-22s %4d passed, %d failed' "$1" "$2" "$3")")
}

ONLY=${ONLY:-}
want() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }
PROVE_TESTS=${PROVE_TESTS:-test/t/*.pl}

# run_ctest NAME LOG BUILD_DIR [cmake options]: builds the core's unit tests in BUILD_DIR and
# runs them with ctest, recording NAME; on failure shows what LOG says failed.
run_ctest() {
    local name=$1 log=$2 dir=$3
    shift 3
    if cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >"$log.build" 2>&1 &&
       make -C "$dir" -j2 >>"$log.build" 2>&1; then
        (cd "$dir" && ctest --output-on-failure) >"$log" 2>&1
        total=$(sed -n 's/.*tests passed, \([0-9]*\) tests failed out of \([0-9]*\)/\2/p' "$log")
        bad=$(sed -n 's/.*tests passed, \([0-9]*\) tests failed out of .*/\1/p' "$log")
        record "$name" "$(( ${total:-0} - ${bad:-0} ))" "${bad:-1}"
        [ "${bad:-1}" = 0 ] || grep -E "Failed|FAILED|ERROR: AddressSanitizer|runtime error" "$log" | head -20
    else
        tail -30 "$log.build"
        record "$name (build)" 0 1
    fi
}

if want unit; then
echo "== unit tests (GoogleTest)"
run_ctest "unit" "$LOGDIR/unit.log" "$LOGDIR/build"
fi

# The unit tests again, built with AddressSanitizer + UndefinedBehaviorSanitizer: a report
# aborts the test binary, so ctest counts that test as failed.
if want sanitize; then
echo "== unit tests under ASan + UBSan"
CXX=clang++-14 ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    run_ctest "sanitize (ASan+UBSan)" "$LOGDIR/sanitize.log" "$LOGDIR/build-sanitize" -DBUNCE_SANITIZE=ON
fi

# libFuzzer on the core's entry points, FUZZ_SECONDS each (test/fuzz/run.sh).
if want fuzz; then
echo "== fuzz targets (libFuzzer, ${FUZZ_SECONDS:-30}s each)"
FUZZ_LOGDIR="$LOGDIR/fuzz" bash test/fuzz/run.sh >"$LOGDIR/fuzz.log" 2>&1
grep -E '^fuzz_|^  |INVARIANT|ERROR|runtime error|build of' "$LOGDIR/fuzz.log"
ok=$(grep -cE '^fuzz_[a-z_]+ +ok' "$LOGDIR/fuzz.log")
bad=$(grep -cE '^fuzz_[a-z_]+ +FINDING' "$LOGDIR/fuzz.log")
if [ "$ok" = 0 ] && [ "$bad" = 0 ]; then bad=1; tail -20 "$LOGDIR/fuzz.log"; fi
record "fuzz" "$ok" "$bad"
fi

echo "== build and install the extension"
MAKE_INSTALL="make -j2 >/dev/null && make install >/dev/null"
if [ "$(id -u)" = 0 ]; then
    # A copy owned by postgres: the test servers run as that user and write into the tree.
    WORK="$LOGDIR/src"
    mkdir -p "$WORK"
    tar -C "$SRC" --exclude=./build --exclude=./.git -cf - . | tar -C "$WORK" -xf -
    (cd "$WORK" && make clean >/dev/null 2>&1; eval "$MAKE_INSTALL") >"$LOGDIR/build.log" 2>&1
    build_rc=$?
    chown -R postgres "$WORK" "$LOGDIR"
    as_pg() { su postgres -s /bin/bash -c "cd '$WORK' && $1"; }
else
    WORK="$SRC"
    (eval "$MAKE_INSTALL") >"$LOGDIR/build.log" 2>&1
    build_rc=$?
    as_pg() { bash -c "cd '$WORK' && $1"; }
fi
if [ $build_rc != 0 ]; then
    tail -30 "$LOGDIR/build.log"
    record "extension build" 0 1
elif [ "$ONLY" != unit ] && [ "$ONLY" != sanitize ] && [ "$ONLY" != fuzz ]; then
    if want regress; then
    echo "== pg_regress"
    as_pg "make installcheck ISOLATION= TAP_TESTS=" >"$LOGDIR/regress.log" 2>&1
    ok=$(grep -cE '^(test| )? *[a-z0-9_]+ +\.\.\. ok' "$LOGDIR/regress.log")
    bad=$(grep -cE '\.\.\. FAILED' "$LOGDIR/regress.log")
    if [ "$ok" = 0 ] && [ "$bad" = 0 ]; then bad=1; tail -20 "$LOGDIR/regress.log"; fi
    record "pg_regress" "$ok" "$bad"
    [ "$bad" = 0 ] || { grep -E 'FAILED' "$LOGDIR/regress.log"; head -150 "$WORK/regression.diffs" 2>/dev/null; }
    fi

    if want isolation; then
    echo "== isolation"
    as_pg "make installcheck REGRESS= TAP_TESTS=" >"$LOGDIR/isolation.log" 2>&1
    ok=$(grep -cE '\.\.\. ok' "$LOGDIR/isolation.log")
    bad=$(grep -cE '\.\.\. FAILED' "$LOGDIR/isolation.log")
    if [ "$ok" = 0 ] && [ "$bad" = 0 ]; then bad=1; tail -20 "$LOGDIR/isolation.log"; fi
    record "isolation" "$ok" "$bad"
    [ "$bad" = 0 ] || { grep -E 'FAILED' "$LOGDIR/isolation.log"; head -100 "$WORK/output_iso/regression.diffs" 2>/dev/null; }
    fi

    if want tap; then
    echo "== TAP (worker, crashes, failover) against the Bunce stand-in"
    as_pg "make installcheck REGRESS= ISOLATION= PROVE_FLAGS='-I test/t -v' PROVE_TESTS='$PROVE_TESTS'" >"$LOGDIR/tap.log" 2>&1
    ok=$(grep -cE '^ok [0-9]+' "$LOGDIR/tap.log")
    # "not ok ... # TODO" is a known, documented gap that prove does not count as failed.
    bad=$(grep -E '^not ok [0-9]+' "$LOGDIR/tap.log" | grep -vc '# TODO')
    grep -qE '^Result: PASS' "$LOGDIR/tap.log" || { [ "$bad" != 0 ] || bad=1; }
    record "TAP" "$ok" "$bad"
    grep -E '^(not ok|t/|test/t/|Result:|Files=)|Dubious|Failed' "$LOGDIR/tap.log" | head -40
    # Tests kill processes with SIGKILL on purpose; any other signal is a crash of ours.
    if grep -E "terminated by signal ([0-8]|1[0-9])\b" "$WORK"/tmp_check/log/*.log 2>/dev/null; then
        echo "a server process crashed during the TAP tests"
        record "server crashes" 0 1
    fi
    fi
fi

echo
echo "== summary (logs in $LOGDIR)"
printf '%s\n' "${summary[@]}"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
