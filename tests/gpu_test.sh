#!/bin/sh
# gpu_test.sh: the tutti command on the GPU against llama.cpp's goldens.
# Prints one PASS/FAIL/SKIP line per case, like the C tests; without a GPU
# (or in a build without CUDA) every case skips and says why.
#   - every model in $TT_SHARED/models: `tutti logits` of the 80-token golden
#     prompt on the GPU vs <model>.logits.f32 (and --kv-type f32 vs
#     <model>.logits_kvf32.f32) with the CPU tests' bounds: F16/F32 models
#     max |diff| <= 0.02; quantized mean <= 0.05, max <= 0.5, argmax same at
#     >= 77 of 80 positions;
#   - stories260K's three greedy 100-token continuations, token for token;
#     the synthetic models' greedy continuations up to the first step whose
#     golden top-1/top-2 margin is under GPU_MARGIN = 0.1 (the CPU test uses
#     0.05: the GPU sums floats in another order by design, and re-quantizing
#     activations to Q8 turns last-bit differences into quantization steps,
#     so near-ties a little above 0.05 can flip); again with the decode
#     attention switching from its cluster form to parts at position 24;
#   - --gpu-layers splits (2 of 5 layers, 1 of 4) give the all-GPU tokens;
#   - compute-sanitizer memcheck on short runs, where it is installed, and
#     on test_kcuda's regrouped products with the bulk-copy kernel forced.
T=${TUTTI:-build/tutti}
S=${TT_SHARED:-../shared}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
P=${TT_TEST_TAG:+$TT_TEST_TAG:}gpu
pass() { echo "PASS $P/$1"; }
fail() { echo "FAIL $P/$1: $2"; }
skip() { echo "SKIP $P/$1: $2"; }
skip_all() {
    for c in probe logits logits_kvf32 greedy_stories greedy_synthetic greedy_attention_switch gpu_layers_split memcheck \
        memcheck_bulk; do skip "$c" "$1"; done
    exit 0
}

stories="$S/models/stories260K.gguf"
[ -f "$stories" ] || skip_all "$stories missing"
if ! "$T" logits -m "$stories" --tokens 1,403 --out "$tmp/probe" --gpu-layers 99 >/dev/null 2>"$tmp/err"; then
    if grep -q -e "no CUDA" -e "without CUDA" -e "CUDA support" "$tmp/err"; then
        skip_all "no CUDA GPU here ($(head -c 160 "$tmp/err" | tr '\n' ' '))"
    fi
    fail probe "$(head -c 300 "$tmp/err")"
    exit 0
fi
pass probe
command -v python3 >/dev/null ||
    { for c in logits logits_kvf32 greedy_synthetic greedy_attention_switch; do skip "$c" "python3 missing"; done; }

# ids FILE: the golden's ids (one per line) as a comma list
ids() { tr '\n' ',' < "$1" | sed 's/,*$//'; }
# tokens JSONFILE: the "tokens" array of tutti run --json
tokens() { sed 's/.*"tokens":\[\([^]]*\)\].*/\1/' "$1"; }

