// test.mjs: the official `openai` npm client against a running `tutti serve`.
// Run by tests/server_test.sh; prints one "PASS/FAIL <tag>/<case>" line per case.
//
// Environment:
//   TUTTI_URL       base URL, e.g. http://127.0.0.1:8080/v1 (required)
//   TUTTI_MODEL     the served model id (required)
//   TUTTI_API_KEY   bearer key (default "none": the server has no key)
//   TUTTI_PROMPT    completion prompt, and TUTTI_N its max_tokens
//   TUTTI_EXPECT    the greedy text `tutti run --temp 0` gives for that prompt
//   TUTTI_TAG       line prefix (default "server/openai")
import OpenAI from 'openai';

const tag = process.env.TUTTI_TAG || 'server/openai';
const model = process.env.TUTTI_MODEL;
const prompt = process.env.TUTTI_PROMPT || 'Once upon a time';
const n = Number(process.env.TUTTI_N || 32);
const expect = process.env.TUTTI_EXPECT;
const client = new OpenAI({
  baseURL: process.env.TUTTI_URL,
  apiKey: process.env.TUTTI_API_KEY || 'none',
  maxRetries: 0,
  timeout: 60000,
});
let failed = 0;

async function check(name, fn) {
  try {
    const why = await fn();
    if (why) throw new Error(why);
    console.log(`PASS ${tag}/${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${tag}/${name}: ${String(e && e.message ? e.message : e).slice(0, 300)}`);
  }
}

const messages = [
  { role: 'system', content: 'You are a storyteller.' },
  { role: 'user', content: 'Tell me a story about a cat.' },
];
let chatText = null;

await check('models_list', async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  if (!ids.includes(model)) return `model list ${JSON.stringify(ids)} lacks ${model}`;
});

await check('models_retrieve', async () => {
  const m = await client.models.retrieve(model);
  if (m.id !== model || m.object !== 'model') return `got ${JSON.stringify(m)}`;
});

await check('completion', async () => {
  const r = await client.completions.create({ model, prompt, max_tokens: n, temperature: 0 });
  const c = r.choices[0];
  if (expect !== undefined && c.text !== expect) return `text ${JSON.stringify(c.text)} != tutti run ${JSON.stringify(expect)}`;
  if (!['stop', 'length'].includes(c.finish_reason)) return `finish_reason ${c.finish_reason}`;
  if (!r.usage || r.usage.completion_tokens < 1 || r.usage.total_tokens !== r.usage.prompt_tokens + r.usage.completion_tokens)
    return `usage ${JSON.stringify(r.usage)}`;
});

await check('completion_stream', async () => {
  const stream = await client.completions.create({ model, prompt, max_tokens: n, temperature: 0, stream: true });
  let text = '', finish = null;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.text ?? '';
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  if (expect !== undefined && text !== expect) return `streamed ${JSON.stringify(text)} != ${JSON.stringify(expect)}`;
  if (!finish) return 'no finish_reason';
});

await check('chat', async () => {
  const r = await client.chat.completions.create({ model, messages, max_tokens: 24, temperature: 0 });
  const c = r.choices[0];
  if (r.object !== 'chat.completion' || c.message.role !== 'assistant' || typeof c.message.content !== 'string')
    return `bad reply ${JSON.stringify(r).slice(0, 200)}`;
  if (!['stop', 'length'].includes(c.finish_reason)) return `finish_reason ${c.finish_reason}`;
  chatText = c.message.content;
});

await check('chat_stream', async () => {
  const stream = await client.chat.completions.create({
    model, messages, max_tokens: 24, temperature: 0, stream: true, stream_options: { include_usage: true },
  });
  let text = '', finish = null, usage = null, role = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    const d = chunk.choices[0];
    if (!d) continue;
    role = d.delta.role ?? role;
    text += d.delta.content ?? '';
    finish = d.finish_reason ?? finish;
  }
  if (role !== 'assistant') return `role ${role}`;
  if (chatText !== null && text !== chatText) return `streamed ${JSON.stringify(text)} != ${JSON.stringify(chatText)}`;
  if (!finish) return 'no finish_reason';
  if (!usage || usage.completion_tokens < 1) return `usage ${JSON.stringify(usage)}`;
});

await check('chat_sampled', async () => {
  const r = await client.chat.completions.create({ model, messages, max_tokens: 16, temperature: 0.9, top_p: 0.9, seed: 7 });
  const again = await client.chat.completions.create({ model, messages, max_tokens: 16, temperature: 0.9, top_p: 0.9, seed: 7 });
  if (r.choices[0].message.content !== again.choices[0].message.content) return 'same seed, different answers';
});

await check('error_unknown_model', async () => {
  try {
    await client.chat.completions.create({ model: 'no-such-model', messages });
  } catch (e) {
    if (e instanceof OpenAI.NotFoundError && e.error?.code === 'model_not_found') return;
    return `wrong error ${e}`;
  }
  return 'no error';
});

await check('error_n2', async () => {
  try {
    await client.chat.completions.create({ model, messages, n: 2 });
  } catch (e) {
    if (e instanceof OpenAI.BadRequestError && e.param === 'n') return;
    return `wrong error ${e}`;
  }
  return 'no error';
});

process.exit(failed ? 1 : 0);
