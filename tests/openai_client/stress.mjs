// stress.mjs: many concurrent streaming clients against `tutti serve`, with a
// strict check of every stream's framing. Plain fetch, no dependencies.
//
//   node stress.mjs URL MODEL REQUESTS CONCURRENCY [MAX_TOKENS]
//
// URL is the server root (http://127.0.0.1:PORT). Half the requests are chat,
// half completions, with varied prompts, lengths and sampling. A stream is
// well-formed when: status 200, content-type text/event-stream, every event
// is exactly "data: <json>\n\n", every JSON chunk has the request's id and
// object type, exactly one chunk carries a finish_reason (stop or length),
// the usage chunk (include_usage) is last before "data: [DONE]", which ends
// the stream. Prints one JSON line: {"ok":N,"failed":N,"errors":[...]}.
const [url, model, total, conc, maxTok] = process.argv.slice(2);
const nReq = Number(total), nConc = Number(conc), maxTokens = Number(maxTok || 24);
const words = ['Once upon a time', 'The cat', 'Lily and Tom went to the park', 'A big red ball', 'Hello'];
let next = 0, ok = 0;
const errors = [];

function checkStream(body, chat) {
  if (!body.endsWith('data: [DONE]\n\n')) return 'does not end with data: [DONE]';
  const events = body.split('\n\n');
  events.pop(); // after the last separator
  let id = null, finishes = 0, usage = null, text = '';
  for (let i = 0; i < events.length - 1; i++) {
    const ev = events[i];
    if (!ev.startsWith('data: ') || ev.includes('\n')) return `bad event framing: ${JSON.stringify(ev.slice(0, 80))}`;
    const j = JSON.parse(ev.slice(6));
    if (j.error) return `error event: ${j.error.message}`;
    if (j.object !== (chat ? 'chat.completion.chunk' : 'text_completion')) return `object ${j.object}`;
    id = id ?? j.id;
    if (j.id !== id) return 'id changed within the stream';
    if (j.usage) {
      if (i !== events.length - 2) return 'usage chunk is not the last';
      usage = j.usage;
      continue;
    }
    const c = j.choices[0];
    if (c.finish_reason) {
      if (!['stop', 'length'].includes(c.finish_reason)) return `finish_reason ${c.finish_reason}`;
      finishes++;
    }
    text += chat ? (c.delta.content ?? '') : c.text;
  }
  if (events[events.length - 1] !== 'data: [DONE]') return 'last event is not [DONE]';
  if (finishes !== 1) return `${finishes} finish reasons`;
  if (!usage || usage.completion_tokens < 1 || usage.completion_tokens > maxTokens) return `usage ${JSON.stringify(usage)}`;
  return null;
}

async function one(k) {
  const chat = k % 2 === 0;
  const prompt = words[k % words.length];
  const req = {
    model, stream: true, stream_options: { include_usage: true },
    max_tokens: 1 + (k * 7) % maxTokens, temperature: k % 3 === 0 ? 0 : 0.8, seed: k,
  };
  if (chat) req.messages = [{ role: 'user', content: prompt }];
  else req.prompt = prompt;
  const r = await fetch(`${url}/v1/${chat ? 'chat/completions' : 'completions'}`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(req),
  });
  const body = await r.text();
  if (r.status !== 200) return `status ${r.status}: ${body.slice(0, 200)}`;
  if (!(r.headers.get('content-type') || '').startsWith('text/event-stream')) return 'content-type';
  return checkStream(body, chat);
}

async function worker() {
  while (next < nReq) {
    const k = next++;
    let why;
    try {
      why = await one(k);
    } catch (e) {
      why = String(e);
    }
    if (why) errors.push(`request ${k}: ${why}`);
    else ok++;
  }
}

await Promise.all(Array.from({ length: nConc }, worker));
console.log(JSON.stringify({ ok, failed: nReq - ok, errors: errors.slice(0, 5) }));
process.exit(ok === nReq ? 0 : 1);