# compare GOT WANT FLOAT(0/1): the golden bounds; prints the statistics, fails with 1
compare() {
    python3 - "$1" "$2" "$3" <<'EOF'
import struct, sys
got = open(sys.argv[1], "rb").read(); want = open(sys.argv[2], "rb").read()
flt = sys.argv[3] == "1"; V = 512
if len(got) != len(want):
    print("sizes %d vs %d" % (len(got), len(want))); sys.exit(1)
a = struct.unpack("<%df" % (len(got) // 4), got); b = struct.unpack("<%df" % (len(want) // 4), want)
n = len(a) // V
d = [abs(x - y) for x, y in zip(a, b)]
mx = max(d); mean = sum(d) / len(d)
am = lambda r, i: max(range(V), key=lambda j: (r[i * V + j], -j))
same = sum(am(a, i) == am(b, i) for i in range(n))
ok = mx <= 0.02 if flt else (mean <= 0.05 and mx <= 0.5 and same >= n - 3)
print("max %.4f mean %.4f argmax %d/%d" % (mx, mean, same, n))
sys.exit(0 if ok else 1)
EOF
}

# greedy_check GOT WANT GEN_LOGITS: tokens equal up to the first low-margin step
greedy_check() {
    python3 - "$1" "$2" "$3" <<'EOF'
import struct, sys
got = [int(x) for x in open(sys.argv[1]).read().strip().split(",") if x]
want = [int(x) for x in open(sys.argv[2]).read().split()]
raw = open(sys.argv[3], "rb").read(); V = 512
lg = struct.unpack("<%df" % (len(raw) // 4), raw)
for j, w in enumerate(want):
    row = sorted(lg[j * V:(j + 1) * V], reverse=True)
    if j >= len(got): print("only %d tokens" % len(got)); sys.exit(1)
    if got[j] != w:
        if row[0] - row[1] < 0.1: print("differs at low-margin step %d (fine)" % j); sys.exit(0)
        print("step %d: got %d want %d (margin %.3f)" % (j, got[j], w, row[0] - row[1])); sys.exit(1)
    if row[0] - row[1] < 0.1: print("equal up to low-margin step %d" % j); sys.exit(0)
print("all %d equal" % len(want))
EOF
}

# ---- logits of every model ----
for kv in f16 f32; do
    case=logits; suffix=logits; [ $kv = f32 ] && case=logits_kvf32 && suffix=logits_kvf32
    n=0; bad=""
    for m in "$S"/models/*.gguf; do
        name=$(basename "$m" .gguf)
        g="$S/golden/$name"
        [ -f "$g.logits.tokens.txt" ] && [ -f "$g.$suffix.f32" ] || continue
        flt=0; case $name in stories260K|*.f16) flt=1 ;; esac
        if ! "$T" logits -m "$m" --tokens "$(ids "$g.logits.tokens.txt")" --out "$tmp/l.f32" \
                --gpu-layers 999 --kv-type $kv >/dev/null 2>"$tmp/err"; then
            bad="$bad $name: $(head -c 200 "$tmp/err")"; continue
        fi
        st=$(compare "$tmp/l.f32" "$g.$suffix.f32" $flt) || bad="$bad $name ($st)"
        [ -n "$VERBOSE" ] && echo "    $name kv $kv: $st"
        n=$((n + 1))
    done
    if [ $n -eq 0 ]; then skip $case "no goldens in $S"; elif [ -z "$bad" ]; then pass "$case"; else fail "$case" "$bad"; fi
done

# ---- greedy continuations ----
bad=""; n=0
for i in 1 2 3; do
    g="$S/golden/stories260K.greedy$i"
    [ -f "$g.gen_tokens.txt" ] || continue
    "$T" run -m "$stories" -f "$g.prompt.txt" -n 100 --temp 0 --ignore-eos --json --gpu-layers 999 \
        >"$tmp/out" 2>"$tmp/err" || { bad="$bad greedy$i: $(head -c 200 "$tmp/err")"; continue; }
    [ "$(tokens "$tmp/out")" = "$(ids "$g.gen_tokens.txt")" ] || bad="$bad greedy$i differs: $(tokens "$tmp/out")"
    n=$((n + 1))
done
if [ $n -eq 0 ]; then skip greedy_stories "goldens missing"; elif [ -z "$bad" ]; then pass greedy_stories; else fail greedy_stories "$bad"; fi

# synth_greedy CASE CLUSTER_POS: the synthetic models' greedy goldens, the
# decode attention switching from its cluster graph to the parts graph at
# position CLUSTER_POS (TT_GPU_ATTN_CLUSTER_POS)
synth_greedy() {
    bad=""; n=0
    for m in "$S"/models/synth-*.gguf; do
        name=$(basename "$m" .gguf)
        g="$S/golden/$name.greedy"
        [ -f "$g.gen_tokens.txt" ] && [ -f "$g.gen_logits.f32" ] || continue
        TT_GPU_ATTN_CLUSTER_POS=$2 "$T" run -m "$m" -f "$g.prompt.txt" -n 48 --temp 0 --ignore-eos --json \
            --gpu-layers 999 >"$tmp/out" 2>"$tmp/err" || { bad="$bad $name: $(head -c 200 "$tmp/err")"; continue; }
        tokens "$tmp/out" > "$tmp/got"
        st=$(greedy_check "$tmp/got" "$g.gen_tokens.txt" "$g.gen_logits.f32") || bad="$bad $name ($st)"
        [ -n "$VERBOSE" ] && echo "    $name (attention forms switch at $2): $st"
        n=$((n + 1))
    done
    if [ $n -eq 0 ]; then skip "$1" "goldens missing"; elif [ -z "$bad" ]; then pass "$1"; else fail "$1" "$bad"; fi
}
synth_greedy greedy_synthetic 1024
synth_greedy greedy_attention_switch 24

# ---- layer splits give the all-GPU tokens ----
bad=""
split_case() { # MODEL N_LAYERS_ON_GPU
    "$T" run -m "$1" -p "Once upon a time" -n 40 --temp 0 --ignore-eos --json --gpu-layers 999 >"$tmp/a" 2>"$tmp/err" &&
        "$T" run -m "$1" -p "Once upon a time" -n 40 --temp 0 --ignore-eos --json --gpu-layers "$2" >"$tmp/b" 2>>"$tmp/err" ||
        { bad="$bad $(basename "$1"): $(head -c 200 "$tmp/err")"; return; }
    [ "$(tokens "$tmp/a")" = "$(tokens "$tmp/b")" ] || bad="$bad $(basename "$1") with $2 GPU layers: $(tokens "$tmp/b") vs $(tokens "$tmp/a")"
}
split_case "$stories" 2
split_case "$stories" 4
[ -f "$S/models/synth-llama.f16.gguf" ] && split_case "$S/models/synth-llama.f16.gguf" 1
[ -z "$bad" ] && pass gpu_layers_split || fail gpu_layers_split "$bad"

# ---- compute-sanitizer ----
cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
if [ -z "$cs" ]; then
    skip memcheck "compute-sanitizer not installed"
    skip memcheck_bulk "compute-sanitizer not installed"
else
    bad=""
    for m in "$stories" "$S/models/synth-qwen3moe.q4_k_m.gguf" "$S/models/synth-qwen2.q8_0.gguf"; do
        [ -f "$m" ] || continue
        "$cs" --tool memcheck --error-exitcode 9 "$T" run -m "$m" -p "Once upon a time" -n 6 --temp 0 \
            --ignore-eos --gpu-layers 999 >"$tmp/out" 2>&1
        rc=$?
        grep -q "ERROR SUMMARY: 0 errors" "$tmp/out" && [ $rc -eq 0 ] ||
            bad="$bad $(basename "$m") (exit $rc): $(grep -m3 -e "Invalid" -e "ERROR" -e "error" "$tmp/out" | tr '\n' ' ' | head -c 300)"
    done
    [ -z "$bad" ] && pass memcheck || fail memcheck "$bad"
    # the bulk-copy products (sm_90) on every regrouped product that fits:
    # the test models' rows are too short to be regrouped
    kt=$(dirname "$T")/tests/test_kcuda
    if [ ! -x "$kt" ]; then
        skip memcheck_bulk "no test_kcuda beside $T"
    else
        TT_GPU_MV_BULK=1 timeout 600 "$cs" --tool memcheck --error-exitcode 9 "$kt" q6_q4_groups >"$tmp/out" 2>&1
        rc=$?
        if grep -q "ERROR SUMMARY: 0 errors" "$tmp/out" && [ $rc -eq 0 ] && grep -q "^PASS" "$tmp/out"; then
            pass memcheck_bulk
        else
            fail memcheck_bulk "exit $rc: $(grep -m3 -e "Invalid" -e "ERROR" -e "FAIL" "$tmp/out" | tr '\n' ' ' | head -c 300)"
        fi
    fi
fi

# ==== GPU ranks under mpirun (tensor parallel, --tp-join sum) ====
# Two ranks share this machine's GPU(s): with one GPU both ranks use it and
# join their partial sums through the host (NCCL refuses two ranks on one
# GPU); with two or more, each rank takes its own GPU and joins with NCCL.
#   - ranks_greedy_stories: stories260K's three greedy 100-token
#     continuations on 2 GPU ranks equal the 1-rank GPU run, token for token;
#   - ranks_greedy_synthetic: the synthetic models' 48-token greedy runs
#     (dense, and MoE with each rank computing its own experts) on 2 ranks
#     equal the 1-rank GPU run up to the first step whose
#     golden top-1/top-2 margin is under 0.1 (the sum join adds partial sums
#     in another order, as the GPU does: rounding-level differences);
#   - ranks_logits: logits on 2 ranks against the goldens, the same bounds
#     as the 1-rank case above;
#   - ranks_gpu_layers_split: 2 of 5 layers on the GPU ranks, the rest on
#     their CPUs, gives the all-GPU 2-rank tokens;
#   - ranks_join_kind: the log says how the ranks join (host or NCCL);
#   - ranks_killed: a GPU rank killed (SIGKILL, 2 s in) ends the job with a non-zero
#     status and an error within 20 s, no hang;
#   - nccl_one_rank: test_comm_nccl (NCCL with 1 rank; with 2+ GPUs also 2).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
R2="timeout 300 mpirun --oversubscribe -np 2"
RK="--gpu-layers 999 --tp-join sum"
ranks_cases="ranks_greedy_stories ranks_greedy_synthetic ranks_logits ranks_gpu_layers_split ranks_join_kind ranks_killed"
ranks_ok=1
if ! command -v mpirun >/dev/null; then
    for c in $ranks_cases; do skip "$c" "mpirun not installed"; done; ranks_ok=0
elif ! $R2 "$T" run -m "$stories" -p hi -n 1 --temp 0 --json $RK >"$tmp/out" 2>"$tmp/err" ||
     ! grep -q '"ranks":2' "$tmp/out"; then
    for c in $ranks_cases; do skip "$c" "no MPI in this build or mpirun failed: $(head -c 200 "$tmp/err")"; done; ranks_ok=0
fi

# ranks_check GOT2 GOT1 [GOLDEN_TOKENS GOLDEN_LOGITS]: equal, or first differing
# at a low-margin step of the golden that the 1-rank run still followed
ranks_check() {
    python3 - "$@" <<'PYEOF'
import struct, sys
rd = lambda f: [int(x) for x in open(f).read().replace("\n", ",").split(",") if x.strip()]
a, b = rd(sys.argv[1]), rd(sys.argv[2])
j = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), None)
if j is None and len(a) == len(b): print("all %d equal" % len(a)); sys.exit(0)
if j is None: print("lengths %d vs %d" % (len(a), len(b))); sys.exit(1)
if len(sys.argv) > 4:
    want = rd(sys.argv[3]); raw = open(sys.argv[4], "rb").read(); V = 512
    lg = struct.unpack("<%df" % (len(raw) // 4), raw)
    if j < len(want) and b[:j + 1] == want[:j + 1]:
        row = sorted(lg[j * V:(j + 1) * V], reverse=True)
        if row[0] - row[1] < 0.1: print("differs at low-margin step %d (fine)" % j); sys.exit(0)
print("step %d: %d vs %d" % (j, a[j], b[j])); sys.exit(1)
PYEOF
}

if [ $ranks_ok = 1 ]; then
    bad=""; n=0
    for i in 1 2 3; do
        g="$S/golden/stories260K.greedy$i"
        [ -f "$g.prompt.txt" ] || continue
        "$T" run -m "$stories" -f "$g.prompt.txt" -n 100 --temp 0 --ignore-eos --json --gpu-layers 999 >"$tmp/one" 2>"$tmp/err" &&
        $R2 "$T" run -m "$stories" -f "$g.prompt.txt" -n 100 --temp 0 --ignore-eos --json $RK >"$tmp/two" 2>>"$tmp/err" ||
            { bad="$bad greedy$i: $(head -c 200 "$tmp/err")"; continue; }
        [ "$(tokens "$tmp/two")" = "$(tokens "$tmp/one")" ] || bad="$bad greedy$i: $(tokens "$tmp/two") vs $(tokens "$tmp/one")"
        n=$((n + 1))
    done
    if [ $n -eq 0 ]; then skip ranks_greedy_stories "goldens missing"; elif [ -z "$bad" ]; then pass ranks_greedy_stories; else fail ranks_greedy_stories "$bad"; fi

    bad=""; n=0
    for m in "$S"/models/synth-llama.*.gguf "$S"/models/synth-qwen2.*.gguf "$S"/models/synth-qwen3.*.gguf \
             "$S"/models/synth-mixtral.*.gguf "$S"/models/synth-qwen2moe.*.gguf "$S"/models/synth-qwen3moe.*.gguf; do
        [ -f "$m" ] || continue
        name=$(basename "$m" .gguf); g="$S/golden/$name.greedy"
        [ -f "$g.prompt.txt" ] || continue
        "$T" run -m "$m" -f "$g.prompt.txt" -n 48 --temp 0 --ignore-eos --json --gpu-layers 999 >"$tmp/one" 2>"$tmp/err" &&
        $R2 "$T" run -m "$m" -f "$g.prompt.txt" -n 48 --temp 0 --ignore-eos --json $RK >"$tmp/two" 2>>"$tmp/err" ||
            { bad="$bad $name: $(head -c 200 "$tmp/err")"; continue; }
        tokens "$tmp/one" >"$tmp/t1"; tokens "$tmp/two" >"$tmp/t2"
        st=$(ranks_check "$tmp/t2" "$tmp/t1" "$g.gen_tokens.txt" "$g.gen_logits.f32") || bad="$bad $name ($st)"
        [ -n "$VERBOSE" ] && echo "    $name, 2 ranks: $st"
        n=$((n + 1))
    done
    if [ $n -eq 0 ]; then skip ranks_greedy_synthetic "goldens missing"; elif [ -z "$bad" ]; then pass ranks_greedy_synthetic; else fail ranks_greedy_synthetic "$bad"; fi

    bad=""; n=0
    for m in "$stories" "$S"/models/synth-llama.*.gguf "$S"/models/synth-qwen2.*.gguf "$S"/models/synth-qwen3.*.gguf \
             "$S"/models/synth-mixtral.*.gguf "$S"/models/synth-qwen2moe.*.gguf "$S"/models/synth-qwen3moe.*.gguf; do
        [ -f "$m" ] || continue
        name=$(basename "$m" .gguf); g="$S/golden/$name"
        [ -f "$g.logits.tokens.txt" ] && [ -f "$g.logits.f32" ] || continue
        flt=0; case $name in stories260K|*.f16) flt=1 ;; esac
        rm -f "$tmp/l.f32"
        $R2 "$T" logits -m "$m" --tokens "$(ids "$g.logits.tokens.txt")" --out "$tmp/l.f32" $RK >/dev/null 2>"$tmp/err" ||
            { bad="$bad $name: $(head -c 200 "$tmp/err")"; continue; }
        st=$(compare "$tmp/l.f32" "$g.logits.f32" $flt) || bad="$bad $name ($st)"
        [ -n "$VERBOSE" ] && echo "    $name, 2 ranks: $st"
        n=$((n + 1))
    done
    if [ $n -eq 0 ]; then skip ranks_logits "no goldens in $S"; elif [ -z "$bad" ]; then pass ranks_logits; else fail ranks_logits "$bad"; fi

    $R2 "$T" run -m "$stories" -p "Once upon a time" -n 40 --temp 0 --ignore-eos --json $RK >"$tmp/a" 2>"$tmp/err" &&
    $R2 "$T" run -m "$stories" -p "Once upon a time" -n 40 --temp 0 --ignore-eos --json --gpu-layers 2 --tp-join sum >"$tmp/b" 2>>"$tmp/err" &&
    [ "$(tokens "$tmp/a")" = "$(tokens "$tmp/b")" ] && pass ranks_gpu_layers_split ||
        fail ranks_gpu_layers_split "$(tokens "$tmp/b") vs $(tokens "$tmp/a") $(head -c 200 "$tmp/err")"

    TT_LOG_LEVEL=2 $R2 "$T" run -m "$stories" -p hi -n 2 --temp 0 $RK >/dev/null 2>"$tmp/err"
    kind=$(grep -o "GPU ranks: .*" "$tmp/err" | head -1)
    [ -n "$kind" ] && pass ranks_join_kind && echo "    GPU ranks: $kind" || fail ranks_join_kind "$(head -c 300 "$tmp/err")"

    # rank 1 kills itself (SIGKILL) 2 s after its start, during a long generation
    cat >"$tmp/die.sh" <<'SHEOF'
#!/bin/sh
[ "${OMPI_COMM_WORLD_RANK:-0}" = 1 ] && ( sleep 2; kill -9 $$ ) &
exec "$@"
SHEOF
    start=$(date +%s)
    $R2 sh "$tmp/die.sh" "$T" run -m "$stories" -p "Once upon a time" --ctx 4096 -n 4000 --temp 0 --ignore-eos $RK \
        >/dev/null 2>"$tmp/err"
    rc=$?; took=$(( $(date +%s) - start ))
    if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $took -le 20 ] && grep -q -i -e "signal 9" -e "killed" -e "exited" -e "aborted" "$tmp/err"; then
        pass ranks_killed; echo "    job ended after ${took}s: $(grep -i -m1 -e "signal 9" -e "killed" "$tmp/err")"
    else
        fail ranks_killed "exit $rc after ${took}s: $(head -c 300 "$tmp/err")"
    fi
fi

tn="$(dirname "$T")/tests/test_comm_nccl"
if [ -x "$tn" ]; then
    "$tn" | sed "s|^\([A-Z]*\) test_comm_nccl/|\1 $P/nccl_|"
else
    skip nccl_one_rank "$tn not built (make $(dirname "$T")/tests/test_comm_nccl)"
fi
