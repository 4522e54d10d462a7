#!/bin/sh
# netns_test.sh: tutti across three network namespaces (tests/netns_cluster.sh):
# ranks on distinct network stacks and host names, talking over TCP only
# (Open MPI's tcp transport restricted to the test subnet). Greedy tokens on 3
# such hosts equal those of 1 rank (tensor parallel, pipeline), and on 2 hosts
# of 2 ranks (hybrid: a stage per host, TP inside), and `tutti topo` sees 3
# hosts. Needs root
# (namespaces); skips, saying so, otherwise.
T=${TUTTI:-build/tutti}
S=${TT_SHARED:-../shared}
D=$(cd "$(dirname "$0")" && pwd)
T=$(cd "$(dirname "$T")" && pwd)/$(basename "$T")
pass() { echo "PASS netns/$1"; }
fail() { echo "FAIL netns/$1: $2"; }
skip() { echo "SKIP netns/$1: $2"; }
[ "$(id -u)" = 0 ] || { skip all "needs root to create network namespaces"; exit 0; }
command -v ip >/dev/null && command -v mpirun >/dev/null && command -v unshare >/dev/null ||
    { skip all "needs iproute2, util-linux and Open MPI"; exit 0; }
[ -f "$S/models/stories260K.gguf" ] || { skip all "models missing in $S"; exit 0; }
tmp=$(mktemp -d)
trap 'bash "$D/netns_cluster.sh" down; rm -rf "$tmp"' EXIT
bash "$D/netns_cluster.sh" down
bash "$D/netns_cluster.sh" up || { skip all "cannot create network namespaces here"; exit 0; }
printf "tt-ns1 slots=1\ntt-ns2 slots=1\ntt-ns3 slots=1\n" > "$tmp/hosts"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
run3() {
    timeout 300 mpirun --hostfile "$tmp/hosts" -np 3 --mca plm_rsh_agent "$D/netns_cluster.sh agent" \
        --mca oob_tcp_if_include 10.77.0.0/24 --mca btl self,tcp --mca btl_tcp_if_include 10.77.0.0/24 "$@"
}
tokens() { sed 's/.*"tokens":\[\([^]]*\)\].*/\1/' "$1"; }
run3 "$T" topo -t 1 --json > "$tmp/topo" 2>"$tmp/err"
hosts=$(grep -o '"host":"[^"]*"' "$tmp/topo" | sort -u | wc -l)
[ "$hosts" = 3 ] && pass topo_three_hosts || fail topo_three_hosts "hosts $hosts: $(head -c 300 "$tmp/err")"
for m in stories260K synth-qwen3.q8_0 synth-qwen3moe.q4_k_m; do
    f="$S/models/$m.gguf"
    "$T" run -m "$f" -p "Once upon a time" -n 16 --temp 0 --ignore-eos --json -t 1 > "$tmp/one" 2>/dev/null
    run3 "$T" run -m "$f" -p "Once upon a time" -n 16 --temp 0 --ignore-eos --json -t 1 > "$tmp/many" 2>"$tmp/err"
    [ "$(tokens "$tmp/many")" = "$(tokens "$tmp/one")" ] && grep -q '"ranks":3' "$tmp/many" && pass "greedy_tcp_$m" ||
        fail "greedy_tcp_$m" "$(tokens "$tmp/many") vs $(tokens "$tmp/one") $(head -c 300 "$tmp/err")"
