#!/bin/sh
# cluster_test.sh: tutti under mpirun on this machine (loopback / shared
# memory): greedy tokens on 2, 3 and 4 ranks equal the 1-rank tokens, logits
# agree, uneven --split works, a bad --split is refused, a killed rank ends
# the job with an error instead of a hang; pipeline, hybrid (TP groups as
# pipeline stages) and --plan auto layouts that leave ranks idle give the
# 1-rank tokens too. Skips when MPI is not built in.
T=${TUTTI:-build/tutti}
S=${TT_SHARED:-../shared}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
MPIRUN="mpirun --oversubscribe -np"
pass() { echo "PASS cluster/$1"; }
fail() { echo "FAIL cluster/$1: $2"; }
skip() { echo "SKIP cluster/$1: $2"; }
tokens() { sed 's/.*"tokens":\[\([^]]*\)\].*/\1/' "$1"; }

if ! command -v mpirun >/dev/null; then skip all "mpirun not installed"; exit 0; fi
if [ ! -f "$S/models/stories260K.gguf" ]; then skip all "models missing in $S"; exit 0; fi
ranks=$(timeout 120 $MPIRUN 2 "$T" run -m "$S/models/stories260K.gguf" -p hi -n 1 --temp 0 --json -t 1 2>/dev/null |
        sed -n 's/.*"ranks":\([0-9]*\).*/\1/p')
if [ "$ranks" != 2 ]; then skip all "this build has no MPI support (make MPI=1)"; exit 0; fi

for m in stories260K synth-llama.f16 synth-qwen3.f16 synth-qwen2.q8_0 synth-llama.q4_k_m synth-qwen3moe.q8_0 synth-mixtral.q4_k_m; do
    f="$S/models/$m.gguf"
    [ -f "$f" ] || { skip "greedy_$m" "missing"; continue; }
    "$T" run -m "$f" -p "Once upon a time" -n 24 --temp 0 --ignore-eos --json -t 1 > "$tmp/one" 2>"$tmp/err"
    for n in 2 3 4; do
        timeout 300 $MPIRUN $n "$T" run -m "$f" -p "Once upon a time" -n 24 --temp 0 --ignore-eos --json -t 1 \
            > "$tmp/many" 2>"$tmp/err"
        if [ "$(tokens "$tmp/many")" = "$(tokens "$tmp/one")" ] && grep -q "\"ranks\":$n" "$tmp/many"; then
            pass "greedy_${m}_np$n"
        else
            fail "greedy_${m}_np$n" "$(tokens "$tmp/many") vs $(tokens "$tmp/one") $(head -c 300 "$tmp/err")"
        fi
    done
done

f="$S/models/synth-llama.q8_0.gguf"
toks=$(tr '\n' ',' < "$S/golden/synth-llama.q8_0.logits.tokens.txt" | sed 's/,$//')
"$T" logits -m "$f" --tokens "$toks" --out "$tmp/l1.f32" -t 1 2>/dev/null
timeout 300 $MPIRUN 3 "$T" logits -m "$f" --tokens "$toks" --out "$tmp/l3.f32" -t 1 2>"$tmp/err"
# the default (gathering) join is exact: the logits files are identical bytes
if [ -f "$tmp/l3.f32" ] && cmp -s "$tmp/l3.f32" "$tmp/l1.f32"; then
    pass logits_np3_bit_identical
else
    fail logits_np3_bit_identical "$(head -c 300 "$tmp/err")"
fi
timeout 300 $MPIRUN 3 "$T" run -m "$S/models/stories260K.gguf" -p "Once upon a time" -n 24 --temp 0 \
    --ignore-eos --json -t 1 --split 3,1,1 > "$tmp/many" 2>"$tmp/err"
"$T" run -m "$S/models/stories260K.gguf" -p "Once upon a time" -n 24 --temp 0 --ignore-eos --json -t 1 > "$tmp/one" 2>/dev/null
[ "$(tokens "$tmp/many")" = "$(tokens "$tmp/one")" ] && pass split_weighted || fail split_weighted "$(head -c 300 "$tmp/err")"
timeout 120 $MPIRUN 2 "$T" run -m "$S/models/stories260K.gguf" -p hi --split 1,2,3 > "$tmp/out" 2>"$tmp/err"
[ $? -ne 0 ] && grep -q "split" "$tmp/err" && pass split_refused || fail split_refused "$(head -c 300 "$tmp/err")"
# Sampling with temperature: same seed, same tokens on 1 and 3 ranks.
"$T" run -m "$S/models/stories260K.gguf" -p "Once upon a time" -n 24 --temp 0.8 --seed 5 --json -t 1 > "$tmp/one" 2>/dev/null
timeout 300 $MPIRUN 3 "$T" run -m "$S/models/stories260K.gguf" -p "Once upon a time" -n 24 --temp 0.8 --seed 5 \
    --json -t 1 > "$tmp/many" 2>"$tmp/err"
