#!/bin/sh
# server_test.sh: `tutti serve` end to end on stories260K, with curl and with
# the official openai npm client (tests/openai_client, installed there on
# first use). Prints one PASS/FAIL/SKIP line per case, like the C tests.
#
# Servers: A (4 sequences, context 512) for the API, errors, greedy answers
# and concurrency; B (1 sequence, queue 1, API key) for authentication, queue
# overflow, client disconnects and shutdown; C under `mpirun -np 3` when MPI
# is built in. Every server listens on a free loopback port (--port 0; the
# port is read from its start-up line).
T=${TUTTI:-build/tutti}
S=${TT_SHARED:-../shared}
P=${TT_TEST_TAG:+$TT_TEST_TAG:}server
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
pids=""
cleanup() {
    for p in $pids; do kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null; done
    rm -rf "$tmp"
}
trap cleanup EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
pass() { echo "PASS $P/$1"; }
fail() { echo "FAIL $P/$1: $2"; }
skip() { echo "SKIP $P/$1: $2"; }
# ok NAME COND-CMD... WHY: pass if the command succeeds
ok() { n=$1; why=$2; shift 2; if "$@"; then pass "$n"; else fail "$n" "$why"; fi; }

m="$S/models/stories260K.gguf"
if [ ! -f "$m" ]; then skip all "$m missing"; exit 0; fi
for tool in curl node; do
    command -v $tool >/dev/null || { skip all "$tool is not installed"; exit 0; }
done
MODEL=stories260K.gguf

# jget FILE EXPR: a value from the JSON in FILE (r is the parsed object)
jget() {
    node -e "const r=JSON.parse(require('fs').readFileSync(process.argv[1],'utf8'));const v=($2);
             process.stdout.write(v===undefined?'undefined':typeof v==='string'?v:JSON.stringify(v))" "$1" 2>/dev/null
}
# sse_text FILE: the text of a stream, or "BAD: why" if its framing is wrong
cat > "$tmp/sse.js" <<'EOF'
const s = require('fs').readFileSync(process.argv[2], 'utf8');
const ev = s.split('\n\n');
let text = '', fin = null, bad = null;
if (ev.pop() !== '' || ev.pop() !== 'data: [DONE]') bad = 'no data: [DONE] at the end';
for (const e of ev) {
  if (bad) break;
  if (!e.startsWith('data: ') || e.includes('\n')) { bad = 'bad framing ' + JSON.stringify(e.slice(0, 60)); break; }
  const j = JSON.parse(e.slice(6));
  if (j.error) { bad = 'error event ' + j.error.message; break; }
  const c = j.choices[0];
  if (!c) continue;
  text += c.text ?? c.delta?.content ?? '';
  fin = c.finish_reason ?? fin;
}
process.stdout.write(bad ? 'BAD: ' + bad : fin ? text : 'BAD: no finish_reason');
EOF
sse_text() { node "$tmp/sse.js" "$1" 2>&1; }

# start_server NAME CMD...: start in the background; sets spid (the process
# started), port, url, rank0 (the pid the server prints); fails if no port.
start_server() {
    name=$1
    shift
    "$@" > "$tmp/$name.out" 2> "$tmp/$name.err" &
    spid=$!
    pids="$pids $spid"
    port=""
    i=0
    while [ $i -lt 300 ] && [ -z "$port" ] && kill -0 $spid 2>/dev/null; do
        sleep 0.1
        port=$(sed -n 's|.*serving .* on http://.*:\([0-9][0-9]*\)/v1 .*|\1|p' "$tmp/$name.err" | head -1)
        i=$((i + 1))
    done
    rank0=$(sed -n 's|.*serving .*pid \([0-9][0-9]*\))$|\1|p' "$tmp/$name.err" | head -1)
    url=http://127.0.0.1:$port
    [ -n "$port" ] && curl -s -o /dev/null "$url/health"
}
# stop_server PID SIGNAL-PID: SIGTERM to SIGNAL-PID, wait for PID (30 s at
# most, then SIGKILL); its exit status in $rc
stop_server() {
    kill -TERM "$2" 2>/dev/null
    ( sleep 30; kill -KILL "$1" 2>/dev/null ) > /dev/null 2>&1 &
    dog=$!
    wait "$1"
    rc=$?
    kill "$dog" 2>/dev/null
}
# post PATH JSON [curl args]: status code to stdout, body in $tmp/body
post() {
    p=$1
    d=$2
    shift 2
    curl -s -o "$tmp/body" -w '%{http_code}' "$@" -H 'Content-Type: application/json' "$url$p" --data-binary "$d"
}
# expect_error NAME STATUS PATH JSON [curl args]: an OpenAI-style error with that status
expect_error() {
    n=$1
    want=$2
    shift 2
    got=$(post "$@")
    msg=$(jget "$tmp/body" 'typeof r.error.message==="string" && "type" in r.error && "param" in r.error && "code" in r.error')
    if [ "$got" = "$want" ] && [ "$msg" = true ]; then pass "$n"; else fail "$n" "status $got, body $(head -c 200 "$tmp/body")"; fi
}
run_text() { # run_text ARGS: the text `tutti run --json` generates
    "$T" run -m "$m" -t 1 --temp 0 --json "$@" > "$tmp/run.json" 2>/dev/null && jget "$tmp/run.json" r.text
}

