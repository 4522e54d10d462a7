#!/bin/sh
# chat_test.sh: `tutti chat`, piped (plain line input) and in a terminal
# (tmux send-keys / capture-pane). Prints one PASS/FAIL/SKIP line per case.
# TUTTI: the binary (default build/tutti); TT_SHARED: the shared data dir.
T=${TUTTI:-build/tutti}
S=${TT_SHARED:-../shared}
tmp=$(mktemp -d)
sock="tutti-chat-test-$$"
trap 'tmux -L "$sock" kill-server 2>/dev/null; rm -rf "$tmp"' EXIT
P=${TT_TEST_TAG:+$TT_TEST_TAG:}chat
pass() { echo "PASS $P/$1"; }
fail() { echo "FAIL $P/$1: $2"; }
skip() { echo "SKIP $P/$1: $2"; }
# ok NAME COND WHY: pass if the shell condition holds, else fail with WHY
ok() { if eval "$2"; then pass "$1"; else fail "$1" "$3"; fi; }
err() { head -c 300 "$tmp/err" | tr '\n' ' '; }

"$T" chat --help >"$tmp/out" 2>"$tmp/err"
rc=$?
ok help '[ $rc -eq 0 ] && grep -q -- "--chat-template" "$tmp/out" && grep -q "/reset" "$tmp/out"' "$(err)"

m="$S/models/stories260K.gguf"
"$T" chat -m "$m" --chat-template nosuch </dev/null >"$tmp/out" 2>"$tmp/err"
rc=$?
ok unknown_template '[ $rc -eq 1 ] && grep -q "tutti: error: unknown chat template .nosuch." "$tmp/err" &&
    grep -q "chatml" "$tmp/err" && grep -q "llama3" "$tmp/err" && grep -q "plain" "$tmp/err"' \
    "exit $rc: $(err)"
"$T" chat -m "$m" --frob </dev/null >"$tmp/out" 2>"$tmp/err"
rc=$?
ok unknown_option '[ $rc -eq 1 ] && grep -q "tutti: error:" "$tmp/err"' "exit $rc: $(err)"

if [ ! -f "$m" ]; then
    skip stories "$m missing"
    exit 0
fi
chat() { "$T" chat -m "$m" --temp 0 "$@" 2>"$tmp/err"; }
# The reference: `tutti run` on the same text (it ends its output with a newline).
"$T" run -m "$m" -p "Once upon a time" --temp 0 -n 40 >"$tmp/run1" 2>/dev/null

# Two questions then /quit: two answers, the second reusing the cache; lines
# after /quit are not read.
printf 'Once upon a time\nThe next day\n/quit\nnever answered\n' | chat -n 40 --stats >"$tmp/two"
rc=$?
ok piped_two_turns '[ $rc -eq 0 ] && [ -s "$tmp/two" ] && [ "$(grep -c "^tutti: prompt" "$tmp/err")" -eq 2 ]' \
    "exit $rc, $(grep -c "^tutti: prompt" "$tmp/err") answers: $(err)"
ok piped_first_answer 'head -c "$(wc -c <"$tmp/run1")" "$tmp/two" | cmp -s - "$tmp/run1"' \
    "the first answer differs from tutti run's"
stats() { grep "^tutti: prompt" "$tmp/err" | sed -n "$1p"; }
ok kv_cache_reused 'stats 2 | grep -q "new, [1-9][0-9]* from the cache"' "second turn: $(stats 2)"

# The second answer is exactly what evaluating the whole rendered conversation
# (plain format: U1 A1 \n U2) from scratch gives.
{ printf 'Once upon a time'; head -c -1 "$tmp/run1"; printf '\nThe next day'; } >"$tmp/conv"
"$T" run -m "$m" -f "$tmp/conv" --temp 0 -n 40 >"$tmp/run2" 2>/dev/null
tail -c +"$(( $(wc -c <"$tmp/run1") + 1 ))" "$tmp/two" >"$tmp/answer2"
ok kv_cache_exact 'cmp -s "$tmp/answer2" "$tmp/run2"' "second answer differs from tutti run on the conversation"

# /reset forgets the conversation and the cache: the same question gets the same answer.
printf 'Once upon a time\n/reset\nOnce upon a time\n' | chat -n 40 --stats >"$tmp/reset"
rc=$?
ok reset '[ $rc -eq 0 ] && cat "$tmp/run1" "$tmp/run1" | cmp -s - "$tmp/reset" &&
    grep -q "conversation cleared" "$tmp/err" && stats 2 | grep -q " 0 from the cache"' \
    "exit $rc: $(err)"