[ "$(tokens "$tmp/many")" = "$(tokens "$tmp/one")" ] && pass sampled_np3 || fail sampled_np3 "$(tokens "$tmp/many") vs $(tokens "$tmp/one")"
# Each rank sends only what sampling needs (top-k candidates; histories only
# with a penalty): sampled tokens with and without the repetition penalty, on
# 3 TP ranks and a 2-stage pipeline (rank 0 holds no vocabulary), equal 1
# rank's. With the penalty on 3 ranks stories260K's 512 candidates were
# once taken for the vocabulary in id order (a token's penalty was missed).
for args in "--temp 0.8 --seed 7 --repeat-penalty 1.3" "--temp 0 --repeat-penalty 1.3" "--temp 0.9 --top-k 5 --seed 3"; do
    "$T" run -m "$S/models/stories260K.gguf" -p "Once upon a time" -n 24 $args --ignore-eos --json -t 1 > "$tmp/one" 2>/dev/null
    for pl in "3 tp" "2 pp"; do
        timeout 300 $MPIRUN ${pl% *} "$T" run -m "$S/models/stories260K.gguf" -p "Once upon a time" -n 24 $args \
            --ignore-eos --json -t 1 --plan ${pl#* } > "$tmp/many" 2>"$tmp/err"
        name="sampled_${pl#* }_np${pl% *}_$(echo "$args" | tr -d ' .-')"
        [ "$(tokens "$tmp/many")" = "$(tokens "$tmp/one")" ] && pass "$name" ||
            fail "$name" "$(tokens "$tmp/many") vs $(tokens "$tmp/one") $(head -c 300 "$tmp/err")"
    done
done
# What a pipeline's decode step returns to rank 0 (`tutti bench`, rank 0's
# bytes per token): greedy sampling one candidate, --logits the vocabulary's
# 512 floats (2 KiB) more, not a padded 4 KiB of candidates.
f="$S/models/synth-llama.q4_k_m.gguf"
cb() { timeout 300 $MPIRUN 2 "$T" bench -m "$f" -t 1 --plan pp -p 8 -n 8 -r 1 --json "$@" 2>/dev/null |
       sed -n 's/.*"comm_bytes_per_token":\([0-9]*\).*/\1/p'; }
greedy=$(cb --temp 0) full=$(cb --logits)
if [ -n "$greedy" ] && [ -n "$full" ] && [ $((greedy + 2048 - 64)) -le "$full" ]; then pass pipeline_candidates_not_logits
else fail pipeline_candidates_not_logits "bytes per token: greedy '$greedy', --logits '$full'"; fi
# MoE with a skewed router: live rebalancing (every 4 steps) keeps the tokens of 1 rank.
if "$T" gen --arch qwen3moe --n-embd 256 --n-layer 2 --n-head 4 --n-head-kv 2 --n-expert 32 \
        --n-expert-used 4 --n-ff-exp 128 --n-ff 512 --router-skew 0.12 --type q8_0 -o "$tmp/skew.gguf" 2>/dev/null; then
    "$T" run -m "$tmp/skew.gguf" -p "Once upon a time" -n 32 --temp 0 --ignore-eos --json -t 1 > "$tmp/one" 2>/dev/null
    timeout 300 $MPIRUN 4 "$T" run -m "$tmp/skew.gguf" -p "Once upon a time" -n 32 --temp 0 --ignore-eos --json \
        -t 1 --moe-every 4 --moe-threshold 1.05 > "$tmp/many" 2>"$tmp/err"
    [ "$(tokens "$tmp/many")" = "$(tokens "$tmp/one")" ] && pass moe_live_rebalance_np4 ||
        fail moe_live_rebalance_np4 "$(tokens "$tmp/many") vs $(tokens "$tmp/one") $(head -c 300 "$tmp/err")"
    # MoE live moves over the communicator: ranks 1-3 have no model file
    # (--weights-from 0), so new expert copies come from the ranks holding
    # them while decoding goes on; same tokens, and a move must have switched.
    WF_FILE="$tmp/skew.gguf" TT_LOG_LEVEL=3 timeout 300 $MPIRUN 4 -x WF_FILE -x TT_LOG_LEVEL bash \
        "$(dirname "$0")/rank_file_wrap.sh" "$T" run -m "$tmp/skew.gguf" -p "Once upon a time" -n 32 --temp 0 \
        --ignore-eos --json -t 1 --moe-every 4 --moe-threshold 1.05 --weights-from 0 > "$tmp/many" 2>"$tmp/err"
    [ "$(tokens "$tmp/many")" = "$(tokens "$tmp/one")" ] && grep -q "over the communicator" "$tmp/err" &&
        grep -q "expert move switched" "$tmp/err" && pass moe_live_move_over_comm_np4 ||
        fail moe_live_move_over_comm_np4 "$(tokens "$tmp/many") vs $(tokens "$tmp/one") $(grep -v debug "$tmp/err" | head -c 300)"
else
    fail moe_live_rebalance_np4 "gen failed"
fi
# Memory: each rank holds about 1/N of the weights (peak RSS, file-backed pages
# included: weights/N + 64 MiB); --mem-limit below the whole model but above a
# rank's share runs on 2 ranks and is refused clearly on 1.
if "$T" gen --arch llama --n-embd 1024 --n-layer 8 --n-head 16 --n-head-kv 4 --n-ff 2816 --vocab 4096 \
        --type q8_0 -o "$tmp/big.gguf" 2>/dev/null; then
    size_mib=$(( $(wc -c < "$tmp/big.gguf") / 1048576 ))
    for n in 1 2 4; do
        timeout 300 $MPIRUN $n "$T" run -m "$tmp/big.gguf" -p "Once upon a time" -n 8 --temp 0 --json -t 1 \
            --ctx 256 > "$tmp/out" 2>"$tmp/err"
        rss=$(sed 's/.*"rss_peak_mib":\[\([^]]*\)\].*/\1/' "$tmp/out")
        limit=$(( size_mib / n + 64 ))
        worst=$(echo "$rss" | tr ',' '\n' | sort -n | tail -1)
        echo "  ranks $n: model $size_mib MiB, per-rank peak RSS [$rss] MiB, bound $limit MiB"
        if [ -n "$worst" ] && [ "${worst%.*}" -le "$limit" ]; then pass "rss_np$n"; else fail "rss_np$n" "[$rss] > $limit"; fi
    done
    # A rank killed mid-run: the job ends with a non-zero status within 10 s, no hang.
    ( timeout 300 $MPIRUN 3 "$T" run -m "$tmp/big.gguf" -p "Once upon a time" -n 4000 --ctx 4096 --temp 0 \
        --ignore-eos -t 1 > /dev/null 2>"$tmp/kerr"; echo $? > "$tmp/rc" ) &
    sleep 4
    victim=$(pgrep -n -f "tutti run -m $tmp/big.gguf -p Once upon a time -n 4000")
    killed_at=$(date +%s)
    [ -n "$victim" ] && kill -9 "$victim"
    wait
    took=$(( $(date +%s) - killed_at ))
    rc=$(cat "$tmp/rc")
    if [ -n "$victim" ] && [ "$rc" != 0 ] && [ "$took" -le 10 ]; then pass killed_rank_ends_job
    else fail killed_rank_ends_job "victim '$victim', exit status $rc after ${took}s"; fi
    lim=$(( size_mib * 3 / 4 ))
    timeout 300 $MPIRUN 2 "$T" run -m "$tmp/big.gguf" -p hi -n 4 --temp 0 -t 1 --ctx 256 --mem-limit $lim > /dev/null 2>"$tmp/err" &&
        pass mem_limit_fits_on_2 || fail mem_limit_fits_on_2 "$(head -c 300 "$tmp/err")"
    "$T" run -m "$tmp/big.gguf" -p hi -n 4 --temp 0 -t 1 --ctx 256 --mem-limit $lim > /dev/null 2>"$tmp/err"
    [ $? -eq 1 ] && grep -q "memory limit" "$tmp/err" && pass mem_limit_refused_on_1 || fail mem_limit_refused_on_1 "$(cat "$tmp/err")"
else
    fail rss "gen failed"
fi
# --mem-limit counts a rank's MoE expert slots: a limit just above the rank's
# other needs is refused naming the slots; static placement (--moe-every -1,
# no room for moves) needs half of them.
f="$S/models/synth-qwen3moe.q8_0.gguf"
if [ -f "$f" ]; then
    timeout 120 $MPIRUN 2 "$T" run -m "$f" -p hi -n 4 --temp 0 -t 1 --ctx 256 --mem-limit 1 > /dev/null 2>"$tmp/err"
    base=$(sed -n 's/.* needs \([0-9]*\) MiB.*/\1/p' "$tmp/err" | head -1)
    timeout 120 $MPIRUN 2 "$T" run -m "$f" -p hi -n 4 --temp 0 -t 1 --ctx 256 --mem-limit $((base + 1)) > /dev/null 2>"$tmp/err"
    rc=$?
    if [ -n "$base" ] && [ $rc -ne 0 ] && grep -q "expert slots" "$tmp/err"; then pass mem_limit_counts_expert_slots
    else fail mem_limit_counts_expert_slots "base '$base' MiB, status $rc: $(head -c 300 "$tmp/err")"; fi
    need=$(sed -n 's/.* needs \([0-9]*\) MiB.*expert slots \([0-9]*\) MiB.*/\1 \2/p' "$tmp/err" | head -1)
    if [ -n "$need" ]; then
        static=$(( ${need% *} - ${need#* } / 2 + 1 ))
        timeout 120 $MPIRUN 2 "$T" run -m "$f" -p hi -n 4 --temp 0 -t 1 --ctx 256 --mem-limit $static --moe-every -1 \
            > /dev/null 2>"$tmp/err" && pass mem_limit_static_experts_fit ||
            fail mem_limit_static_experts_fit "limit $static MiB: $(head -c 300 "$tmp/err")"
    else
        fail mem_limit_static_experts_fit "no expert-slot figure in the refusal above"
    fi
else
    skip mem_limit_counts_expert_slots "$f missing"; skip mem_limit_static_experts_fit "$f missing"
fi
# --weights-from 0: ranks 1 and 2 have no model file; same tokens as 1 rank.
W="$(dirname "$0")/rank_file_wrap.sh"
for m in synth-llama.q4_k_m synth-mixtral.q4_k_m; do
    f="$S/models/$m.gguf"
    "$T" run -m "$f" -p "Once upon a time" -n 16 --temp 0 --ignore-eos --json -t 1 > "$tmp/one" 2>/dev/null
    WF_FILE="$f" timeout 300 $MPIRUN 3 -x WF_FILE bash "$W" "$T" run -m "$f" -p "Once upon a time" -n 16 --temp 0 \
        --ignore-eos --json -t 1 --weights-from 0 > "$tmp/many" 2>"$tmp/err"
    [ "$(tokens "$tmp/many")" = "$(tokens "$tmp/one")" ] && pass "weights_from_0_$m" ||
        fail "weights_from_0_$m" "$(tokens "$tmp/many") vs $(tokens "$tmp/one") $(head -c 300 "$tmp/err")"
done
f="$S/models/synth-llama.q8_0.gguf"
WF_FILE="$f" timeout 120 $MPIRUN 3 -x WF_FILE bash "$W" "$T" run -m "$f" -p hi -n 4 -t 1 > /dev/null 2>"$tmp/err"
[ $? -ne 0 ] && grep -q "weights-from 0" "$tmp/err" && pass missing_file_refused || fail missing_file_refused "$(head -c 300 "$tmp/err")"
WF_FILE="$f" WF_OTHER="$S/models/synth-llama.q4_k_m.gguf" timeout 120 $MPIRUN 2 -x WF_FILE -x WF_OTHER bash "$W" \
    "$T" run -m "$f" -p hi -n 4 -t 1 > /dev/null 2>"$tmp/err"
[ $? -ne 0 ] && grep -q "differs from rank 0" "$tmp/err" && pass different_file_refused || fail different_file_refused "$(head -c 300 "$tmp/err")"
# Pipeline parallelism (--plan pp): whole layers per stage, same tokens as 1 rank;
# 3 stages on a 2-layer model leaves one stage without layers (it passes on).
for m in stories260K synth-llama.q4_k_m synth-qwen3moe.q8_0 synth-qwen2moe.q4_k_m; do
    f="$S/models/$m.gguf"
    "$T" run -m "$f" -p "Once upon a time" -n 16 --temp 0 --ignore-eos --json -t 1 > "$tmp/one" 2>/dev/null
    for n in 2 3; do
        timeout 300 $MPIRUN $n "$T" run -m "$f" -p "Once upon a time" -n 16 --temp 0 --ignore-eos --json -t 1 \
            --plan pp > "$tmp/many" 2>"$tmp/err"
        [ "$(tokens "$tmp/many")" = "$(tokens "$tmp/one")" ] && pass "pipeline_${m}_np$n" ||
            fail "pipeline_${m}_np$n" "$(tokens "$tmp/many") vs $(tokens "$tmp/one") $(head -c 300 "$tmp/err")"
    done
done
timeout 300 $MPIRUN 3 "$T" run -m "$S/models/stories260K.gguf" -p "Once upon a time" -n 16 --temp 0 --ignore-eos \
    --json -t 1 --plan pp --split 1,3,1 > "$tmp/many" 2>"$tmp/err"
"$T" run -m "$S/models/stories260K.gguf" -p "Once upon a time" -n 16 --temp 0 --ignore-eos --json -t 1 > "$tmp/one" 2>/dev/null
[ "$(tokens "$tmp/many")" = "$(tokens "$tmp/one")" ] && pass pipeline_uneven_stages || fail pipeline_uneven_stages "$(head -c 300 "$tmp/err")"
# --plan auto: the cluster is measured, the planner picks a layout over all ranks.
"$T" run -m "$S/models/stories260K.gguf" -p "Once upon a time" -n 16 --temp 0 --ignore-eos --json -t 1 > "$tmp/one" 2>/dev/null
timeout 300 $MPIRUN 2 "$T" run -m "$S/models/stories260K.gguf" -p "Once upon a time" -n 16 --temp 0 --ignore-eos \
    --json -t 1 --plan auto > "$tmp/many" 2>"$tmp/err"
[ "$(tokens "$tmp/many")" = "$(tokens "$tmp/one")" ] && grep -q "plan auto" "$tmp/err" && pass plan_auto ||
    fail plan_auto "$(tokens "$tmp/many") vs $(tokens "$tmp/one") $(head -c 300 "$tmp/err")"
# Hybrid (--plan hybrid:2): 4 ranks = 2 pipeline stages x 2 tensor-parallel ranks
# (sub-communicators, comm_split); 3 stages over 4 ranks mixes group sizes.
for m in stories260K synth-llama.q4_k_m synth-qwen3.f16 synth-qwen3moe.q8_0; do
    f="$S/models/$m.gguf"
    "$T" run -m "$f" -p "Once upon a time" -n 16 --temp 0 --ignore-eos --json -t 1 > "$tmp/one" 2>/dev/null
    for pl in hybrid:2 hybrid:3; do
        timeout 300 $MPIRUN 4 "$T" run -m "$f" -p "Once upon a time" -n 16 --temp 0 --ignore-eos --json -t 1 \
            --plan $pl > "$tmp/many" 2>"$tmp/err"
        [ "$(tokens "$tmp/many")" = "$(tokens "$tmp/one")" ] && pass "hybrid_${m}_${pl#hybrid:}stages_np4" ||
            fail "hybrid_${m}_${pl#hybrid:}stages_np4" "$(tokens "$tmp/many") vs $(tokens "$tmp/one") $(head -c 300 "$tmp/err")"
    done
done
# --plan auto on described clusters (--cluster): a slow rank is left out (rank 1
# idle; rank 0 idle while it still drives the steps), and two hosts with little
# memory each get a hybrid layout. Same tokens as 1 rank.
D=$(dirname "$0")
f="$S/models/stories260K.gguf"
"$T" run -m "$f" -p "Once upon a time" -n 16 --temp 0 --ignore-eos --json -t 1 --ctx 512 > "$tmp/one" 2>/dev/null
for c in slow-rank1:2:"single.*idle: 1" slow-rank0:2:"single.*idle: 0" two-hosts:4:"hybrid.*2 stage"; do
    name=${c%%:*} rest=${c#*:}
    np=${rest%%:*} want=${rest#*:}
    timeout 300 $MPIRUN $np "$T" run -m "$f" -p "Once upon a time" -n 16 --temp 0 --ignore-eos --json -t 1 --ctx 512 \
        --plan auto --cluster "$D/clusters/$name.json" > "$tmp/many" 2>"$tmp/err"
    if [ "$(tokens "$tmp/many")" = "$(tokens "$tmp/one")" ] && grep -q "plan auto: $want" "$tmp/err"; then
        pass "plan_auto_$name"
    else
        fail "plan_auto_$name" "$(tokens "$tmp/many") vs $(tokens "$tmp/one") $(head -c 300 "$tmp/err")"
    fi
done