# ---- command line ----
ok help "serve --help failed" "$T" serve --help > /dev/null
for bad in "--port 70000" "--parallel 0" "--queue -1" "--host nowhere" "--frob" "--max-body 12x"; do
    "$T" serve -m "$m" $bad > /dev/null 2> "$tmp/err"
    rc=$?
    if [ $rc -eq 1 ] && grep -q "tutti: error:" "$tmp/err"; then pass "refuse_${bad%% *}"; else fail "refuse_${bad%% *}" "exit $rc: $(head -c 200 "$tmp/err")"; fi
done

# ---- server A ----
if ! start_server a "$T" serve -m "$m" --port 0 -t 1 --parallel 4 --queue 32 --ctx 512; then
    fail start "server A did not start: $(head -c 300 "$tmp/a.err")"
    exit 0
fi
pass start
A_PID=$spid
ok health "health" sh -c "curl -s '$url/health' | grep -q '\"ok\"'"
code=$(curl -s -o "$tmp/body" -w '%{http_code}' "$url/v1/models")
ok models "models: $code" [ "$code" = 200 -a "$(jget "$tmp/body" 'r.object+" "+r.data[0].id')" = "list $MODEL" ]
code=$(curl -s -o "$tmp/body" -w '%{http_code}' "$url/v1/models/$MODEL")
ok model_get "model: $code" [ "$code" = 200 -a "$(jget "$tmp/body" r.id)" = "$MODEL" ]
code=$(curl -s -o "$tmp/body" -w '%{http_code}' "$url/v1/models/nope")
ok model_get_unknown "status $code" [ "$code" = 404 ]

# Greedy answers equal `tutti run --temp 0`: up to end-of-sequence, and with
# ignore_eos exactly N tokens, as `tutti run --ignore-eos`.
want=$(run_text -p "Once upon a time" -n 200)
code=$(post /v1/completions '{"model":"'$MODEL'","prompt":"Once upon a time","max_tokens":200,"temperature":0}')
got=$(jget "$tmp/body" 'r.choices[0].text')
ok greedy_completion "status $code: [$got] vs run [$want]" [ "$code" = 200 -a -n "$want" -a "$got" = "$want" ]
want=$(run_text -p "Lily and Tom" -n 120 --ignore-eos)
code=$(post /v1/completions '{"prompt":"Lily and Tom","max_tokens":120,"temperature":0,"ignore_eos":true}')
got=$(jget "$tmp/body" 'r.choices[0].text')
ok greedy_ignore_eos "status $code: [$got] vs run [$want]" [ "$code" = 200 -a "$got" = "$want" ]
ok greedy_usage "usage $(jget "$tmp/body" r.usage)" [ "$(jget "$tmp/body" 'r.usage.completion_tokens+","+r.choices[0].finish_reason')" = "120,length" ]
post /v1/completions '{"prompt":"Lily and Tom","max_tokens":120,"temperature":0,"ignore_eos":true,"stream":true}' -N > /dev/null
ok stream_completion "streamed [$(sse_text "$tmp/body")]" [ "$(sse_text "$tmp/body")" = "$want" ]

