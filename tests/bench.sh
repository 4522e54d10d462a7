#!/bin/sh
# bench.sh TUTTI: `make bench`. Generates (once, cached in .bench/) a
# Llama-3-8B-shaped Q4_K_M model with 8 layers (vocabulary 512, as the issue's
# llama.cpp reference measurement used), then runs `tutti bench` on it
# with 2 threads. If LLAMA_BENCH points at a llama.cpp llama-bench binary, it
# is run on the same file right after, so both are measured in one run.
set -e
tutti=$1
threads=${THREADS:-2}
model=.bench/llama3-8b-shape-8l-q4_k_m.gguf
mkdir -p .bench
if [ ! -f "$model" ]; then
    echo "bench: generating $model"
    "$tutti" gen --arch llama --n-embd 4096 --n-layer 8 --n-head 32 --n-head-kv 8 \
        --n-ff 14336 --vocab 512 --type q4_k_m -o "$model"
fi
"$tutti" bench -m "$model" -p 128 -n 32 -t "$threads"
"$tutti" bench -m "$model" -p 128 -n 32 -t "$threads" --json
if [ -n "$LLAMA_BENCH" ] && [ -x "$LLAMA_BENCH" ]; then
    echo "llama.cpp on the same file:"
    "$LLAMA_BENCH" -m "$model" -t "$threads" -p 128 -n 32
fi