done
f="$S/models/synth-llama.q8_0.gguf"
"$T" run -m "$f" -p "Once upon a time" -n 16 --temp 0 --ignore-eos --json -t 1 > "$tmp/one" 2>/dev/null
run3 "$T" run -m "$f" -p "Once upon a time" -n 16 --temp 0 --ignore-eos --json -t 1 --plan pp > "$tmp/many" 2>"$tmp/err"
[ "$(tokens "$tmp/many")" = "$(tokens "$tmp/one")" ] && pass pipeline_tcp || fail pipeline_tcp "$(head -c 300 "$tmp/err")"
# Hybrid across hosts: 2 ranks in each of 2 namespaces; --plan hybrid makes a
# pipeline stage per host with tensor parallelism inside it (its own
# sub-communicator), and the stream crosses between the hosts' first ranks.
printf "tt-ns1 slots=2\ntt-ns2 slots=2\n" > "$tmp/hosts22"
run22() {
    timeout 300 mpirun --hostfile "$tmp/hosts22" -np 4 --mca plm_rsh_agent "$D/netns_cluster.sh agent" \
        --mca oob_tcp_if_include 10.77.0.0/24 --mca btl self,tcp --mca btl_tcp_if_include 10.77.0.0/24 "$@"
}
for m in stories260K synth-llama.q4_k_m; do
    f="$S/models/$m.gguf"
    "$T" run -m "$f" -p "Once upon a time" -n 16 --temp 0 --ignore-eos --json -t 1 --ctx 512 > "$tmp/one" 2>/dev/null
    run22 "$T" run -m "$f" -p "Once upon a time" -n 16 --temp 0 --ignore-eos --json -t 1 --ctx 512 --plan hybrid \
        > "$tmp/many" 2>"$tmp/err"
    [ "$(tokens "$tmp/many")" = "$(tokens "$tmp/one")" ] && grep -q '"ranks":4' "$tmp/many" && pass "hybrid_2x2_$m" ||
        fail "hybrid_2x2_$m" "$(tokens "$tmp/many") vs $(tokens "$tmp/one") $(head -c 300 "$tmp/err")"
done
f="$S/models/stories260K.gguf"
"$T" run -m "$f" -p "Once upon a time" -n 16 --temp 0 --ignore-eos --json -t 1 --ctx 512 > "$tmp/one" 2>/dev/null
run22 "$T" run -m "$f" -p "Once upon a time" -n 16 --temp 0 --ignore-eos --json -t 1 --ctx 512 --plan auto \
    --cluster "$D/clusters/two-hosts.json" > "$tmp/many" 2>"$tmp/err"
[ "$(tokens "$tmp/many")" = "$(tokens "$tmp/one")" ] && grep -q "plan auto: hybrid" "$tmp/err" && pass plan_auto_hybrid_2x2 ||
    fail plan_auto_hybrid_2x2 "$(tokens "$tmp/many") vs $(tokens "$tmp/one") $(head -c 300 "$tmp/err")"
# One deliberately slow link (tbf, 8 Mbit/s, on tt-ns3): --plan auto measures
# it and avoids tensor parallelism over it, and the run is faster than forced TP.
if tc qdisc add dev tt-v3 root tbf rate 8mbit burst 32kbit latency 400ms 2>/dev/null &&
   ip netns exec tt-ns3 tc qdisc add dev tt-p3 root tbf rate 8mbit burst 32kbit latency 400ms 2>/dev/null; then
    f="$S/models/synth-llama.q8_0.gguf"
    for mode in auto tp; do
        run3 "$T" run -m "$f" -p "Once upon a time" -n 32 --temp 0 --ignore-eos --json -t 1 --plan $mode \
            > "$tmp/slow_$mode" 2>"$tmp/slow_err_$mode"
    done
    auto=$(sed -n 's/.*"decode_tok_s":\([0-9.]*\).*/\1/p' "$tmp/slow_auto")
    tp=$(sed -n 's/.*"decode_tok_s":\([0-9.]*\).*/\1/p' "$tmp/slow_tp")
    chosen=$(grep -o "plan auto: [a-z]*" "$tmp/slow_err_auto" | head -1)
    echo "  slow link: --plan auto ($chosen) $auto tok/s, --plan tp $tp tok/s"
    # Avoided: a layout other than TP, or TP that leaves rank 2 (behind the
    # slow link, in tt-ns3) out.
    avoided=0
    if ! echo "$chosen" | grep -q "auto: tp" || grep -Eq "plan auto: tp.*\(idle: ([0-9]+,)*2[,)]" "$tmp/slow_err_auto"; then avoided=1; fi
    if [ -n "$auto" ] && [ -n "$tp" ] && [ $avoided = 1 ] &&
       awk -v a="$auto" -v t="$tp" 'BEGIN { exit !(a > t) }'; then
        pass slow_link_auto_avoids_tp
    else
        fail slow_link_auto_avoids_tp "$chosen auto $auto tp $tp $(head -c 300 "$tmp/slow_err_auto")"
    fi
else
    skip slow_link_auto_avoids_tp "tc/tbf not available"
fi