# Chat, plain and streamed (the same greedy text), with usage in the stream.
chat='"messages":[{"role":"system","content":"You tell stories."},{"role":"user","content":"A story, please."}],"max_tokens":40,"temperature":0'
code=$(post /v1/chat/completions "{$chat}")
chat_text=$(jget "$tmp/body" 'r.choices[0].message.content')
ok chat "status $code $(head -c 200 "$tmp/body")" [ "$code" = 200 -a "$(jget "$tmp/body" 'r.object+" "+r.choices[0].message.role')" = "chat.completion assistant" ]
post /v1/chat/completions "{$chat,\"stream\":true,\"stream_options\":{\"include_usage\":true}}" -N > /dev/null
ok stream_chat "streamed [$(sse_text "$tmp/body")] vs [$chat_text]" [ "$(sse_text "$tmp/body")" = "$chat_text" ]
ok stream_usage "no usage chunk" sh -c "tail -c 400 '$tmp/body' | grep -q '\"choices\":\[\],\"usage\":{\"prompt_tokens\"'"

# Stop strings: the answer ends before the first match, finish_reason stop.
full=$(run_text -p "Once upon a time" -n 60 --ignore-eos)
stop=$(echo "$full" | awk '{print $5}')
want=${full%%"$stop"*}
code=$(post /v1/completions '{"prompt":"Once upon a time","max_tokens":60,"temperature":0,"stop":["zzz","'"$stop"'"]}')
ok stop_string "stop '$stop': [$(jget "$tmp/body" 'r.choices[0].text')] vs [$want]" \
    [ "$(jget "$tmp/body" 'r.choices[0].text')" = "$want" -a "$(jget "$tmp/body" 'r.choices[0].finish_reason')" = stop ]
post /v1/completions '{"prompt":"Once upon a time","max_tokens":60,"temperature":0,"stream":true,"stop":"'"$stop"'"}' -N > /dev/null
ok stop_string_stream "[$(sse_text "$tmp/body")]" [ "$(sse_text "$tmp/body")" = "$want" ]

# Sampling: the same seed gives the same answer.
post /v1/completions '{"prompt":"The cat","max_tokens":30,"temperature":0.9,"top_p":0.9,"seed":42}' > /dev/null
a1=$(jget "$tmp/body" 'r.choices[0].text')
post /v1/completions '{"prompt":"The cat","max_tokens":30,"temperature":0.9,"top_p":0.9,"seed":42}' > /dev/null
ok seeded "[$a1] vs [$(jget "$tmp/body" 'r.choices[0].text')]" [ -n "$a1" -a "$a1" = "$(jget "$tmp/body" 'r.choices[0].text')" ]

# Bad input: each gets its 4xx with an OpenAI-style error, and the server goes on.
expect_error bad_json 400 /v1/chat/completions '{"messages":[{"role":"user","content":"hi"}'
expect_error not_object 400 /v1/completions '[1,2]'
expect_error wrong_type_temperature 400 /v1/completions '{"prompt":"hi","temperature":"hot"}'
expect_error wrong_type_messages 400 /v1/chat/completions '{"messages":"hi"}'
expect_error wrong_type_max_tokens 400 /v1/completions '{"prompt":"hi","max_tokens":"10"}'
expect_error wrong_type_stream 400 /v1/completions '{"prompt":"hi","stream":"yes"}'
expect_error wrong_role 400 /v1/chat/completions '{"messages":[{"role":"wizard","content":"hi"}]}'
expect_error missing_messages 400 /v1/chat/completions '{"model":"'$MODEL'"}'
expect_error n_2 400 /v1/chat/completions '{"messages":[{"role":"user","content":"hi"}],"n":2}'
expect_error unknown_model 404 /v1/chat/completions '{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}'
expect_error huge_max_tokens 400 /v1/completions '{"prompt":"hi","max_tokens":100000000000}'
expect_error temperature_range 400 /v1/completions '{"prompt":"hi","temperature":7}'
expect_error bad_token_id 400 /v1/completions '{"prompt":[1,2,999999]}'
expect_error invalid_utf8 400 /v1/completions "$(printf '{"prompt":"\377\376 hi"}')"
expect_error nul_in_string 400 /v1/completions '{"prompt":"a\u0000b"}'
expect_error deep_nesting 400 /v1/completions "$(awk 'BEGIN{for(i=0;i<5000;i++)printf "[";for(i=0;i<5000;i++)printf "]"}')"
awk 'BEGIN{printf "{\"prompt\":\""; for(i=0;i<700;i++) printf "hello world "; printf "\"}"}' > "$tmp/long.json"
expect_error prompt_too_long 400 /v1/completions "$(cat "$tmp/long.json")"
ok prompt_too_long_code "code $(jget "$tmp/body" r.error.code)" [ "$(jget "$tmp/body" r.error.code)" = context_length_exceeded ]
head -c 1100000 /dev/zero | tr '\0' ' ' > "$tmp/huge.json"
code=$(curl -s -o "$tmp/body" -w '%{http_code}' "$url/v1/completions" --data-binary @"$tmp/huge.json")
ok body_too_large "status $code" [ "$code" = 413 ]
code=$(curl -s -o "$tmp/body" -w '%{http_code}' -H 'Transfer-Encoding: chunked' "$url/v1/completions" --data-binary @"$tmp/huge.json")
ok body_too_large_chunked "status $code" [ "$code" = 413 ]
code=$(curl -s -o /dev/null -w '%{http_code}' "$url/v1/nothing")
ok unknown_path "status $code" [ "$code" = 404 ]
code=$(curl -s -o /dev/null -w '%{http_code}' "$url/v1/completions")
ok wrong_method "status $code" [ "$code" = 405 ]
code=$(post /v1/completions '{"prompt":"hi","max_tokens":1000000,"ignore_eos":true,"temperature":0}')
ok max_tokens_beyond_context "status $code, $(jget "$tmp/body" 'r.choices[0].finish_reason+" "+r.usage.total_tokens')" \
    [ "$code" = 200 -a "$(jget "$tmp/body" 'r.choices[0].finish_reason+" "+(r.usage.total_tokens<=513)')" = "length true" ]
