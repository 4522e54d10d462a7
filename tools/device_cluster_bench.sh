#!/bin/bash
# device_cluster_bench.sh: the cluster benchmark of the tensor-parallel and
# planner issues, for a 16-core machine (the device machine): builds tutti
# there (CPU only), generates a Llama-3-8B-shaped Q4_K_M model (LAYERS, default
# 32), and measures decode tok/s and TTFT (512-token prompt) for 1 rank x
# 4/8/16 threads and 2/4 ranks x 4 threads on disjoint cores, over shared
# memory and over TCP; the 1x8 and 2x4-shm pair REPS times (default 3),
# alternating, for the 2-rank efficiency. Beside each measured row it prints
# the planner's prediction:
#   - one rank: `tutti plan -m M -t T --json` on the same cores (it measures
#     the machine: read bandwidth, matrix-vector efficiency, compute,
#     attention, per-layer overhead) just before the benchmark;
#   - N ranks: a cluster description built from the 4-thread rank's compute
#     figures, each rank's memory figures as `tutti topo --json` measures
#     them under the same mpirun (the ranks reading at once), one process's
#     compute on all 4N cores as the compute the ranks share (host_gflops),
#     and the links topo measures; predicted: tensor parallelism over all
#     ranks with the gathering join and the even split (`plan --split
#     even`), what `bench` runs.
# Every measurement and description is kept ($OUT/results.tsv), so the
# predictions can be recomputed offline with `tutti plan --cluster` when the
# cost model changes: split the file into NAME.json files in a folder and run
# the python part of this script on it. If the machine lacks build
# dependencies, Debian packages extracted from .deps/*.deb are used.
set -u
OUT=${OUT:-/tmp}
# Every measurement goes to $W (one file each) and, as one line "name<TAB>json",
# to $OUT/results.tsv at once, so that a run cut short still brings back what
# it measured in one file (the device tool returns few files).
W=${WORK:-/tmp/cluster_bench}
mkdir -p "$W"
log() { echo "$@" | tee -a "$OUT/summary.txt"; }
keep() { printf '%s\t%s\n' "$1" "$(tr -d '\n' < "$W/$1.json")" >> "$OUT/results.tsv"; }
M=${MODEL:-/tmp/llama3-8b-q4_k_m.gguf}
P=${PROMPT:-512}
# TABLE_ONLY=FILE: no measurements; the table from FILE (a results.tsv of an
# earlier run), with TUTTI and MODEL_ARGS as the python part below says
if [ -n "${TABLE_ONLY:-}" ]; then
    mkdir -p "$W"
    while IFS=$'\t' read -r name json; do printf '%s\n' "$json" > "$W/$name.json"; done < "$TABLE_ONLY"
