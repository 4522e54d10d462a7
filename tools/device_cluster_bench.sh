#!/bin/bash
# device_cluster_bench.sh: the cluster benchmark of the tensor-parallel issue,
# for a 16-core machine (the device machine): builds tutti there, generates a
# full 32-layer Llama-3-8B-shaped Q4_K_M model, and measures decode tok/s and
# TTFT (512-token prompt) for 1 rank x 4/8/16 threads and 2/4 ranks x 4
# threads on disjoint cores, over shared memory and over TCP. Prints the
# distribution efficiency table. If the machine lacks build dependencies,
# Debian packages extracted from .deps/*.deb are used (see tools/ comments in
# the README). Output also goes to $OUT (when set).
set -u
OUT=${OUT:-/tmp}
log() { echo "$@" | tee -a "$OUT/summary.txt"; }
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
make -j"$(nproc)" MPI=1 EXTRA_CFLAGS="-I$root/usr/include" LDFLAGS="-L$root/usr/lib/x86_64-linux-gnu" \
    build/tutti > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
M=${MODEL:-/tmp/llama3-8b-q4_k_m.gguf}
LAYERS=${LAYERS:-32}
[ -f "$M" ] || build/tutti gen --arch llama --n-embd 4096 --n-layer "$LAYERS" --n-head 32 --n-head-kv 8 \
    --n-ff 14336 --vocab 128256 --type q4_k_m -t "$(nproc)" -o "$M" || exit 1
P=${PROMPT:-512}
N=${GEN:-32}
bench() { # name, then the command
    name=$1; shift
    "$@" -m "$M" -p "$P" -n "$N" -r 1 --json 2>"$OUT/err_$name.txt" | tail -1 > "$OUT/$name.json"
    log "$name: $(cat "$OUT/$name.json")"
}
# rank r of N on cores 4r..4r+3
cat > /tmp/pin.sh <<'PIN'
#!/bin/sh
r=${OMPI_COMM_WORLD_RANK:-0}
exec taskset -c $((r * 4))-$((r * 4 + 3)) "$@"
PIN
chmod +x /tmp/pin.sh
bench r1t4 taskset -c 0-3 build/tutti bench -t 4
bench r1t8 taskset -c 0-7 build/tutti bench -t 8
bench r1t16 taskset -c 0-15 build/tutti bench -t 16
for n in 2 4; do
    bench "r${n}t4_shm" mpirun --bind-to none -np $n /tmp/pin.sh build/tutti bench -t 4
    bench "r${n}t4_tcp" mpirun --bind-to none --mca btl self,tcp -np $n /tmp/pin.sh build/tutti bench -t 4
done
python3 - "$OUT" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys, os
out = sys.argv[1]
def get(n):
    try: return json.load(open(os.path.join(out, n + ".json")))
    except Exception: return None
base = get("r1t4")
print("\n| layout | decode tok/s | TTFT ms (512) | speedup | distribution efficiency | comm ms/token | bytes/token |")
print("|---|---|---|---|---|---|---|")
for name, ref in [("r1t4", None), ("r1t8", None), ("r1t16", None), ("r2t4_shm", "r1t8"), ("r2t4_tcp", "r1t8"), ("r4t4_shm", "r1t16"), ("r4t4_tcp", "r1t16")]:
    r = get(name)
    if not r or not base: print(f"| {name} | failed | | | | | |"); continue
    sp = r["decode_tok_s"] / base["decode_tok_s"]
    eff = ""
    if ref and get(ref):
        eff = "%.2f" % (sp / (get(ref)["decode_tok_s"] / base["decode_tok_s"]))
    print(f"| {name} | {r['decode_tok_s']:.2f} | {r['ttft_ms']:.0f} | {sp:.2f} | {eff} | {r.get('comm_ms_per_token',0):.3f} | {r.get('comm_bytes_per_token',0):.0f} |")
PY
