// bench.mjs: continuous-batching throughput of a running `tutti serve`.
//
//   node bench.mjs URL MODEL STREAMS [MAX_TOKENS] [PROMPT_TOKENS]
//
// First one stream alone, then STREAMS streams started together; each is a
// streamed completion of MAX_TOKENS tokens (ignore_eos, greedy) after a
// prompt of PROMPT_TOKENS token ids. Reports per phase the aggregate decode
// rate (tokens after each stream's first / time from the first first-token
// to the last end) and TTFT p50/p99, plus the speed-up of the aggregate rate
// over the single stream, as one JSON line. steady_tok_s is the rate while
// every stream of the phase is decoding (events from the last first token
// to the first end, one per token; a rare event carrying two tokens, where
// the detokenizer held back part of a character, counts once, so it errs low).
const [url, model, streamsArg, maxArg, promptArg] = process.argv.slice(2);
const streams = Number(streamsArg || 8), maxTokens = Number(maxArg || 64), nPrompt = Number(promptArg || 32);

async function one(k) {
  const prompt = Array.from({ length: nPrompt }, (_, i) => 1 + ((i * 7 + k * 13) % 200));
  const t0 = performance.now();
  const r = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ model, prompt, max_tokens: maxTokens, temperature: 0, ignore_eos: true, stream: true,
                           stream_options: { include_usage: true } }),
  });
  if (r.status !== 200) throw new Error(`status ${r.status}: ${await r.text()}`);
  let first = null, tokens = 0, buf = '';
  const times = [];
  const dec = new TextDecoder();
  for await (const part of r.body) {
    buf += dec.decode(part, { stream: true });
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const ev = buf.slice(0, i);
      buf = buf.slice(i + 2);
      if (ev === 'data: [DONE]') continue;
      const j = JSON.parse(ev.slice(6));
      if (j.usage) tokens = j.usage.completion_tokens;
      if (j.choices?.[0]) {
        const now = performance.now();
        if (first === null) first = now;
        times.push(now);
      }
    }
  }
  return { t0, first, end: performance.now(), tokens, times };
}

function pct(xs, p) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

async function phase(n) {
  const rs = await Promise.all(Array.from({ length: n }, (_, k) => one(k)));
  const firstFirst = Math.min(...rs.map((r) => r.first)), lastEnd = Math.max(...rs.map((r) => r.end));
  const decoded = rs.reduce((a, r) => a + r.tokens - 1, 0);
  const ttft = rs.map((r) => r.first - r.t0);
  const lastFirst = Math.max(...rs.map((r) => r.first)), firstEnd = Math.min(...rs.map((r) => r.end));
  const inWindow = rs.reduce((a, r) => a + r.times.filter((t) => t > lastFirst && t <= firstEnd).length, 0);
  return {
    streams: n,
    tokens: rs.reduce((a, r) => a + r.tokens, 0),
    decode_tok_s: +(decoded / ((lastEnd - firstFirst) / 1000)).toFixed(2),
    steady_tok_s: firstEnd > lastFirst ? +(inWindow / ((firstEnd - lastFirst) / 1000)).toFixed(2) : null,
    ttft_ms_p50: +pct(ttft, 50).toFixed(1),
    ttft_ms_p99: +pct(ttft, 99).toFixed(1),
    wall_s: +((lastEnd - Math.min(...rs.map((r) => r.t0))) / 1000).toFixed(2),
  };
}

await one(0); // warm-up
const single = await phase(1);
const many = await phase(streams);
// speedup: the aggregate rates (the other streams' prompts inside the many
// phase's window); steady_speedup: the rate while all N decode over the
// single stream's decode rate.
const ratio = (a, b) => (a && b ? +(a / b).toFixed(2) : null);
console.log(JSON.stringify({ single, many, speedup: ratio(many.decode_tok_s, single.decode_tok_s),
                             steady_speedup: ratio(many.steady_tok_s, single.decode_tok_s) }));
