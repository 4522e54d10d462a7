#!/bin/bash
# device_moe_bench.sh: MoE expert balancing on the 16-core device machine, in
# one call of about 4-5 minutes (carry .deps). Builds tutti (CPU only), makes a
# Qwen3-30B-A3B-shaped model (n_embd 2048, 128 experts, top-8, expert ff 768,
# 32 heads / 4 KV heads, head dim 128; LAYERS layers, default 48) with a
# skewed router, then runs 4 ranks x 4 threads on disjoint cores, for each
# decode length in GENS (default "128 512") ROUNDS times (default 2; ROUNDS_LONG
# for lengths over 128, default 1), alternating the MODES of a round:
#   static:   --moe-every 8 --moe-threshold 1000 (imbalance checked and
#             logged, never acted on);
#   balanced: live balancing, --moe-every 8 --moe-threshold 1.05
#             --moe-replicas REPLICAS (default 8);
#   wide:     the same with 16 spare slots per rank and layer (every step's 8
#             experts can then be dealt 2 per rank);
#   calm:     balancing at threshold 1.3 (few moves);
#   static_sum / balanced_sum: --tp-join sum (two all-reduces per layer).
# A short untimed run first (wide, 24 tokens: long enough for its first move
# to land) grows the machine's memory (it starts small and grows as it is
# used) so that the first timed run does not pay for it.
# For each run: decode tok/s, rank 0's communication per token, the moves,
# the imbalance every 16 steps (max and mean over layers, rank 0's debug
# log), and every rank's profile per phase (static: before the first switch;
# moving; balanced: after it): wall ms per step, ms in communication calls
# (waiting for slower ranks included), compute = the rest, ms reading its
# share of a move, experts it computed per step against the busiest rank's
# and the mean, page faults per step. Everything goes to $OUT (summary.txt,
# logs.txt: the full debug logs).
# THREADS (default 4) sets each rank's compute threads on its 4 cores: with
# 2, the four ranks together ask less of the machine's one memory system than
# it gives, as four separate machines would not share one.
# TUTTI=path uses a prebuilt binary instead of building one (a CUDA build
# then needs EXTRA="--gpu-layers 0" to keep the ranks on the CPU).
set -u
OUT=${OUT:-/tmp}
LAYERS=${LAYERS:-48}
ROUNDS=${ROUNDS:-2}
ROUNDS_LONG=${ROUNDS_LONG:-1}
MODES=${MODES:-static balanced}
GENS=${GENS:-128 512}
REPLICAS=${REPLICAS:-8}
EXTRA=${EXTRA:-}
THREADS=${THREADS:-4}
exec > >(tee "$OUT/summary.txt") 2>&1
if [ -n "${TUTTI:-}" ]; then
    T=$TUTTI
