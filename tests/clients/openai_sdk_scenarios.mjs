// TEST CLIENT: the official `openai` JavaScript SDK (as TypeScript IDE
// plugins use it) against the gateway. Run by tests/e2e/tiny/test_ide_clients.py:
//   node openai_sdk_scenarios.mjs <base URL> <API key> <model>
// It prints "older sent" when it waits for the test (see below), then one JSON
// object: what each call returned or threw, for the test to check.
import OpenAI from "openai";

const [baseURL, apiKey, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey });
const prompt = "def add(a, b):\n    return";

function failure(err) {
  return {
    status: err.status ?? null,
    code: err.code ?? null,
    param: err.param ?? null,
    type: err.type ?? null,
    message: err.message,
    shouldRetry: err.headers?.get?.("x-should-retry") ?? null,
    requestId: err.headers?.get?.("x-request-id") ?? null,
  };
}

async function attempt(call) {
  try {
    return { ok: await call() };
  } catch (err) {
    if (!(err instanceof OpenAI.APIError)) throw err;
    return { error: failure(err) };
  }
}

const out = {};

out.models = (await client.models.list()).data.map((m) => m.id);

const plain = await client.completions.create({ model, prompt, max_tokens: 5, temperature: 0 });
out.plain = { text: plain.choices[0].text, usage: plain.usage, finish: plain.choices[0].finish_reason };

const stream = await client.completions.create({
  model, prompt, max_tokens: 5, temperature: 0, stream: true,
  stream_options: { include_usage: true },
});
const pieces = [];
let usage = null;
for await (const chunk of stream) {
  for (const choice of chunk.choices) pieces.push(choice.text);
  if (chunk.usage) usage = chunk.usage;
}
out.stream = { text: pieces.join(""), chunks: pieces.length, usage };

out.unknownModel = await attempt(() => client.completions.create({ model: "nope", prompt, max_tokens: 2 }));
out.badMaxTokens = await attempt(() => client.completions.create({ model, prompt, max_tokens: -1 }));
out.chatOnBase = await attempt(() =>
  client.chat.completions.create({ model, messages: [{ role: "user", content: "hi" }], max_tokens: 2 }),
);

// Latest keystroke wins: an older completion for a document, then (once the
// test says the engine is generating it: a line on stdin) a newer one.
const document = { "x-seed-serve-document": "src/js.py" };
const long = { model, prompt, max_tokens: 900, min_tokens: 900, n: 4, temperature: 0.8 };
const older = attempt(() => client.completions.create(long, { headers: document }));
console.log("older sent");
await new Promise((resolve) => process.stdin.once("data", resolve));
const newer = await attempt(() =>
  client.completions.create({ model, prompt, max_tokens: 3 }, { headers: document }),
);
out.superseded = { older: await older, newer: newer.ok ? "ok" : newer.error };

// A plugin that cancels as the user types: abort the stream after its first chunk.
const controller = new AbortController();
const abortable = await client.completions.create(
  { model, prompt, max_tokens: 900, min_tokens: 900, stream: true },
  { signal: controller.signal, headers: { "x-request-id": "js-aborted" } },
);
let received = 0;
try {
  for await (const chunk of abortable) {
    received += 1;
    controller.abort(); // the SDK then ends the iteration quietly (or throws its abort error)
  }
} catch (err) {
  if (!(err instanceof OpenAI.APIUserAbortError)) throw err;
}
out.aborted = { aborted: controller.signal.aborted, received };

console.log(JSON.stringify(out));
