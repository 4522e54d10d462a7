#!/bin/sh
# demo.sh TUTTI: the `make run` demo. Makes a small random-weight Llama-shaped
# model with `tutti gen` (cached in .models/), then generates from a prompt and
# prints the text (gibberish: the weights are random), TTFT and tok/s.
set -e
tutti=$1
model=.models/demo-llama-q4_k_m.gguf
mkdir -p .models
if [ ! -f "$model" ]; then
    echo "tutti demo: generating $model (random weights, Llama shape, Q4_K_M)..."
    "$tutti" gen --arch llama --n-embd 1024 --n-layer 8 --n-head 16 --n-head-kv 4 \
        --n-ff 2816 --vocab 4096 --type q4_k_m --seed 7 -o "$model"
fi
echo "tutti demo: $tutti run -m $model -p 'Once upon a time' -n 48 --temp 0"
"$tutti" run -m "$model" -p "Once upon a time" -n 48 --temp 0
"$tutti" bench -m "$model" -p 64 -n 16
