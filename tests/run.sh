#!/bin/sh
# run.sh: runs every test program (build/tests/test_*) and shell test
# (tests/*_test.sh); each prints one line per case, "PASS name", "FAIL name"
# or "SKIP name: reason". A program that dies without reporting counts as one
# failure. Ends with "N passed, N failed, N skipped".
BUILD=${BUILD:-build}
export TT_SHARED=${TT_SHARED:-$(cd "$(dirname "$0")/.." && pwd)/../shared}
export TUTTI=${TUTTI:-$BUILD/tutti}
TIMEOUT=${TEST_TIMEOUT:-900}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in "$BUILD"/tests/test_* tests/*_test.sh; do
    [ -e "$t" ] || continue
    case "$t" in *.d) continue ;; esac
    name=$(basename "$t")
    start=$(date +%s)
    case "$t" in
        *.sh) out=$(timeout "$TIMEOUT" sh "$t" 2>/tmp/tt_test_err.$$); rc=$? ;;
        *) out=$(timeout "$TIMEOUT" "$t" 2>/tmp/tt_test_err.$$); rc=$? ;;
    esac
    echo "$out"
    echo "$out" >> "$log"
    if [ $rc -ne 0 ]; then
        sed 's/^/    /' /tmp/tt_test_err.$$ | tail -40
        if ! echo "$out" | grep -q '^FAIL '; then
            echo "FAIL $name: exited with status $rc without reporting a failure"
            echo "FAIL $name" >> "$log"
        fi
    fi
    rm -f /tmp/tt_test_err.$$
    echo "  ($name: $(( $(date +%s) - start ))s)"
done
p=$(grep -c '^PASS ' "$log"); f=$(grep -c '^FAIL ' "$log"); s=$(grep -c '^SKIP ' "$log")
echo "$p passed, $f failed, $s skipped"
[ "$f" -eq 0 ]
