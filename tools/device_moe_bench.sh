#!/bin/bash
# device_moe_bench.sh: MoE expert balancing on the 16-core device machine.
# Generates a Qwen3-30B-A3B-shaped model (n_embd 2048, 128 experts, top-8,
# expert ff 768, 32 heads / 4 KV heads, head dim 128; LAYERS layers) with a
# skewed router, then runs 4 ranks x 4 threads with static expert placement
# (--moe-every -1) and with live balancing, printing decode tok/s and the
# per-layer imbalance (bench --moe-stats) for both. Build as
# tools/device_cluster_bench.sh does (run that first, or let this build).
set -u
OUT=${OUT:-/tmp}
root=$PWD/.deps/root
export PATH=$PATH:$root/usr/bin LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}:$root/usr/lib/x86_64-linux-gnu
[ -x build/tutti ] || make -j"$(nproc)" MPI=1 EXTRA_CFLAGS="-I$root/usr/include" \
    LDFLAGS="-L$root/usr/lib/x86_64-linux-gnu" build/tutti > "$OUT/build.log" 2>&1 || exit 1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
M=/tmp/qwen3-30b-a3b-skew.gguf
LAYERS=${LAYERS:-48}
[ -f "$M" ] || build/tutti gen --arch qwen3moe --n-embd 2048 --n-layer "$LAYERS" --n-head 32 --n-head-kv 4 \
    --head-dim 128 --n-ff 6144 --n-expert 128 --n-expert-used 8 --n-ff-exp 768 --vocab 151936 \
    --router-skew 0.01 --type q4_k_m -t "$(nproc)" -o "$M" || exit 1
ls -la "$M"
cat > /tmp/pin.sh <<'PIN'
#!/bin/sh
r=${OMPI_COMM_WORLD_RANK:-0}
exec taskset -c $((r * 4))-$((r * 4 + 3)) "$@"
PIN
chmod +x /tmp/pin.sh
for mode in static balanced; do
    extra="--moe-every 8 --moe-threshold 1.05 --moe-replicas 4"
    [ $mode = static ] && extra="--moe-every -1"
    mpirun --bind-to none -np 4 /tmp/pin.sh build/tutti bench -m "$M" -p 64 -n 96 -r 1 -t 4 --moe-stats \
        $extra > "$OUT/moe_$mode.txt" 2> "$OUT/moe_${mode}_stats.txt"
    echo "== $mode"; grep -E "decode|TTFT" "$OUT/moe_$mode.txt"
    awk 'NR>1 {s+=$NF; if ($NF>m) m=$NF; n++} END {printf "imbalance: mean %.3f max %.3f over %d layers\n", s/n, m, n}' "$OUT/moe_${mode}_stats.txt"
done
taskset -c 0-15 build/tutti bench -m "$M" -p 64 -n 96 -r 1 -t 16 | grep -E "decode|TTFT"