else
DEADLINE=${DEADLINE:-0} # seconds of this script after which the remaining runs are skipped (0: none)
late() { [ "$DEADLINE" -gt 0 ] && [ "$SECONDS" -ge "$DEADLINE" ] && { log "skipped (deadline): $1"; return 0; }; return 1; }
root=$PWD/.deps/root
if ls .deps/*.deb >/dev/null 2>&1; then
    mkdir -p "$root"
    have_mpi=$(command -v mpicc >/dev/null && echo 1)
    for d in .deps/*.deb; do
        # a machine with its own Open MPI keeps it: carried MPI libraries would shadow its own
        case "$(basename "$d")" in
        *openmpi*|*pmix*|*hwloc*|*ucx*|*fabric*|*psm*|*ibverbs*|*libnl*|*libevent*|*rdmacm*|*pciaccess*|*libxml2*|*icu*|*ltdl*|*numa*|*munge*)
            [ -n "$have_mpi" ] && continue ;;
        esac
        dpkg -x "$d" "$root" 2>/dev/null || (cd "$root" && ar p "../../$d" data.tar.xz | tar xJ)
    done
fi
export PATH=$PATH:$root/usr/bin
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}:$root/usr/lib/x86_64-linux-gnu:$root/usr/lib/x86_64-linux-gnu/openmpi/lib
if ! command -v mpicc >/dev/null || ! mpicc --showme:version >/dev/null 2>&1; then
    export OPAL_PREFIX=$root/usr
fi
command -v mpicc; mpirun --version 2>&1 | head -1; nproc; gcc --version | head -1
# TUTTI_BIN: a CPU-only tutti built elsewhere (it saves the build) if it runs here
if [ -n "${TUTTI_BIN:-}" ] && "$TUTTI_BIN" --help > /dev/null 2>&1; then
    mkdir -p build && cp "$TUTTI_BIN" build/tutti
else
    make -j"$(nproc)" MPI=1 CUDA=0 EXTRA_CFLAGS="-I$root/usr/include" LDFLAGS="-L$root/usr/lib/x86_64-linux-gnu" \
        build/tutti > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
fi
log "tutti ready at $SECONDS s"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
LAYERS=${LAYERS:-32}
[ -f "$M" ] || build/tutti gen --arch llama --n-embd 4096 --n-layer "$LAYERS" --n-head 32 --n-head-kv 8 \
    --n-ff 14336 --vocab 128256 --type q4_k_m -t "$(nproc)" -o "$M" || exit 1
# the new file's pages go to disk before anything is measured: writeback
# takes memory bandwidth (one run's first measurement, the 4-thread rank
# right after the model was written, read 0.68 of its bandwidth in products)
sync
log "model ready at $SECONDS s"
N=${GEN:-32}
REPS=${REPS:-3}
# repetitions of each bench, the best reported (bench -r): the probes keep
# the best sample of their window, and one repetition on a shared host moved
# 1 x 4's decode between 11.9 and 16.2 tok/s over three calls
BENCH_R=${BENCH_R:-2}
bench() { # name, then the command
    name=$1; shift
    late "$name" && return
    "$@" -m "$M" -p "$P" -n "$N" -r "$BENCH_R" --json 2>"$W/err_$name.txt" | tail -1 > "$W/$name.json"
    log "$name ($SECONDS s): $(cat "$W/$name.json") $(tail -c 300 "$W/err_$name.txt" | grep -i error)"
    keep "$name"
}
# rank r of N on cores 4r..4r+3
cat > /tmp/pin.sh <<'PIN'
#!/bin/sh
r=${OMPI_COMM_WORLD_RANK:-0}
exec taskset -c $((r * 4))-$((r * 4 + 3)) "$@"
PIN
chmod +x /tmp/pin.sh
for t in 4 8 16; do # the machine as the planner measures it, then the benchmark
    taskset -c 0-$((t - 1)) build/tutti plan -m "$M" -t $t --prompt "$P" --json > "$W/plan_r1t$t.json" 2>/dev/null
    keep "plan_r1t$t"
    bench "r1t$t" taskset -c 0-$((t - 1)) build/tutti bench -t $t
done
for n in 2 4; do
    for net in shm tcp; do
        btl=""
        [ $net = tcp ] && btl="--mca btl self,tcp"
        late "topo_r${n}_$net" && continue
        mpirun --bind-to none $btl -np $n /tmp/pin.sh build/tutti topo -t 4 --json > "$W/topo_r${n}_$net.json" 2>/dev/null
        keep "topo_r${n}_$net"
        bench "r${n}t4_$net" mpirun --bind-to none $btl -np $n /tmp/pin.sh build/tutti bench -t 4
    done
done
for i in $(seq 2 "$REPS"); do # more rounds of the efficiency pair, alternating
    bench "r1t8_$i" taskset -c 0-7 build/tutti bench -t 8
    bench "r2t4_shm_$i" mpirun --bind-to none -np 2 /tmp/pin.sh build/tutti bench -t 4
done
# a pipeline of 2 stages (shared memory): predicted as such from the same description
bench r2t4_pp_shm mpirun --bind-to none -np 2 /tmp/pin.sh build/tutti bench -t 4 --plan pp
fi
python3 - "$W" "$M" "$P" <<'PY' | tee -a "$OUT/summary.txt"
import json, os, subprocess, sys
out, model, prompt = sys.argv[1], sys.argv[2], sys.argv[3]
# offline: TUTTI (a tutti binary) and MODEL_ARGS (the model's shape for
# `tutti plan`, e.g. "--shape llama-3.1-8b --n-layer 16") instead of the file
tutti = os.environ.get("TUTTI", "build/tutti")
model_args = os.environ["MODEL_ARGS"].split() if os.environ.get("MODEL_ARGS") else ["-m", model]
def load(n):
    try: return json.load(open(os.path.join(out, n)))
    except Exception: return None
def rank_fig(plan):
    return plan["cluster"]["ranks"][0]
def predict_multi(n, net, layout="tp"):
    """TP gather over n ranks of 4 threads: each rank's memory figures as topo
    measured them under the same mpirun (every rank reading at once: its
    share of the host's memory bandwidth, as the layout runs), the 4-thread
    rank's compute figures with the compute of one process on all the cores
    the ranks use (4n threads) as the budget they share, and the links topo
    measured. (A 16-thread process is no measure of the memory bandwidth
    ranks share: on one device machine it read 58.8 GB/s where 4 ranks of 4
    threads read 105 at once. Its compute is: the prompt products do not
    scale with threads, 4 threads 754 GFLOP/s, 8 threads 1036, 16 threads
    1812 on one machine, and 2 ranks of 4 threads ran their prompt as fast
    as one process of 8.)"""
    p4, pall, topo = load("plan_r1t4.json"), load(f"plan_r1t{4 * n}.json"), load(f"topo_r{n}_{net}.json")
    if not (p4 and pall and topo): return None
    r4, rall = rank_fig(p4), rank_fig(pall)
    ranks = []
    for r in range(n):
        d = {k: r4[k] for k in ("gflops", "attn_gflops", "mem_avail_gib", "overhead_us", "jitter") if k in r4}
        t = topo["ranks"][r]
        # the products' speed as topo measured it, per weight type when it
        # says (plan --cluster mixes those by the model's bytes)
        d.update(host="dev", read_gbs=t["read_gbs"], matvec_gbs=t["matvec_gbs"], host_gflops=rall["gflops"])
        if "matvec_type_gbs" in t: d["matvec_type_gbs"] = t["matvec_type_gbs"]
        ranks.append(d)
    links = [{"a": l["a"], "b": l["b"], "latency_us": max(l["latency_us"], 0.01),
              "bandwidth_gbs": l["bandwidth_gbs"]} for l in topo["links"]]
    desc = {"name": f"{n} ranks x 4 threads, {net}", "ranks": ranks, "links": links}
    path = os.path.join(out, f"cluster_r{n}_{net}.json")
    json.dump(desc, open(path, "w"), indent=1)
    # the split bench runs (--split even); sized by each rank's figures the
    # planner gave one rank of 4 a third of the columns
    res = subprocess.run([tutti, "plan"] + model_args + ["--cluster", path, "--prompt", prompt,
                          "--split", "even", "--json"],
                         capture_output=True, text=True)
    try: cands = json.loads(res.stdout)["candidates"]
    except Exception: return None
    for c in cands:
        if c["layout"] == layout and (layout != "tp" or c["join"] == "gather") and \
           sum(len(s["ranks"]) for s in c["stages"]) == n:
            return c
    return None
def predict_single(t):
    p = load(f"plan_r1t{t}.json")
    return p["candidates"][p["chosen"]] if p else None
def err(pred, meas): return f"{(pred - meas) / meas * 100:+.0f}%"
rows = [("r1t4", "1 rank x 4 threads", lambda: predict_single(4)),
        ("r1t8", "1 rank x 8 threads", lambda: predict_single(8)),
        ("r1t16", "1 rank x 16 threads", lambda: predict_single(16)),
        ("r2t4_shm", "2 ranks x 4 threads, shm", lambda: predict_multi(2, "shm")),
        ("r2t4_tcp", "2 ranks x 4 threads, tcp", lambda: predict_multi(2, "tcp")),
        ("r4t4_shm", "4 ranks x 4 threads, shm", lambda: predict_multi(4, "shm")),
        ("r4t4_tcp", "4 ranks x 4 threads, tcp", lambda: predict_multi(4, "tcp")),
        ("r2t4_pp_shm", "2 ranks x 4 threads, shm, pipeline", lambda: predict_multi(2, "shm", "pp"))]
print("\n| layout | predicted tok/s | measured tok/s | error | predicted TTFT ms | measured TTFT ms | error | comm ms/token predicted / measured |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for name, label, pred in rows:
    m, p = load(name + ".json"), pred()
    if not m: print(f"| {label} | | failed | | | | | |"); continue
    if not p: print(f"| {label} | ? | {m['decode_tok_s']:.2f} | | ? | {m['ttft_ms']:.0f} | | |"); continue
    print(f"| {label} | {p['decode_tok_s']:.2f} | {m['decode_tok_s']:.2f} | {err(p['decode_tok_s'], m['decode_tok_s'])} | "
          f"{p['ttft_ms']:.0f} | {m['ttft_ms']:.0f} | {err(p['ttft_ms'], m['ttft_ms'])} | "
          f"{p.get('comm_ms', 0):.2f} / {m.get('comm_ms_per_token', 0):.2f} |")
base = load("r1t4.json")
print("\nSpeedups over 1x4 and distribution efficiency (N ranks x 4 threads against 1 rank x 4N threads):")
for name, ref in [("r2t4_shm", "r1t8"), ("r2t4_tcp", "r1t8"), ("r4t4_shm", "r1t16"), ("r4t4_tcp", "r1t16")]:
    r, f = load(name + ".json"), load(ref + ".json")
    if r and f and base: print(f"  {name}: {r['decode_tok_s'] / base['decode_tok_s']:.2f}x, efficiency {r['decode_tok_s'] / f['decode_tok_s']:.2f}")
effs = []
for i in ["", "_2", "_3", "_4", "_5"]:
    r, f = load("r2t4_shm" + i + ".json"), load("r1t8" + i + ".json")
    if r and f: effs.append(r["decode_tok_s"] / f["decode_tok_s"])
if effs: print("  2x4 shm efficiency per round (alternating with 1x8): " + ", ".join(f"{e:.2f}" for e in effs) +
               f"; mean {sum(effs) / len(effs):.2f}")
PY
