#!/bin/bash
# device_moe_bench.sh: MoE expert balancing on the 16-core device machine, in
# one call of about 4 minutes (carry .deps). Builds tutti (CPU only), makes a
# Qwen3-30B-A3B-shaped model (n_embd 2048, 128 experts, top-8, expert ff 768,
# 32 heads / 4 KV heads, head dim 128; LAYERS layers, default 48) with a
# skewed router, then runs 4 ranks x 4 threads on disjoint cores, alternating
# static expert placement (--moe-every 8 --moe-threshold 1000: imbalance
# checked and logged, never acted on) with live balancing (--moe-every 8
# --moe-threshold 1.05 --moe-replicas 4), ROUNDS times. For each run: decode
# tok/s, the imbalance every 8 steps (max and mean over layers, rank 0's debug
# log), the moves and the per-step work ratio of the most loaded rank
# (moe_deal's cost). Everything also goes to $OUT. MODES picks the runs of a
# round (default "static balanced"); also: "calm" (balancing at threshold 1.3:
# the first big move, few later ones, to tell the moves' cost from the
# placement's gain) and "static_sum" / "balanced_sum" (--tp-join sum: two
# all-reduces per layer instead of five all-gathers, fewer synchronizations).
set -u
OUT=${OUT:-/tmp}
LAYERS=${LAYERS:-48}
ROUNDS=${ROUNDS:-2}
MODES=${MODES:-static balanced}
GEN=${GEN:-128}
exec > >(tee "$OUT/summary.txt") 2>&1
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
echo "built at ${SECONDS}s"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
M=/tmp/qwen3-30b-a3b-skew-${LAYERS}l.gguf
[ -f "$M" ] || timeout 240 build/tutti gen --arch qwen3moe --n-embd 2048 --n-layer "$LAYERS" --n-head 32 \
    --n-head-kv 4 --head-dim 128 --n-ff 6144 --n-expert 128 --n-expert-used 8 --n-ff-exp 768 --vocab 151936 \
    --router-skew 0.01 --type q4_k_m -t "$(nproc)" -o "$M" > /dev/null || exit 1
echo "model made at ${SECONDS}s: $(du -h "$M" | cut -f1)"
cat > /tmp/pin.sh <<'PIN'
#!/bin/sh
r=${OMPI_COMM_WORLD_RANK:-0}
exec taskset -c $((r * 4))-$((r * 4 + 3)) "$@"
PIN
chmod +x /tmp/pin.sh
for round in $(seq "$ROUNDS"); do
    for mode in $MODES; do
        case $mode in
        static) extra="--moe-every 8 --moe-threshold 1000" ;;
        balanced) extra="--moe-every 8 --moe-threshold 1.05 --moe-replicas 4" ;;
        calm) extra="--moe-every 8 --moe-threshold 1.3 --moe-replicas 4" ;;
        static_sum) extra="--moe-every 8 --moe-threshold 1000 --tp-join sum" ;;
        balanced_sum) extra="--moe-every 8 --moe-threshold 1.05 --moe-replicas 4 --tp-join sum" ;;
        *) echo "unknown mode $mode"; exit 1 ;;
        esac
        f=$OUT/moe_${mode}_$round
        TT_LOG_LEVEL=3 timeout 120 mpirun -x TT_LOG_LEVEL --oversubscribe --bind-to none -np 4 /tmp/pin.sh build/tutti bench \
            -m "$M" -p 64 -n "$GEN" -r 1 -t 4 $extra > "$f.txt" 2> "$f.log"
        echo "== round $round, $mode (at ${SECONDS}s)"
        grep -E "decode|TTFT" "$f.txt"
        grep "rank 0:" "$f.log" | grep -E "imbalance max|move|MoE work" | sed 's/^tutti: debug: rank 0: //' |
            awk '/imbalance max/ {n++; if (n % 2 == 1 || /moving/) print; next} {print}'
    done
done
