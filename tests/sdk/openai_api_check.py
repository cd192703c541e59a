"""The rest of the OpenAI API through warden with real clients (scripts/e2e.sh):

  python3 openai_api_check.py MOCK_URL PASSTHROUGH_URL RECORD_FILE

- the openai SDK's embeddings.create, as floats and as base64 (what the SDK asks for by
  default, decoding it itself), completions.create whole and streamed, against a proxy on
  the built-in upstream (MOCK_URL);
- audio.transcriptions.create through a proxy whose provider has passthrough = true and
  key sk-e2e-provider (PASSTHROUGH_URL), with the alias "ears" for whisper-1; the server
  behind it records what it got in RECORD_FILE;
- LangChain's OpenAIEmbeddings (langchain-openai) against MOCK_URL (its strings; its
  token-array mode needs tiktoken's encodings from the internet).
"""
import json
import math
import sys
from array import array

import openai

mock, passthrough, record = sys.argv[1], sys.argv[2], sys.argv[3]
c = openai.OpenAI(base_url=f"{mock}/v1", api_key="unused", max_retries=0)

# Embeddings: floats, then the SDK's default (base64, decoded by the SDK): the same float32
# numbers (JSON carries each as its shortest decimal, base64 as its exact bits).
floats = c.embeddings.create(model="text-embedding-3-small", input=["warden", "e2e"],
                             encoding_format="float")
assert len(floats.data) == 2 and len(floats.data[0].embedding) == 1536, floats
norm = math.sqrt(sum(x * x for x in floats.data[0].embedding))
assert abs(norm - 1.0) < 1e-4, norm
default = c.embeddings.create(model="text-embedding-3-small", input=["warden", "e2e"])
f32 = lambda vectors: [array("f", d.embedding).tobytes() for d in vectors]  # noqa: E731
assert f32(default.data) == f32(floats.data), "base64 != float"
assert floats.usage.prompt_tokens == 2, floats.usage
short = c.embeddings.create(model="text-embedding-3-small", input="warden", dimensions=64)
assert len(short.data[0].embedding) == 64
print(f"openai {openai.__version__}: embeddings.create (float, base64, dimensions) OK")

# Legacy completions, whole and streamed.
done = c.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say this is a test")
assert done.object == "text_completion" and done.choices[0].text == "Say this is a test", done
pieces = [chunk.choices[0].text
          for chunk in c.completions.create(model="gpt-3.5-turbo-instruct",
                                            prompt="stream this please", stream=True)
          if chunk.choices]
assert "".join(pieces) == "stream this please", pieces
try:
    c.completions.create(model="gpt-3.5-turbo-instruct", prompt="x", echo=True)
    raise AssertionError("echo was not refused")
except openai.BadRequestError as e:
    assert e.body["param"] == "echo", e.body
print(f"openai {openai.__version__}: completions.create (whole, stream, echo refused) OK")

# Audio through pass-through: multipart upload, the alias rewritten, the provider's key used.
p = openai.OpenAI(base_url=f"{passthrough}/v1", api_key="sk-client-stays-here", max_retries=0)
audio = bytes(range(256)) * 4096  # 1 MiB of "audio"
raw = p.audio.transcriptions.with_raw_response.create(model="ears", file=("talk.mp3", audio))
assert raw.headers["x-warden-provider"] == "speech", raw.headers
heard = raw.parse()
assert heard.text == f"heard {len(audio)} bytes of talk.mp3 with whisper-1", heard.text
seen = json.loads(open(record).read().splitlines()[-1])
assert seen["authorization"] == "Bearer sk-e2e-provider", seen
print(f"openai {openai.__version__}: audio.transcriptions.create through pass-through OK")

# LangChain's OpenAIEmbeddings. check_embedding_ctx_length=False: by default it first
# tokenizes with tiktoken, whose encoding files are downloaded from the internet.
from langchain_openai import OpenAIEmbeddings  # noqa: E402

lc = OpenAIEmbeddings(model="text-embedding-3-small", base_url=f"{mock}/v1", api_key="unused",
                      check_embedding_ctx_length=False, max_retries=0)
docs = lc.embed_documents(["warden", "e2e"])
query = lc.embed_query("warden")
assert len(docs) == 2 and len(docs[0]) == 1536 and len(query) == 1536
assert abs(math.sqrt(sum(x * x for x in query)) - 1.0) < 1e-4
assert array("f", docs[0]).tobytes() == array("f", query).tobytes(), "same text, same vector"
import langchain_openai  # noqa: E402
print(f"langchain-openai {getattr(langchain_openai, '__version__', '?')}: OpenAIEmbeddings OK")