else
    T=build/tutti
    root=$PWD/.deps/root
    if ls .deps/*.deb >/dev/null 2>&1; then # the libraries Ubuntu lacks (see device_cluster_bench.sh)
        mkdir -p "$root"
        for d in .deps/*.deb; do
            case "$(basename "$d")" in # the machine's own Open MPI stays
            *openmpi*|*pmix*|*hwloc*|*ucx*|*fabric*|*psm*|*ibverbs*|*libnl*|*libevent*|*rdmacm*|*pciaccess*|*libxml2*|*icu*|*ltdl*|*numa*|*munge*)
                command -v mpicc >/dev/null && continue ;;
            esac
            dpkg -x "$d" "$root" 2>/dev/null
        done
    fi
    export PATH=$PATH:$root/usr/bin LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}:$root/usr/lib/x86_64-linux-gnu
    make -j"$(nproc)" CUDA=0 MPI=1 EXTRA_CFLAGS="-I$root/usr/include" LDFLAGS="-L$root/usr/lib/x86_64-linux-gnu" \
        build/tutti > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
fi
echo "built at ${SECONDS}s; $(nproc) cores; THP $(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null);" \
    "$(lscpu 2>/dev/null | grep -E '^NUMA node\(s\)' | tr -s ' ')"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
M=/tmp/qwen3-30b-a3b-skew-${LAYERS}l.gguf
[ -f "$M" ] || timeout 240 "$T" gen --arch qwen3moe --n-embd 2048 --n-layer "$LAYERS" --n-head 32 \
    --n-head-kv 4 --head-dim 128 --n-ff 6144 --n-expert 128 --n-expert-used 8 --n-ff-exp 768 --vocab 151936 \
    --router-skew 0.01 --type q4_k_m -t "$(nproc)" -o "$M" > /dev/null || exit 1
echo "model made at ${SECONDS}s: $(du -h "$M" | cut -f1)"
# Each rank gets a quarter of the physical cores with all their hardware
# threads (lscpu's CORE column), so that no two ranks share a core: where
# the machine's hardware threads are siblings i and i+8, cores 0-3 and 8-11
# would otherwise be the same two cores, and a rank waiting in a collective
# slows the other rank's compute.
lscpu -p=CPU,CORE 2>/dev/null | grep -v '^#' | sort -t, -k2,2n -k1,1n | awk -F, -v R=4 '
    { if (!($2 in idx)) { idx[$2] = n++ } cpu[NR] = $1; core[NR] = idx[$2] }
    END { for (i = 1; i <= NR; i++) { r = int(core[i] * R / n); set[r] = set[r] (set[r] == "" ? "" : ",") cpu[i] }
          for (r = 0; r < R; r++) print set[r] }' > /tmp/rank_cpus
[ "$(wc -l < /tmp/rank_cpus)" -eq 4 ] || printf '0-3\n4-7\n8-11\n12-15\n' > /tmp/rank_cpus
echo "rank CPUs: $(tr '\n' ' ' < /tmp/rank_cpus); hardware threads per core: $(lscpu | awk -F: '/^Thread\(s\) per core/ {gsub(/ /, "", $2); print $2}')"
cat > /tmp/pin.sh <<'PIN'
#!/bin/sh
r=${OMPI_COMM_WORLD_RANK:-0}
exec taskset -c "$(sed -n "$((r + 1))p" /tmp/rank_cpus)" "$@"
PIN
chmod +x /tmp/pin.sh
mode_args() {
    case $1 in
    static) echo "--moe-every 8 --moe-threshold 1000" ;;
    balanced) echo "--moe-every 8 --moe-threshold 1.05 --moe-replicas $REPLICAS" ;;
    wide) echo "--moe-every 8 --moe-threshold 1.05 --moe-replicas 16" ;;
    calm) echo "--moe-every 8 --moe-threshold 1.3 --moe-replicas $REPLICAS" ;;
    static_sum) echo "--moe-every 8 --moe-threshold 1000 --tp-join sum" ;;
    balanced_sum) echo "--moe-every 8 --moe-threshold 1.05 --moe-replicas $REPLICAS --tp-join sum" ;;
    *) return 1 ;;
    esac
}
run() { # mode gen file
    TT_LOG_LEVEL=3 timeout 240 mpirun -x TT_LOG_LEVEL --oversubscribe --bind-to none -np 4 /tmp/pin.sh \
        "$T" bench -m "$M" -p 64 -n "$2" -r 1 -t "$THREADS" $(mode_args "$1") $EXTRA > "$3.txt" 2> "$3.log"
}
run wide 24 /tmp/warm
echo "memory grown at ${SECONDS}s: $(free -g | awk '/Mem:/ {print $2 " GiB total, " $7 " available"}')"
for gen in $GENS; do
    rounds=$ROUNDS
    [ "$gen" -gt 128 ] && rounds=$ROUNDS_LONG
    for round in $(seq "$rounds"); do
        for mode in $MODES; do
            mode_args "$mode" > /dev/null || { echo "unknown mode $mode"; exit 1; }
            f=/tmp/moe_${mode}_${gen}_$round
            run "$mode" "$gen" "$f"
            echo "== $gen tokens, round $round, $mode (at ${SECONDS}s)"
            grep -E "decode|communication" "$f.txt"
            grep "rank 0:" "$f.log" | grep -E "imbalance max|move" | sed 's/^tutti: debug: rank 0: //' |
                awk '/imbalance max/ {n++; if (n % 2 == 1 || /moving/) print; next} {print}'
            grep -E "profile (static|moving|balanced):" "$f.log" | sed 's/^tutti: debug: //' | sort
            { echo "==== $f"; cat "$f.txt" "$f.log"; } >> "$OUT/logs.txt"
        done
    done
done
