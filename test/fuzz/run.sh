#!/bin/bash
# Builds the libFuzzer targets in test/fuzz/ (clang-14, ASan + UBSan) and runs each for
# FUZZ_SECONDS (default 30) on a copy of its seed corpus: the corpus in the repository is
# never written to. Prints the executions per target; exits non-zero on any finding, with
# the input saved in the log directory and printed in hex.
#   FUZZ_SECONDS=600 FUZZ_TARGETS=payload bash test/fuzz/run.sh   # one target, longer
# FUZZ_LOGDIR picks the log directory (default: a new one under /tmp).
set -uo pipefail
cd "$(dirname "$0")/../.."
SRC=$(pwd)
FUZZ_SECONDS=${FUZZ_SECONDS:-30}
FUZZ_TARGETS=${FUZZ_TARGETS:-payload fields timestamp mapping api_url classify}
LOG=${FUZZ_LOGDIR:-$(mktemp -d /tmp/bunce-fuzz.XXXXXX)}
CXX=${CXX_FUZZ:-clang++-14}
BUILD="$LOG/build"
mkdir -p "$BUILD"
FLAGS="-std=c++17 -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined -I$SRC/src/core"

# Only the pure core: no PostgreSQL, no http_sender. Compiled once, linked into every target.
# Two compilers at a time (CI has 2 cores); a failed one is reported by name.
echo "== building fuzz targets in $BUILD"
compile() {  # compile OUTPUT ARGS...: logs into OUTPUT.log, prints the log on failure
    local out=$1; shift
    rm -f "$out"
    $CXX $FLAGS "$@" -o "$out" >"$out.log" 2>&1 || { cat "$out.log"; echo "build of $out failed"; return 1; }
}
objs=()
for f in payload timestamp mapping delivery; do
    compile "$BUILD/$f.o" -fsanitize=fuzzer-no-link -c "$SRC/src/core/$f.cpp" &
    [ $(jobs -r | wc -l) -lt 2 ] || wait -n
    objs+=("$BUILD/$f.o")
done
wait
for t in $FUZZ_TARGETS; do
    libs=()
    [ "$t" = api_url ] && libs=(-lcurl)  # libcurl's URL parser is the oracle
    compile "$BUILD/fuzz_$t" -fsanitize=fuzzer "$SRC/test/fuzz/fuzz_$t.cpp" "${objs[@]}" "${libs[@]}" &
    [ $(jobs -r | wc -l) -lt 2 ] || wait -n
done
wait
for t in $FUZZ_TARGETS; do [ -x "$BUILD/fuzz_$t" ] || exit 2; done
for o in "${objs[@]}"; do [ -f "$o" ] || exit 2; done

# A finding aborts; UBSan already aborts (-fno-sanitize-recover); leaks count too.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
ok=0
bad=0
for t in $FUZZ_TARGETS; do
    corpus="$LOG/corpus/$t"
    mkdir -p "$corpus" "$LOG/findings/$t"
    cp "$SRC/test/fuzz/corpus/$t/"* "$corpus/" 2>/dev/null
    case $t in  # JSON tokens and Bunce's keys help the JSON parsers past their first byte
        payload|mapping|classify) dict=("-dict=$SRC/test/fuzz/json.dict") ;;
        timestamp) dict=("-dict=$SRC/test/fuzz/timestamp.dict") ;;
        *) dict=() ;;
    esac
    # -jobs/-workers are left out on purpose: one process per target keeps the 2-core CI calm.
    "$BUILD/fuzz_$t" "$corpus" "${dict[@]}" -max_total_time="$FUZZ_SECONDS" -max_len=4096 \
        -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$LOG/findings/$t/" >"$LOG/$t.log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$LOG/$t.log" | tail -1)
    finding=$(ls "$LOG/findings/$t/" 2>/dev/null | head -1)
    if [ $rc = 0 ] && [ -z "$finding" ]; then
        ok=$((ok + 1))
        printf 'fuzz_%-10s ok       %s executions in %ss\n' "$t" "${execs:-?}" "$FUZZ_SECONDS"
    else
        bad=$((bad + 1))
        printf 'fuzz_%-10s FINDING  after %s executions (exit %s), log %s\n' "$t" "${execs:-?}" "$rc" "$LOG/$t.log"
        grep -m3 -E 'INVARIANT BROKEN|ERROR: AddressSanitizer|runtime error|ERROR: libFuzzer|terminate called|what\(\)' "$LOG/$t.log"
        if [ -n "$finding" ]; then
            echo "  input $LOG/findings/$t/$finding:"
            od -An -tx1 -v "$LOG/findings/$t/$finding" | head -20 | sed "s/^/  /"
        fi
    fi
done
echo "fuzz: $ok targets passed, $bad failed (logs in $LOG)"
[ $bad = 0 ]