ok alive_after_bad_input "health" sh -c "curl -s '$url/health' | grep -q ok"

# 8 requests at once on 4 sequences: all succeed, all greedy answers equal.
want=$(run_text -p "Once upon a time" -n 64 --ignore-eos)
cp=""
for i in 1 2 3 4 5 6 7 8; do
    curl -s -o "$tmp/par$i" -w '%{http_code}' "$url/v1/completions" \
        -d '{"prompt":"Once upon a time","max_tokens":64,"temperature":0,"ignore_eos":true}' > "$tmp/par$i.code" &
    cp="$cp $!"
done
for p in $cp; do wait $p; done
good=0
for i in 1 2 3 4 5 6 7 8; do
    [ "$(cat "$tmp/par$i.code")" = 200 ] && [ "$(jget "$tmp/par$i" 'r.choices[0].text')" = "$want" ] && good=$((good + 1))
done
ok concurrent_8 "$good of 8 right" [ $good -eq 8 ]

# 16 concurrent streaming clients, 200 requests: every stream well-formed,
# and memory stable (RSS after within 10% of RSS after a warm-up round).
node "$here/openai_client/stress.mjs" "$url" "$MODEL" 48 16 > "$tmp/warm" 2>&1
rss0=$(awk '/VmRSS/{print $2}' /proc/$A_PID/status 2>/dev/null)
node "$here/openai_client/stress.mjs" "$url" "$MODEL" 200 16 > "$tmp/stress" 2>&1
rc=$?
rss1=$(awk '/VmRSS/{print $2}' /proc/$A_PID/status 2>/dev/null)
ok stress_16x200 "$(cat "$tmp/warm" "$tmp/stress" | head -c 400)" [ $rc -eq 0 ]
if ldd "$T" 2>/dev/null | grep -q libasan; then
    skip stress_rss "AddressSanitizer holds freed memory in quarantine"
elif [ -n "$rss0" ] && [ -n "$rss1" ]; then
    ok stress_rss "RSS $rss0 kB after warm-up, $rss1 kB after" [ $((rss1 * 10)) -le $((rss0 * 11)) ]
else
    skip stress_rss "no /proc"
fi

# The openai npm client (installed in tests/openai_client on first use).
openai_ready=no
if [ -d "$here/openai_client/node_modules/openai" ] ||
   (cd "$here/openai_client" && timeout 300 npm install --no-audit --no-fund --silent > "$tmp/npm.log" 2>&1); then
    openai_ready=yes
fi
run_openai() { # run_openai TAG: the client's cases against $url
    want=$(run_text -p "Once upon a time" -n 32)
    TUTTI_URL="$url/v1" TUTTI_MODEL=$MODEL TUTTI_PROMPT="Once upon a time" TUTTI_N=32 TUTTI_EXPECT="$want" \
        TUTTI_TAG="$P/$1" timeout 300 node "$here/openai_client/test.mjs" 2>&1 | grep -E '^(PASS|FAIL|SKIP) '
}
if [ $openai_ready = yes ]; then run_openai openai; else skip openai "npm install openai failed: $(tail -c 200 "$tmp/npm.log")"; fi

