#!/bin/bash
# netns_cluster.sh up|down|agent: a test cluster of separate network hosts on
# one machine. `up` makes namespaces tt-ns1..tt-ns3, each with a veth pair
# on bridge tt-br (10.77.0.0/24; the bridge itself is 10.77.0.1, where
# mpirun listens); `agent HOST CMD...` is mpirun's launch agent: it runs CMD
# inside the namespace named HOST, so ranks talk over real TCP between
# distinct network stacks (TT_NETNS_PIN=1: each namespace's processes pinned
# to a core of their own). Needs root and iproute2.
set -u
N=${TT_NETNS_N:-3}
# TT_NETNS_PREFIX / TT_NETNS_NET: names and subnet (10.NET.0.0/24) of this
# cluster, so that two can exist at once (the tests' and a benchmark's)
P=${TT_NETNS_PREFIX:-tt-}
NET=10.${TT_NETNS_NET:-77}.0
case "${1:-}" in
up)
    ip link add ${P}br type bridge || exit 1
    ip addr add $NET.1/24 dev ${P}br
    ip link set ${P}br up
    for i in $(seq 1 "$N"); do
        ns=${P}ns$i
        ip netns add $ns
        ip link add ${P}v$i type veth peer name ${P}p$i
        ip link set ${P}p$i netns $ns
        ip link set ${P}v$i master ${P}br up
        ip -n $ns addr add $NET.$((10 + i))/24 dev ${P}p$i
        ip -n $ns link set ${P}p$i up
        ip -n $ns link set lo up
        grep -q " $ns\$" /etc/hosts || echo "$NET.$((10 + i)) $ns" >> /etc/hosts
    done
    ;;
down)
    for i in $(seq 1 "$N"); do
        ip netns del ${P}ns$i 2>/dev/null
        ip link del ${P}v$i 2>/dev/null
        sed -i "/ ${P}ns$i\$/d" /etc/hosts
    done
    ip link del ${P}br 2>/dev/null
    true
    ;;
agent)
    # Open MPI calls: agent [options] HOST CMD...; options start with '-'
    shift
    while [ "${1:-}" != "${1#-}" ]; do shift; done
    host=$1
    shift
    # TT_NETNS_PIN=1: the namespace's processes on a core of their own
    # (nsI on core I-1, modulo the cores), so a rank busy-polling in MPI
    # does not take the core of another namespace's rank
    pin=""
    if [ -n "${TT_NETNS_PIN:-}" ]; then
        i=${host##*ns}
        pin="taskset -c $(((i - 1) % $(nproc)))"
    fi
    # TT_NETNS_NICE=N: run them at that niceness (negative: ahead of other work)
    [ -n "${TT_NETNS_NICE:-}" ] && pin="nice -n $TT_NETNS_NICE $pin"
    # its own host name too (a UTS namespace), so ranks see distinct hosts
    exec ip netns exec "$host" $pin unshare --uts /bin/sh -c "hostname $host; $*"
    ;;
*)
    echo "usage: $0 up|down|agent HOST CMD..." >&2
    exit 2
    ;;
esac
