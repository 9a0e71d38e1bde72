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
    if cmake -S . -B "$dir" "$@" >"$log.build" 2>&1 &&
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

# run_suite NAME "MAKE ARGS" OK_RE BAD_RE DIFFS [DONE_RE]: runs "make installcheck MAKE ARGS" as
# postgres into $LOGDIR/NAME.log and records NAME: passed = lines matching OK_RE, failed = lines
# matching BAD_RE but for "not ok ... # TODO" (a known, documented gap that prove does not count
# as failed). A log without a line matching DONE_RE (default: OK_RE or BAD_RE) and without a
# failure means the run did not get far: one failure. On failure it shows the failed lines and
# the head of DIFFS.
run_suite() {
    local name=$1 args=$2 ok_re=$3 bad_re=$4 diffs=$5 log="$LOGDIR/$1.log" ok bad rc=0
    local done_re=${6:-$3|$4}
    as_pg "make installcheck $args" >"$log" 2>&1 || rc=$?
    ok=$(grep -cE "$ok_re" "$log")
    bad=$(grep -E "$bad_re" "$log" | grep -vc '# TODO')
    # (a spec that does not parse, say, is in neither count: make's status says it)
    if [ "$bad" = 0 ] && { [ "$rc" != 0 ] || ! grep -qE "$done_re" "$log"; }; then bad=1; tail -20 "$log"; fi
    record "$name" "$ok" "$bad"
    if [ "$bad" != 0 ]; then
        grep -E "$bad_re" "$log" | head -40
        [ -z "$diffs" ] || head -150 "$diffs" 2>/dev/null
    fi
}

if want unit; then
echo "== unit tests (GoogleTest)"
run_ctest "unit" "$LOGDIR/unit.log" "$LOGDIR/build" -DBUNCE_WERROR=ON
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
# WERROR=1: a compiler warning fails the build.
MAKE_INSTALL="make -j2 WERROR=1 >/dev/null && make install >/dev/null"
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
    run_suite pg_regress "ISOLATION= TAP_TESTS=" '^(test| )? *[a-z0-9_]+ +\.\.\. ok' \
        '\.\.\. FAILED' "$WORK/regression.diffs"
    fi

    if want isolation; then
    echo "== isolation"
    run_suite isolation "REGRESS= TAP_TESTS=" '\.\.\. ok' '\.\.\. FAILED' \
        "$WORK/output_iso/regression.diffs"
    fi

    if want tap; then
    echo "== TAP (worker, crashes, failover) against the Bunce stand-in"
    run_suite TAP "REGRESS= ISOLATION= PROVE_FLAGS='-I test/t -v' PROVE_TESTS='$PROVE_TESTS'" \
        '^ok [0-9]+' '^not ok [0-9]+' "" '^Result: PASS'
    grep -E '^(t/|test/t/|Result:|Files=)|Dubious|Failed' "$LOGDIR/TAP.log" | head -40
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
