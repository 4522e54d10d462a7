#!/bin/sh
# run.sh: runs every test program ($BUILD/tests/test_*) and shell test
# (tests/*_test.sh); each prints one line per case, "PASS name", "FAIL name"
# or "SKIP name: reason". A program that dies without reporting counts as one
# failure. With SAN_BUILD set, the C tests and the CLI tests run a second time
# on that (sanitizer) build, their names tagged "asan:". Ends with
# "N passed, N failed, N skipped".
BUILD=${BUILD:-build}
export TT_SHARED=${TT_SHARED:-$(cd "$(dirname "$0")/.." && pwd)/../shared}
TIMEOUT=${TEST_TIMEOUT:-1200}
log=$(mktemp)
err=$(mktemp)
trap 'rm -f "$log" "$err"' EXIT

# run_one NAME CMD...: run a test program, record its lines
run_one() {
    name=$1
    shift
    start=$(date +%s)
    out=$(timeout "$TIMEOUT" "$@" 2>"$err")
    rc=$?
    [ -n "$out" ] && echo "$out" && echo "$out" >> "$log"
    if [ $rc -ne 0 ]; then
        sed 's/^/    /' "$err" | tail -40
        if ! echo "$out" | grep -q '^FAIL '; then
            echo "FAIL $name: exited with status $rc without reporting a failure"
            echo "FAIL $name" >> "$log"
        fi
    fi
    echo "  ($name: $(( $(date +%s) - start ))s)"
}

for t in "$BUILD"/tests/test_*; do
    case "$t" in *.d) continue ;; esac
    [ -x "$t" ] && TUTTI=$BUILD/tutti run_one "$(basename "$t")" "$t"
done
for t in tests/*_test.sh; do
    TUTTI=$BUILD/tutti run_one "$(basename "$t")" sh "$t"
done
if [ -n "$SAN_BUILD" ]; then
    export TT_TEST_TAG=asan ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1
    for t in "$SAN_BUILD"/tests/test_*; do
        case "$t" in *.d) continue ;; esac
        [ -x "$t" ] && run_one "asan:$(basename "$t")" "$t"
    done
    TUTTI=$SAN_BUILD/tutti run_one asan:cli_test.sh sh tests/cli_test.sh
fi
p=$(grep -c '^PASS ' "$log"); f=$(grep -c '^FAIL ' "$log"); s=$(grep -c '^SKIP ' "$log")
echo "$p passed, $f failed, $s skipped"
[ "$f" -eq 0 ]
