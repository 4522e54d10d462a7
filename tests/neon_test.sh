#!/bin/sh
# neon_test.sh: the NEON kernel tables (baseline and dotprod), cross-compiled
# for aarch64 (make build/neon/test_kcpu) and run under qemu-user: the same
# cases as test_kcpu, reported as neon_test/<case>. Skips, with the reason,
# where the cross compiler or qemu-aarch64 is missing (make deps installs
# them). The x86 tables, never present in an aarch64 build, are not listed.
cd "$(dirname "$0")/.." || exit 1
for tool in aarch64-linux-gnu-gcc qemu-aarch64; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "SKIP neon_test/all: $tool not installed (make deps installs gcc-aarch64-linux-gnu, qemu-user)"
        exit 0
    fi
done
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! make -s --no-print-directory DEBUG=0 build/neon/test_kcpu >"$log" 2>&1; then
    echo "FAIL neon_test/build: make build/neon/test_kcpu failed"
    tail -20 "$log" >&2
    exit 1
fi
qemu-aarch64 build/neon/test_kcpu >"$log" 2>&1
rc=$?
grep -v 'not compiled for this architecture' "$log" | sed -n 's/^\(PASS\|FAIL\|SKIP\) test_kcpu\//\1 neon_test\//p'
grep -v '^\(PASS\|FAIL\|SKIP\) ' "$log" >&2
exit $rc
