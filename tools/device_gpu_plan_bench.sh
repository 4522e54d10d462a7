#!/bin/bash
# device_gpu_plan_bench.sh: the planner's predictions against the engine on
# the GPUs of one host (the planner issue's "GPU runs"), for a device machine
# with NG GPUs (default: all it has, at least 2). For each shape in SHAPES it
# generates the model (`tutti gen`), then:
#   - one GPU: `tutti plan -m M --json` on GPU 0 (it times the GPU's kernels
#     and fits them to the engine's own times on models of the shape) against
#     `tutti bench` on GPU 0;
#   - NG GPUs: a cluster description of NG copies of that fitted rank (each
#     GPU has its own memory), with the free memory and the links that
#     `mpirun -np NG tutti topo --json` measures, predicted by `tutti plan
#     --cluster --split even` (tensor parallel over all ranks with the sum
#     join, which GPU ranks use), against `mpirun -np NG tutti bench` (one
#     rank per GPU, NCCL in the decode graph).
# topo's links between GPU ranks are NCCL's all-reduces between the GPUs
# (what the engine's joins use), not MPI's messages between the processes.
# plan is told bench's prompt batch (512 tokens for 512-token prompts).
#
# Every measurement is kept, one line "name<TAB>json" each, in
# $OUT/results.tsv; TABLE_ONLY=FILE recomputes the table from such a file
# with TUTTI (a tutti binary, no GPU needed).
#
#   TUTTI=build/tutti OUT=/tmp/o bash tools/device_gpu_plan_bench.sh
#   TABLE_ONLY=/tmp/o/results.tsv TUTTI=build/tutti bash tools/device_gpu_plan_bench.sh
set -u
OUT=${OUT:-/tmp}
W=${WORK:-/tmp/gpu_plan_bench}
T=${TUTTI:-build/tutti}
P=${PROMPT:-512}
N=${GEN:-128}
NB=$((P < 512 ? P : 512)) # tutti bench's prompt batch (its default), which plan is told
# name|tutti gen shape options; separated by ';'
SHAPES=${SHAPES:-"l8|--arch llama --n-embd 4096 --n-layer 32 --n-head 32 --n-head-kv 8 --n-ff 14336 --vocab 128256 --type q4_k_m;q3moe12|--arch qwen3moe --n-embd 2048 --n-layer 12 --n-head 32 --n-head-kv 4 --head-dim 128 --n-ff 6144 --n-expert 128 --n-expert-used 8 --n-ff-exp 768 --vocab 151936 --type q4_k_m"}
mkdir -p "$W"
keep() { printf '%s\t%s\n' "$1" "$(tr -d '\n' < "$W/$1.json")" >> "$OUT/results.tsv"; }
if [ -n "${TABLE_ONLY:-}" ]; then
    while IFS=$'\t' read -r name json; do printf '%s\n' "$json" > "$W/$name.json"; done < "$TABLE_ONLY"