code=$(curl -s -o "$tmp/metrics" -w '%{http_code}' "$url/metrics")
missing=""
for k in tutti_requests_total tutti_completion_tokens_total tutti_time_to_first_token_seconds_bucket \
         tutti_inter_token_latency_seconds_count tutti_requests_waiting tutti_kv_cache_usage_ratio \
         tutti_comm_seconds_total 'tutti_http_responses_total{code="400"}'; do
    grep -qF "$k" "$tmp/metrics" || missing="$missing $k"
done
ok metrics "status $code, missing:$missing" [ "$code" = 200 -a -z "$missing" ]
stop_server $A_PID $A_PID
ok sigterm_idle "exit $rc" [ "$rc" = 0 ]

# ---- server B: API key, queue overflow, disconnects, shutdown ----
if ! start_server b "$T" serve -m "$m" --port 0 -t 1 --parallel 1 --queue 1 --api-key sekret --ctx 4096; then
    fail start_b "server B did not start: $(head -c 300 "$tmp/b.err")"
    exit 0
fi
B_PID=$spid
K='Authorization: Bearer sekret'
code=$(curl -s -o /dev/null -w '%{http_code}' "$url/v1/models")
ok api_key_missing "status $code" [ "$code" = 401 ]
expect_error api_key_wrong 401 /v1/completions '{"prompt":"hi"}' -H 'Authorization: Bearer nope'
code=$(curl -s -o /dev/null -w '%{http_code}' -H "$K" "$url/v1/models")
ok api_key_right "status $code" [ "$code" = 200 ]
code=$(curl -s -o /dev/null -w '%{http_code}' "$url/health")
ok api_key_health_open "status $code" [ "$code" = 200 ]
code=$(curl -s -o /dev/null -w '%{http_code}' -X OPTIONS "$url/v1/chat/completions")
ok cors_preflight "status $code" [ "$code" = 204 ]

# Queue overflow: 1 running + 1 waiting; the others get 503 at once.
long='{"prompt":"Once upon a time","max_tokens":1500,"ignore_eos":true}'
cp=""
for i in 1 2 3 4 5; do
    curl -s -o "$tmp/q$i" -w '%{http_code}' -H "$K" "$url/v1/completions" -d "$long" > "$tmp/q$i.code" &
    cp="$cp $!"
done
for p in $cp; do wait $p; done
n200=0
n503=0
for i in 1 2 3 4 5; do
    case $(cat "$tmp/q$i.code") in
    200) n200=$((n200 + 1)) ;;
    503) [ "$(jget "$tmp/q$i" r.error.code)" = server_overloaded ] && n503=$((n503 + 1)) ;;
    esac
done
ok queue_full_503 "$n200 answered, $n503 refused" [ $n200 -ge 1 -a $n503 -ge 1 -a $((n200 + n503)) -eq 5 ]

# Poll /metrics (up to 5 s) until N requests ended cancelled and none runs;
# leaves i < 50 when that happened and the last metrics in $tmp/metrics.
wait_cancelled() {
    i=0
    while [ $i -lt 50 ]; do
        curl -s -H "$K" "$url/metrics" > "$tmp/metrics"
        grep -q "tutti_requests_finished_total{reason=\"cancelled\"} $1" "$tmp/metrics" &&
            grep -q '^tutti_requests_running 0' "$tmp/metrics" && break
        sleep 0.1
        i=$((i + 1))
    done
}
# A client that disconnects mid-stream frees its sequence at once: the
# answer stops early (cancelled), and the only sequence serves the next one.
curl -s -N -H "$K" --max-time 0.5 "$url/v1/completions" \
    -d '{"prompt":"Once upon a time","max_tokens":4000,"ignore_eos":true,"stream":true}' > "$tmp/cut" 2>/dev/null
wait_cancelled 1
ok disconnect_cancels "after 5 s: $(grep -E 'cancelled|^tutti_requests_running' "$tmp/metrics" | tr '\n' ' ') got data: $(head -c 60 "$tmp/cut")" \
    [ $i -lt 50 -a -s "$tmp/cut" ]
code=$(post /v1/completions '{"prompt":"hi","max_tokens":4}' -H "$K")
ok disconnect_slot_free "status $code" [ "$code" = 200 ]
# The same for a client waiting for a whole (non-streamed) answer.
curl -s -H "$K" --max-time 0.5 "$url/v1/completions" \
    -d '{"prompt":"Once upon a time","max_tokens":4000,"ignore_eos":true}' > /dev/null 2>&1
