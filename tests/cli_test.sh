#!/bin/sh
# cli_test.sh: the tutti command as users and the DESIGN contracts use it.
# Prints one PASS/FAIL/SKIP line per case, like the C tests.
T=${TUTTI:-build/tutti}
S=${TT_SHARED:-../shared}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
P=${TT_TEST_TAG:+$TT_TEST_TAG:}cli
pass() { echo "PASS $P/$1"; }
fail() { echo "FAIL $P/$1: $2"; }
skip() { echo "SKIP $P/$1: $2"; }
# check NAME CMD...: the command must succeed
check() { n=$1; shift; if "$@" >"$tmp/out" 2>"$tmp/err"; then pass "$n"; else fail "$n" "$(head -c 300 "$tmp/err")"; fi; }
# refuse NAME CMD...: the command must fail with exit 1 and a "tutti: error:" message, no crash
refuse() {
    n=$1; shift
    "$@" >"$tmp/out" 2>"$tmp/err"; rc=$?
    if [ $rc -eq 1 ] && grep -q "tutti: error:" "$tmp/err"; then pass "$n"; else fail "$n" "exit $rc: $(head -c 300 "$tmp/err")"; fi
}

check help "$T" --help
for c in run logits tokenize inspect gen bench; do check "help_$c" "$T" $c --help; done
refuse unknown_command "$T" frobnicate
refuse unknown_option "$T" run --frob
refuse missing_model "$T" run -m "$tmp/nope.gguf" -p hi
refuse bad_number "$T" run -m x -p hi -n 12abc
refuse bad_temp "$T" run -m x -p hi --temp -1
echo "not a gguf file at all" > "$tmp/junk.gguf"
refuse junk_model "$T" run -m "$tmp/junk.gguf" -p hi
refuse junk_inspect "$T" inspect -m "$tmp/junk.gguf"

# A generated model of every architecture and type loads and runs.
for spec in "llama q4_k_m" "llama q5_k_m" "llama q4_0" "llama q8_0" "llama f16" "llama bf16" \
            "llama q6_k" "qwen2 q4_k_m" "qwen3 q8_0" "qwen2moe q4_k_m" "qwen3moe q4_k_m"; do
    set -- $spec
    extra=""
    case $1 in *moe) extra="--n-expert 4 --n-expert-used 2 --n-ff-exp 256" ;; esac
    [ "$1" = qwen2moe ] && extra="$extra --n-ff-shexp 256"
    f="$tmp/gen-$1-$2.gguf"
    if "$T" gen --arch "$1" --type "$2" --n-embd 256 --n-layer 2 --n-head 4 --n-head-kv 2 \
            --n-ff 512 $extra -o "$f" 2>"$tmp/err" &&
       "$T" run -m "$f" -p "Once upon a time" -n 8 --temp 0 --ignore-eos --json >"$tmp/out" 2>>"$tmp/err" &&
       [ "$(sed 's/.*"tokens":\[\([^]]*\)\].*/\1/' "$tmp/out" | tr ',' '\n' | wc -l)" -eq 8 ]; then
        pass "gen_run_$1_$2"
    else
        fail "gen_run_$1_$2" "$(head -c 300 "$tmp/err")"
    fi
done
refuse gen_bad_type "$T" gen --type q3_k -o "$tmp/x.gguf"
refuse gen_bad_shape "$T" gen --n-head 3 --n-head-kv 2 -o "$tmp/x.gguf"
[ ! -e "$tmp/x.gguf" ] && pass gen_no_partial_file || fail gen_no_partial_file "file left behind"

m="$S/models/stories260K.gguf"
if [ ! -f "$m" ]; then
    skip stories "$m missing"
    exit 0
fi
check inspect "$T" inspect -m "$m"
grep -q "token_embd.weight" "$tmp/out" || fail inspect_tensors "no tensor table"
got=$("$T" tokenize -m "$m" -p "Once upon a time" --ids 2>&1)
[ "$got" = "1,403,407,261,378" ] && pass tokenize_ids || fail tokenize_ids "got '$got'"
got=$("$T" tokenize -m "$m" -p "Once upon a time" --ids --no-bos 2>&1)
[ "$got" = "403,407,261,378" ] && pass tokenize_no_bos || fail tokenize_no_bos "got '$got'"
for i in 1 2 3; do
    g="$S/golden/stories260K.greedy$i"
    [ -f "$g.gen_tokens.txt" ] || { skip "run_greedy$i" "golden missing"; continue; }
    "$T" run -m "$m" -f "$g.prompt.txt" -n 100 --temp 0 --ignore-eos --json >"$tmp/out" 2>"$tmp/err"
    got=$(sed 's/.*"tokens":\[\([^]]*\)\].*/\1/' "$tmp/out")
    want=$(tr '\n' ',' < "$g.gen_tokens.txt" | sed 's/,$//')
    [ "$got" = "$want" ] && pass "run_greedy$i" || fail "run_greedy$i" "tokens differ: $got"
    grep -q '"ttft_ms":' "$tmp/out" && grep -q '"decode_tok_s":' "$tmp/out" && grep -q '"ranks":1' "$tmp/out" &&
        grep -q '"prompt_tokens":' "$tmp/out" && grep -q '"prefill_tok_s":' "$tmp/out" && grep -q '"text":' "$tmp/out" \
        && pass "run_json_fields$i" || fail "run_json_fields$i" "$(cat "$tmp/out")"
