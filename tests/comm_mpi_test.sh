#!/bin/sh
# comm_mpi_test.sh: the communicator's MPI backend under mpirun on this machine.
#  - the SPMD checks of tests/test_comm.c (build/tests/mpi_comm_driver) on
#    2 and 3 ranks over shared memory, on 3 ranks over TCP loopback, and on 3
#    ranks with 100-byte transfer chunks (TT_COMM_CHUNK_BYTES: the code paths
#    of transfers over 2 GiB);
#  - a rank that dies in the middle of an all-reduce (SIGKILL, _exit without
#    comm_free, comm_free then exit 1, comm_abort): the job must end with a
#    non-zero status within 60 s instead of hanging.
# Prints PASS/FAIL/SKIP lines like the C tests; skips when MPI is not built.
BUILD=${BUILD:-build}
D=${MPI_COMM_DRIVER:-$BUILD/tests/mpi_comm_driver}
pass() { echo "PASS comm_mpi/$1"; }
fail() { echo "FAIL comm_mpi/$1: $2"; }
skip() { echo "SKIP comm_mpi/$1: $2"; }

if ! command -v mpirun >/dev/null 2>&1; then
    skip all "mpirun not found (Debian: openmpi-bin libopenmpi-dev, then make MPI=1)"
    exit 0
fi
if [ ! -x "$D" ]; then
    skip all "MPI backend not built: no $D (make MPI=1 with libopenmpi-dev installed)"
    exit 0
fi

# Tests run as root in containers; two cores may host three ranks. In an
# ASan build (DEBUG=1) leak checking is off here: Open MPI leaves thousands of
# allocations of its dlopen'ed components behind; test_comm checks our leaks.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
MPIRUN="mpirun --oversubscribe --bind-to none"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# checks NAME NP [MPIRUN OPTIONS...]: the driver prints one line per case.
checks() {
    name=$1 np=$2
    shift 2
    timeout -k 10 300 $MPIRUN "$@" -np "$np" "$D" checks "$name" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    cat "$tmp/out"
    if [ $rc -ne 0 ] && ! grep -q '^FAIL ' "$tmp/out"; then
        fail "$name" "mpirun exited with status $rc: $(tail -c 600 "$tmp/err")"
    elif [ $rc -ne 0 ]; then
        sed 's/^/    /' "$tmp/err" | tail -30 >&2
    fi
}

checks np2 2
checks np3 3
checks np3_tcp 3 --mca pml ob1 --mca btl self,tcp --mca btl_tcp_if_include lo
export TT_COMM_CHUNK_BYTES=100
checks np3_chunked 3 -x TT_COMM_CHUNK_BYTES
unset TT_COMM_CHUNK_BYTES

# dies HOW: rank 1 of 3 leaves mid-collective; mpirun must end the job non-zero.
dies() {
    start=$(date +%s)
    TT_COMM_LEAVE_TIMEOUT_S=5 timeout -k 10 120 $MPIRUN -x TT_COMM_LEAVE_TIMEOUT_S -np 3 \
        "$D" "die-$1" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    t=$(($(date +%s) - start))
    if [ $t -ge 120 ]; then
        fail "rank_dies_$1" "the job hung; killed by the test after ${t}s"
    elif [ $rc -eq 0 ]; then
        fail "rank_dies_$1" "mpirun exited 0 after a rank died"
    elif [ $t -gt 60 ]; then
        fail "rank_dies_$1" "the job took ${t}s to end"
    elif ! grep -q "rank 1: dying" "$tmp/err"; then
        fail "rank_dies_$1" "status $rc but rank 1 never got to die: $(tail -c 400 "$tmp/err")"
    else
        pass "rank_dies_$1"
    fi
}

for how in kill exit free abort; do dies $how; done