else
    export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 TT_PROGRESS=0
    NG=${NG:-$(nvidia-smi -L 2>/dev/null | wc -l)}
    [ "$NG" -ge 2 ] || { echo "device_gpu_plan_bench: needs 2 or more GPUs, found $NG"; exit 1; }
    echo "{\"gpus\":$NG}" > "$W/gpus.json"; keep gpus
    mpirun --bind-to none -np "$NG" "$T" topo --json > "$W/topo.json" 2>"$W/err_topo.txt"; keep topo
    IFS=';' read -ra list <<< "$SHAPES"
    for s in "${list[@]}"; do
        name=${s%%|*}; args=${s#*|}; M=/tmp/gpb_$name.gguf
        # shellcheck disable=SC2086 # the shape options are words
        [ -f "$M" ] || "$T" gen $args -t "$(nproc)" -o "$M" > /dev/null 2>"$W/err_gen_$name.txt" || { echo "gen $name failed"; continue; }
        sync
        CUDA_VISIBLE_DEVICES=0 "$T" plan -m "$M" --prompt "$P" --batch "$NB" --json > "$W/plan1_$name.json" 2>"$W/err_plan1_$name.txt"
        keep "plan1_$name"
        CUDA_VISIBLE_DEVICES=0 "$T" bench -m "$M" -p "$P" -n "$N" -r 2 --json 2>"$W/err_b1_$name.txt" | tail -1 > "$W/bench1_$name.json"
        keep "bench1_$name"
        mpirun --bind-to none -np "$NG" "$T" bench -m "$M" -p "$P" -n "$N" -r 2 --json 2>"$W/err_bn_$name.txt" |
            tail -1 > "$W/benchn_$name.json"
        keep "benchn_$name"
        echo "$name done at $SECONDS s"
    done
fi
python3 - "$W" "$T" "$P" "$SHAPES" "$NB" <<'PY' | tee -a "$OUT/summary.txt"
import json, os, subprocess, sys
w, tutti, prompt, shapes, batch = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
def load(n):
    try: return json.load(open(os.path.join(w, n + ".json")))
    except Exception: return None
def err(p, m): return f"{(p - m) / m * 100:+.0f}%"
topo, gpus = load("topo"), load("gpus")
ng = gpus["gpus"] if gpus else 0
print("| model | GPUs | predicted tok/s | measured tok/s | error | predicted TTFT ms | measured TTFT ms | error |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for s in shapes.split(";"):
    name, args = s.split("|", 1)
    p1, b1, bn = load("plan1_" + name), load("bench1_" + name), load("benchn_" + name)
    if not p1: print(f"| {name} | 1 | (no plan) | | | | | |"); continue
    one = p1["candidates"][p1["chosen"]]
    if b1:
        print(f"| {name} | 1 | {one['decode_tok_s']:.1f} | {b1['decode_tok_s']:.1f} | {err(one['decode_tok_s'], b1['decode_tok_s'])} | "
              f"{one['ttft_ms']:.1f} | {b1['ttft_ms']:.1f} | {err(one['ttft_ms'], b1['ttft_ms'])} |")
    if not (topo and bn and ng >= 2): continue
    fitted = {k: v for k, v in p1["cluster"]["ranks"][0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    ranks = []
    for r in topo["ranks"][:ng]:
        d = dict(fitted)
        d["host"] = "gpus"
        if r.get("mem_avail_gib"): d["mem_avail_gib"] = r["mem_avail_gib"]
        ranks.append(d)
    links = [{"a": l["a"], "b": l["b"], "latency_us": max(l["latency_us"], 0.01), "bandwidth_gbs": l["bandwidth_gbs"],
              "bandwidth_both_gbs": l.get("bandwidth_both_gbs", 0.0)}
             for l in topo["links"] if l["a"] < ng and l["b"] < ng]
    path = os.path.join(w, f"cluster_{name}.json")
    json.dump({"name": f"{ng} GPUs of one host", "ranks": ranks, "links": links}, open(path, "w"), indent=1)
    res = subprocess.run([tutti, "plan"] + args.split() + ["--cluster", path, "--prompt", prompt, "--batch", batch, "--split", "even",
                          "--json"], capture_output=True, text=True)
    try: cands = json.loads(res.stdout)["candidates"]
    except Exception: print(f"| {name} | {ng} | (plan failed: {res.stderr.strip()[:120]}) | | | | | |"); continue
    c = next((c for c in cands if c["layout"] == "tp" and c["join"] == "sum" and
              sum(len(st["ranks"]) for st in c["stages"]) == ng), None)
    if not c: print(f"| {name} | {ng} | (no tp candidate) | | | | | |"); continue
    print(f"| {name} | {ng} | {c['decode_tok_s']:.1f} | {bn['decode_tok_s']:.1f} | {err(c['decode_tok_s'], bn['decode_tok_s'])} | "
          f"{c['ttft_ms']:.1f} | {bn['ttft_ms']:.1f} | {err(c['ttft_ms'], bn['ttft_ms'])} |")
PY