done
# Streaming text equals the golden detokenized text.
"$T" run -m "$m" -p "Once upon a time" -n 100 --temp 0 --ignore-eos >"$tmp/out" 2>/dev/null
if cmp -s "$tmp/out" /dev/null; then fail run_text "no output"; else
    head -c "$(wc -c < "$S/golden/stories260K.greedy1.txt")" "$tmp/out" > "$tmp/text"
    cmp -s "$tmp/text" "$S/golden/stories260K.greedy1.txt" && pass run_text || fail run_text "text differs"
fi
toks=$(tr '\n' ',' < "$S/golden/stories260K.logits.tokens.txt" | sed 's/,$//')
check logits "$T" logits -m "$m" --tokens "$toks" --out "$tmp/l.f32"
sz=$(wc -c < "$tmp/l.f32" 2>/dev/null || echo 0)
[ "$sz" -eq $((80 * 512 * 4)) ] && pass logits_size || fail logits_size "size $sz"
refuse logits_bad_id "$T" logits -m "$m" --tokens 1,99999 --out "$tmp/l2.f32"
refuse context_limit "$T" run -m "$m" -p "Once upon a time" -n 100 --ctx 50
check bench_json "$T" bench -m "$m" -p 16 -n 4 -t 2 --json
for k in prefill_tok_s decode_tok_s ttft_ms weight_bytes_per_token mem_bw_gbs bw_fraction; do
    grep -q "\"$k\":" "$tmp/out" || fail "bench_json_$k" "missing"
done
# the bandwidth the fraction is taken against: the GPU's copy bandwidth when every layer
# ran there (a GPU machine's default), the CPU's read bandwidth with --gpu-layers 0
grep -q '"bw_source":"\(gpu_copy\|cpu_read\)"' "$tmp/out" || fail bench_json_bw_source "$(head -c 300 "$tmp/out")"
check bench_cpu_bw "$T" bench -m "$m" -p 8 -n 2 -t 2 --gpu-layers 0 --no-warmup --json
grep -q '"bw_source":"cpu_read"' "$tmp/out" || fail bench_cpu_bw_source "$(grep -o '"bw_source":"[a-z_]*"' "$tmp/out")"
# tutti plan --time-engine: this machine's description fitted to the engine's own times on
# models of the shape, written to a temporary directory and removed after
check plan_time_engine env TMPDIR="$tmp" "$T" plan --arch llama --n-embd 256 --n-layer 2 --n-head 4 \
    --n-ff 512 --vocab 512 -t 1 --prompt 16 --cpu --time-engine --json
grep -q '"decode_tok_s":' "$tmp/out" && grep -q 'engine timed now' "$tmp/out" &&
    [ -z "$(find "$tmp" -name 'tutti-plan-*')" ] && pass plan_time_engine_fitted ||
    fail plan_time_engine_fitted "$(head -c 300 "$tmp/out") $(head -c 300 "$tmp/err")"
refuse plan_time_engine_cluster "$T" plan --shape llama-3.1-8b --cluster "$tmp/c.json" --time-engine
# tutti topo (one rank, its CPU): the decode kernel's speed per weight type, which
# plan --cluster reads back and mixes by the model's bytes (plan_cluster_for_model)
check topo_cpu_json "$T" topo -t 1 --cpu --json
cp "$tmp/out" "$tmp/topo.json"
grep -q '"matvec_type_gbs":{"q4_K":[0-9.]*,"q5_K":[0-9.]*,"q6_K":[0-9.]*,"q8_0":[0-9.]*}' "$tmp/topo.json" &&
    pass topo_matvec_types || fail topo_matvec_types "$(head -c 400 "$tmp/topo.json")"
check plan_topo_cluster "$T" plan --shape llama-3.1-8b --cluster "$tmp/topo.json" --json
grep -q '"bw_efficiency":' "$tmp/out" && pass plan_topo_cluster_mixed ||
    fail plan_topo_cluster_mixed "$(head -c 300 "$tmp/out")"
# --split even: equal shares of the 4 PCs' layers, whatever their figures
check plan_split_even "$T" plan --shape llama-3.1-8b --cluster docs/clusters/pc-4x-10gbe.json --plan pp --split even
grep -q "8+8+8+8" "$tmp/out" && pass plan_split_even_stages || fail plan_split_even_stages "$(head -c 600 "$tmp/out")"
refuse plan_split_bad "$T" plan --shape llama-3.1-8b --split fastest
