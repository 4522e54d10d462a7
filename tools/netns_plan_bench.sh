#!/bin/bash
# netns_plan_bench.sh: the planner's predictions against measurements on a
# cluster of two network namespaces (tests/netns_cluster.sh: distinct network
# stacks and host names, TCP between them), one rank of one thread each,
# first as they are (veth links), then with one link limited by tbf
# (RATE, default 8mbit). For each: `tutti topo --json` measures the links
# under the same mpirun, `tutti plan -m M -t 1 --json` the rank (run here,
# on this machine's cores), and `tutti plan --cluster` predicts every layout;
# `tutti bench` measures tp (gather), tp (sum join), pp over both ranks and
# one rank alone. Prints a predicted-vs-measured table. Needs root.
#   usage: sudo bash tools/netns_plan_bench.sh [build/tutti]
set -u
T=$(realpath "${1:-build/tutti}")
D=$(cd "$(dirname "$0")/../tests" && pwd)
RATE=${RATE:-8mbit}
P=${PROMPT:-128}
N=${GEN:-32}
OUT=${OUT:-$(mktemp -d)}
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)"; exit 1; }
trap 'bash "$D/netns_cluster.sh" down' EXIT
bash "$D/netns_cluster.sh" down
bash "$D/netns_cluster.sh" up || exit 1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
printf "tt-ns1 slots=1\ntt-ns2 slots=1\n" > "$OUT/hosts"
run2() {
    timeout 600 mpirun --hostfile "$OUT/hosts" -np 2 --mca plm_rsh_agent "$D/netns_cluster.sh agent" \
        --mca oob_tcp_if_include 10.77.0.0/24 --mca btl self,tcp --mca btl_tcp_if_include 10.77.0.0/24 "$@"
}
M=${MODEL:-$OUT/model.gguf}
[ -f "$M" ] || "$T" gen --arch llama --n-embd 1024 --n-layer 8 --n-head 16 --n-head-kv 4 --n-ff 2816 \
    --vocab 8192 --type q4_k_m -o "$M" > /dev/null 2>&1 || { echo "gen failed"; exit 1; }
bench() { # name, then the command (runs the benchmark)
    local name=$1; shift
    "$@" -m "$M" -p "$P" -n "$N" -r 1 --json 2>"$OUT/err_$name.txt" | tail -1 > "$OUT/$name.json"
    echo "$name: $(cat "$OUT/$name.json")"
}
"$T" plan -m "$M" -t 1 --prompt "$P" --json > "$OUT/plan_r1.json" 2>/dev/null
bench single "$T" bench -t 1
for link in veth tbf; do
    if [ $link = tbf ]; then
        tc qdisc add dev tt-v2 root tbf rate "$RATE" burst 32kbit latency 400ms &&
            ip netns exec tt-ns2 tc qdisc add dev tt-p2 root tbf rate "$RATE" burst 32kbit latency 400ms ||
            { echo "tc/tbf not available"; break; }
    fi
    run2 "$T" topo -t 1 --json > "$OUT/topo_$link.json" 2>/dev/null
    bench "tp_$link" run2 "$T" bench -t 1 --plan tp
    bench "tpsum_$link" run2 "$T" bench -t 1 --plan tp --tp-join sum
    bench "pp_$link" run2 "$T" bench -t 1 --plan pp
done
python3 - "$OUT" "$T" "$M" "$P" <<'PY'
import json, os, subprocess, sys
out, tutti, model, prompt = sys.argv[1:5]
def load(n):
    try: return json.load(open(os.path.join(out, n)))
    except Exception: return None
r1 = load("plan_r1.json")["cluster"]["ranks"][0]
def predict(link):
    topo = load(f"topo_{link}.json")
    if not topo: return None
    ranks = [dict({k: r1[k] for k in ("read_gbs", "bw_efficiency", "gflops", "attn_gflops", "mem_avail_gib",
                                        "overhead_us", "jitter") if k in r1}, host=f"tt-ns{i + 1}") for i in range(2)]
    links = [{"a": l["a"], "b": l["b"], "latency_us": max(l["latency_us"], 0.01), "bandwidth_gbs": l["bandwidth_gbs"]}
             for l in topo["links"]]
    path = os.path.join(out, f"cluster_{link}.json")
    json.dump({"name": f"2 namespaces, {link}", "ranks": ranks, "links": links}, open(path, "w"), indent=1)
    res = subprocess.run([tutti, "plan", "-m", model, "--cluster", path, "--prompt", prompt, "--json"],
                         capture_output=True, text=True)
    return json.loads(res.stdout)["candidates"]
def pick(cands, layout, join, n):
    for c in cands or []:
        if c["layout"] == layout and (layout != "tp" or c["join"] == join) and \
           sum(len(s["ranks"]) for s in c["stages"]) == n and (n > 1 or c["stages"][0]["ranks"] == [0]):
            return c
    return None
def err(p, m): return f"{(p - m) / m * 100:+.0f}%"
print("\n| link | layout | predicted tok/s | measured tok/s | error | predicted TTFT ms | measured TTFT ms | error |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for link in ("veth", "tbf"):
    cands = predict(link)
    if cands is None: continue
    topo = load(f"topo_{link}.json")
    l = topo["links"][0]
    desc = f"{link} ({l['latency_us']:.0f} us, {l['bandwidth_gbs']:.4f} GB/s)"
    for name, layout, join, n in [("single", "single", "gather", 1), (f"tp_{link}", "tp", "gather", 2),
                                  (f"tpsum_{link}", "tp", "sum", 2), (f"pp_{link}", "pp", "gather", 2)]:
        m, p = load(name + ".json"), pick(cands, layout, join, n)
        label = layout + (f" ({join})" if layout == "tp" else "")
        if not m or not p: print(f"| {desc} | {label} | | failed | | | | |"); continue
        print(f"| {desc} | {label} | {p['decode_tok_s']:.1f} | {m['decode_tok_s']:.1f} | {err(p['decode_tok_s'], m['decode_tok_s'])} | "
              f"{p['ttft_ms']:.0f} | {m['ttft_ms']:.0f} | {err(p['ttft_ms'], m['ttft_ms'])} |")
PY
echo "files: $OUT"