# A full context is reported, with /reset offered, and the chat goes on.
printf 'Once upon a time\nThe next day\n/reset\nOnce upon a time\n' | chat -c 48 -n 40 >"$tmp/out"
rc=$?
ok context_full_prompt '[ $rc -eq 0 ] && grep -q "context is full.*/reset" "$tmp/err" &&
    cat "$tmp/run1" "$tmp/run1" | cmp -s - "$tmp/out"' "exit $rc: $(err)"
printf 'Once upon a time\n' | chat -c 24 -n 100 --ignore-eos >"$tmp/out"
rc=$?
ok context_full_answer '[ $rc -eq 0 ] && grep -q "context is full" "$tmp/err" && [ -s "$tmp/out" ]' \
    "exit $rc: $(err)"

printf 'Hello\n' | chat --chat-template chatml --system "You are kind." -n 8 >"$tmp/out"
rc=$?
ok template_option '[ $rc -eq 0 ] && [ -s "$tmp/out" ] && ! grep -q warning "$tmp/err"' "exit $rc: $(err)"

# ---- in a terminal ----
if ! command -v tmux >/dev/null 2>&1; then
    skip terminal "tmux is not installed (Debian package tmux)"
    exit 0
fi
case $T in /*) ;; *) T=$(pwd)/$T ;; esac
case $m in /*) ;; *) m=$(pwd)/$m ;; esac
tm() { tmux -L "$sock" -f /dev/null "$@"; }
screen() { tm capture-pane -p -S -2000 -t chat 2>/dev/null | sed 's/ *$//'; }
# wait_for CMD: poll the shell condition for up to 60 s
wait_for() {
    i=0
    while [ $i -lt 600 ]; do
        eval "$1" && return 0
        sleep 0.1
        i=$((i + 1))
    done
    return 1
}
at_prompt() { [ "$(screen | grep -v '^$' | tail -n 1)" = ">" ]; }
# start NAME ARGS...: run tutti chat in a fresh tmux session; its status goes to $tmp/NAME.rc
start() {
    n=$1
    shift
    rm -f "$tmp/$n.rc"
    tm kill-session -t chat 2>/dev/null
    tm new-session -d -s chat -x 150 -y 50 \
        "LANG=C.UTF-8 '$T' chat -m '$m' --temp 0 $* 2>&1; echo \$? >'$tmp/$n.rc'; sleep 600"
    wait_for at_prompt
}
first=$(head -c 20 "$tmp/run1")

# A question gets its answer streamed; /quit exits 0.
if start terminal_answer -n 40 && tm send-keys -t chat 'Once upon a time' Enter &&
   wait_for 'screen | grep -qF "$first" && at_prompt' && tm send-keys -t chat /quit Enter &&
   wait_for '[ -s "$tmp/terminal_answer.rc" ]' && [ "$(cat "$tmp/terminal_answer.rc")" = 0 ]; then
    pass terminal_answer
else
    fail terminal_answer "screen: $(screen | grep -v '^$' | tail -n 5 | tr '\n' '|')"
fi

# Ctrl-C during a long answer returns to the prompt and the chat goes on;
# Ctrl-C at the prompt quits with status 0.
stopped() { [ "$(screen | grep -c "answer stopped")" -ge "$1" ] && at_prompt; }
if start terminal_ctrl_c -c 8192 -n 8000 --ignore-eos --stats && tm send-keys -t chat 'Once upon a time' Enter &&
   wait_for 'screen | grep -qF "$first"' && tm send-keys -t chat C-c && wait_for 'stopped 1' &&
   tm send-keys -t chat 'The next day' Enter && wait_for 'screen | grep -q "^> The next day"' &&
   wait_for '[ "$(screen | grep -v "^$" | tail -n 1)" != "> The next day" ]' && tm send-keys -t chat C-c && wait_for 'stopped 2' &&
   screen | grep "^tutti: prompt" | tail -n 1 | grep -q "[1-9][0-9]* from the cache"; then
    pass terminal_ctrl_c_answer
else
    fail terminal_ctrl_c_answer "screen: $(screen | grep -v '^$' | tail -n 5 | tr '\n' '|')"
fi
if tm send-keys -t chat C-c && wait_for '[ -s "$tmp/terminal_ctrl_c.rc" ]' &&
   [ "$(cat "$tmp/terminal_ctrl_c.rc")" = 0 ]; then
    pass terminal_ctrl_c_quit
else
    fail terminal_ctrl_c_quit "status '$(cat "$tmp/terminal_ctrl_c.rc" 2>/dev/null)'; screen: $(screen | grep -v '^$' | tail -n 3 | tr '\n' '|')"
fi