wait_cancelled 2
ok disconnect_cancels_blocking "$(grep -E 'cancelled|^tutti_requests_running' "$tmp/metrics" | tr '\n' ' ')" [ $i -lt 50 ]

# SIGTERM during a stream: the stream still ends properly, the server exits 0.
curl -s -N -H "$K" "$url/v1/completions" \
    -d '{"prompt":"Once upon a time","max_tokens":1200,"ignore_eos":true,"stream":true}' > "$tmp/last" 2>/dev/null &
cpid=$!
sleep 0.3
stop_server $B_PID $B_PID
wait $cpid
ok sigterm_in_flight "exit $rc" [ "$rc" = 0 ]
case $(sse_text "$tmp/last") in BAD*) fail sigterm_stream_complete "$(sse_text "$tmp/last")" ;; *) pass sigterm_stream_complete ;; esac
code=$(curl -s -o /dev/null -w '%{http_code}' "$url/health")
ok closed_after_stop "status $code" [ "$code" = 000 ]

# ---- server D: a random-weight MoE model, whose answers are arbitrary bytes ----
f="$S/models/synth-qwen3moe.q8_0.gguf"
if [ ! -f "$f" ]; then
    skip random_bytes "$f missing"
elif start_server d "$T" serve -m "$f" --port 0 -t 1 --parallel 4; then
    D_PID=$spid
    node "$here/openai_client/stress.mjs" "$url" "$(basename "$f")" 24 8 40 > "$tmp/stress" 2>&1
    rc=$?
    ok random_bytes_streams "$(head -c 300 "$tmp/stress")" [ $rc -eq 0 ]
    curl -s "$url/metrics" > "$tmp/metrics"
    ok moe_metrics "no expert loads" grep -q '^tutti_moe_expert_tokens{expert="0"} [1-9]' "$tmp/metrics"
    stop_server $D_PID $D_PID
    ok sigterm_moe "exit $rc" [ "$rc" = 0 ]
else
    fail random_bytes "server D did not start: $(head -c 300 "$tmp/d.err")"
fi

# ---- server C: the same API under mpirun with 3 ranks ----
if ! command -v mpirun > /dev/null; then
    skip mpi "mpirun not installed"
    exit 0
fi
ranks=$(timeout 120 mpirun --oversubscribe -np 3 "$T" run -m "$m" -p hi -n 1 --temp 0 --json -t 1 2>/dev/null |
        sed -n 's/.*"ranks":\([0-9]*\).*/\1/p' | head -1)
if [ "$ranks" != 3 ]; then
    skip mpi "this build has no MPI support (ranks: '$ranks')"
    exit 0
fi
if ! start_server c timeout 600 mpirun --oversubscribe -np 3 "$T" serve -m "$m" --port 0 -t 1 --parallel 4; then
    fail mpi_start "$(head -c 300 "$tmp/c.err")"
    exit 0
fi
C_PID=$spid
want=$(run_text -p "Once upon a time" -n 100 --ignore-eos)
code=$(post /v1/completions '{"prompt":"Once upon a time","max_tokens":100,"temperature":0,"ignore_eos":true}')
ok np3_greedy "status $code [$(jget "$tmp/body" 'r.choices[0].text')] vs [$want]" [ "$code" = 200 -a "$(jget "$tmp/body" 'r.choices[0].text')" = "$want" ]
curl -s "$url/metrics" > "$tmp/metrics"
ok np3_metrics "$(grep '^tutti_ranks' "$tmp/metrics")" grep -q '^tutti_ranks 3' "$tmp/metrics"
node "$here/openai_client/stress.mjs" "$url" "$MODEL" 40 8 > "$tmp/stress" 2>&1
rc=$?
ok np3_concurrent_streams "$(head -c 300 "$tmp/stress")" [ $rc -eq 0 ]
if [ $openai_ready = yes ]; then run_openai openai_np3; fi
stop_server $C_PID $rank0
if ldd "$T" 2>/dev/null | grep -q libasan; then
    skip np3_sigterm "LeakSanitizer reports Open MPI's own leaks at exit"
else
    ok np3_sigterm "exit $rc (SIGTERM to rank 0, pid $rank0): $(tail -c 200 "$tmp/c.err")" [ "$rc" = 0 ]
fi
