// Drives the warden proxy with the official `openai` Node SDK, unchanged.
//
// Usage: node node_sdk_check.cjs BASE_URL   (the proxy on the built-in mock upstream)
// Exits non-zero with a message on the first mismatch.
const assert = require("node:assert/strict");
const OpenAI = require("openai");

async function main() {
  const base = process.argv[2];
  const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: "unused", maxRetries: 0 });
  const prompt = "hello from the node sdk";

  const models = [];
  for await (const m of client.models.list()) models.push(m.id);
  assert.ok(models.length > 0, "no models listed");
  assert.equal((await client.models.retrieve(models[0])).id, models[0]);
  await assert.rejects(client.models.retrieve("no-such-model"), (e) => {
    assert.ok(e instanceof OpenAI.NotFoundError, String(e));
    assert.equal(e.code, "model_not_found");
    return true;
  });

  const chat = await client.chat.completions.create({
    model: models[0],
    messages: [{ role: "user", content: prompt }],
  });
  assert.equal(chat.choices[0].message.content, prompt);
  assert.ok(chat._request_id, "no x-request-id on the answer");

  let text = "";
  const stream = await client.chat.completions.create({
    model: models[0],
    messages: [{ role: "user", content: prompt }],
    stream: true,
    stream_options: { include_usage: true },
  });
  let usage = null;
  for await (const chunk of stream) {
    usage = chunk.usage ?? usage;
    for (const choice of chunk.choices) text += choice.delta.content ?? "";
  }
  assert.equal(text, prompt);
  assert.ok(usage && usage.total_tokens > 0, JSON.stringify(usage));

  const response = await client.responses.create({ model: models[0], input: prompt });
  assert.equal(response.output_text, prompt);

  let deltas = "";
  const events = [];
  const rstream = client.responses.stream({ model: models[0], input: prompt });
  for await (const event of rstream) {
    events.push(event.type);
    if (event.type === "response.output_text.delta") deltas += event.delta;
  }
  const final = await rstream.finalResponse();
  assert.equal(deltas, prompt, events.join(","));
  assert.equal(final.output_text, prompt);
  assert.equal(events[0], "response.created");
  assert.equal(events[events.length - 1], "response.completed");

  await assert.rejects(
    client.chat.completions.create({ model: models[0], messages: "not a list" }),
    (e) => e instanceof OpenAI.BadRequestError,
  );
  console.log(`openai (node) ${require("openai/version").VERSION}: models (list, retrieve), chat, streaming, responses (create, stream), errors OK`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
