//! A Responses API upstream behind the Chat Completions API (ChatMock parity):
//! translation both ways, streaming as it arrives, tool calls, `response.failed`,
//! broken streams, the cached prompt as `instructions`, `/v1/responses`, and
//! the feature flags with their `CHATMOCK_*` aliases.

use serde_json::{Value, json};

use crate::support::gateway::InProcess;
use crate::support::http::{read_to_end, read_until};
use crate::support::prompt_server::{PromptMode, PromptServer, remote_text};
use crate::support::responses_upstream::{
    ARGUMENTS, Answer, ResponsesUpstream, TEXT, chunks_of, get_json, health, metrics_text, post,
    responses_config, until,
};
use crate::support::{PATIENCE, TestHome, assert_openai_error, client};

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream,
           "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]})
}

/// A proxy in front of a Responses upstream answering `answer`, prompts from a
/// prompt server that is up.
fn setup(
    answer: Answer,
    extra: &str,
    env: &[(&str, &str)],
) -> (ResponsesUpstream, PromptServer, TestHome, InProcess) {
    let upstream = ResponsesUpstream::start(answer);
    let prompts = PromptServer::start(PromptMode::Up);
    let home = TestHome::new();
    home.config(&responses_config(&upstream.url(), &prompts, extra));
    let proxy = InProcess::start(&home, env);
    (upstream, prompts, home, proxy)
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_through_a_responses_upstream_gets_the_cached_prompt_as_instructions() {
    let (upstream, _prompts, home, proxy) = setup(Answer::Text, "", &[]);
    let reply: Value = post(&proxy, "/v1/chat/completions", &chat("gpt-5", false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(reply["object"], "chat.completion");
    assert_eq!(reply["model"], "gpt-5");
    assert_eq!(reply["choices"][0]["message"]["role"], "assistant");
    assert_eq!(reply["choices"][0]["message"]["content"], TEXT);
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");
    assert_eq!(reply["usage"]["prompt_tokens"], 11);
    assert_eq!(reply["usage"]["completion_tokens"], 3);
    assert_eq!(reply["usage"]["total_tokens"], 14);

    let sent = upstream.last_body();
    assert_eq!(sent["model"], "gpt-5");
    assert_eq!(sent["instructions"], remote_text("base_instructions"));
    assert_eq!(sent["input"][0]["role"], "developer");
    assert_eq!(sent["input"][0]["content"][0]["text"], "be brief");
    assert_eq!(sent["input"][1]["role"], "user");
    assert_eq!(sent["stream"], false);
    assert_eq!(sent["store"], false);

    // A codex model gets the codex prompt; a reasoning suffix becomes the effort.
    post(
        &proxy,
        "/v1/chat/completions",
        &chat("gpt-5-codex-high", false),
    )
    .await;
    let sent = upstream.last_body();
    assert_eq!(sent["instructions"], remote_text("gpt5_codex_instructions"));
    assert_eq!(sent["model"], "gpt-5-codex");
    assert_eq!(sent["reasoning"]["effort"], "high");

    // The prompts were cached on disk, and /health and /metrics report them.
    assert_eq!(
        home.read("cache/prompts/base_instructions.md"),
        remote_text("base_instructions")
    );
    let h = health(&proxy).await;
    assert_eq!(h["status"], "pass", "{h}");
    assert_eq!(h["upstream"]["api"], "responses");
    for name in ["base_instructions", "gpt5_codex_instructions"] {
        assert_eq!(h["prompts"][name]["source"], "cache", "{h}");
        assert_eq!(h["prompts"][name]["fresh"], true, "{h}");
        assert!(h["prompts"][name]["age_secs"].as_f64().unwrap() >= 0.0);
    }
    let text = metrics_text(&proxy).await;
    for line in [
        "warden_prompt_cache_age_seconds{prompt=\"base_instructions\"}",
        "warden_prompt_fetch_attempts{prompt=\"base_instructions\"} 1",
        "warden_prompt_fetch_failures{prompt=\"base_instructions\"} 0",
        "warden_model_tokens_total{model=\"gpt-5\",kind=\"prompt\"} 11",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_text_arrives_as_it_comes_with_one_finish_and_a_usage_chunk() {
    let (upstream, _prompts, _home, proxy) = setup(Answer::GatedText, "", &[]);
    let mut body = chat("gpt-5", true);
    body["stream_options"] = json!({"include_usage": true});
    let mut response = post(&proxy, "/v1/chat/completions", &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    // "Hello" reaches the client while the upstream is still paused: no buffering.
    let mut text = String::new();
    upstream.wait_arrival().await;
    while !text.contains("\"content\":\"Hello\"") {
        let chunk = tokio::time::timeout(PATIENCE, response.chunk())
            .await
            .expect("the first delta arrives before the upstream finishes")
            .unwrap()
            .expect("more body");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    upstream.release();
    while let Some(chunk) = response.chunk().await.unwrap() {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let (chunks, done) = chunks_of(&text);
    assert!(done, "ends with [DONE]: {text}");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk"),
        "{text}"
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, TEXT);
    let finishes: Vec<_> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finishes, ["stop"]);
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]), "{usage}");
    assert_eq!(usage["usage"]["prompt_tokens"], 11);
    assert_eq!(usage["usage"]["completion_tokens"], 3);
    assert_eq!(upstream.last_body()["stream"], true);

    // Without include_usage: no usage chunk.
    upstream.release(); // the next stream pauses too; let it through at once
    let text = post(&proxy, "/v1/chat/completions", &chat("gpt-5", true))
        .await
        .text()
        .await
        .unwrap();
    let (chunks, done) = chunks_of(&text);
    assert!(done);
    assert!(
        chunks
            .iter()
            .all(|c| c.get("usage").is_none() && c["choices"].as_array().unwrap().len() == 1),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chat_stream_has_headers_and_a_role_chunk_while_the_upstream_is_silent() {
    let (upstream, _prompts, _home, proxy) = setup(Answer::SilentThenText, "", &[]);
    let mut r = tokio::time::timeout(
        PATIENCE,
        client()
            .post(format!("{}/v1/chat/completions", proxy.url))
            .json(&chat("gpt-5", true))
            .send(),
    )
    .await
    .expect("response headers while the upstream is still silent")
    .unwrap();
    // The upstream has not been released: everything so far came without it.
    assert_eq!(upstream.hits(), 1);
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let first = tokio::time::timeout(PATIENCE, r.chunk())
        .await
        .expect("a first chunk while the upstream is still silent")
        .unwrap()
        .unwrap();
    let (chunks, _) = chunks_of(std::str::from_utf8(&first).unwrap());
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    upstream.wait_arrival().await;
    upstream.release();
    let mut rest = String::new();
    while let Some(bytes) = tokio::time::timeout(PATIENCE, r.chunk())
        .await
        .expect("the rest of the stream")
        .unwrap()
    {
        rest.push_str(std::str::from_utf8(&bytes).unwrap());
    }
    let (chunks, done) = chunks_of(&rest);
    assert!(done, "{rest}");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, TEXT);
    assert!(
        chunks
            .iter()
            .all(|c| c["choices"][0]["delta"].get("role").is_none()),
        "the role is sent once: {rest}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tool_calls_stream_as_deltas_and_come_back_whole() {
    let (upstream, _prompts, _home, proxy) = setup(Answer::ToolCall, "", &[]);
    let mut body = chat("gpt-5", true);
    body["tools"] = json!([{"type": "function", "function": {"name": "get_weather",
        "description": "weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let text = post(&proxy, "/v1/chat/completions", &body)
        .await
        .text()
        .await
        .unwrap();
    let sent = upstream.last_body();
    assert_eq!(sent["tools"][0]["type"], "function");
    assert_eq!(sent["tools"][0]["name"], "get_weather");

    let (chunks, done) = chunks_of(&text);
    assert!(done, "{text}");
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert!(calls.len() >= 3, "a start and the argument pieces: {text}");
    assert_eq!(calls[0]["id"], "call_1");
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert!(calls.iter().all(|c| c["index"] == 0));
    let args: String = calls
        .iter()
        .filter_map(|c| c["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, ARGUMENTS);
    let finishes: Vec<_> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finishes, ["tool_calls"]);

    body["stream"] = json!(false);
    let reply: Value = post(&proxy, "/v1/chat/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    let call = &reply["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["id"], "call_1");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], ARGUMENTS);
    assert_eq!(reply["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test(flavor = "multi_thread")]
async fn response_failed_becomes_an_error_event() {
    let (_upstream, _prompts, _home, proxy) = setup(Answer::Failed, "", &[]);
    let text = post(&proxy, "/v1/chat/completions", &chat("gpt-5", true))
        .await
        .text()
        .await
        .unwrap();
    let (chunks, done) = chunks_of(&text);
    assert!(done, "{text}");
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""}),
        "the role chunk comes first, at once"
    );
    assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "partial");
    let last = chunks.last().unwrap();
    assert_openai_error(last);
    assert_eq!(last["error"]["message"], "the model fell over");
    assert_eq!(last["error"]["code"], "server_error");
    assert!(
        chunks
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null()),
        "no finish_reason after a failure: {text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_dropping_mid_stream_ends_the_clients_stream_cleanly() {
    let (upstream, _prompts, _home, proxy) = setup(Answer::DropMidStream, "", &[]);
    let text = tokio::time::timeout(PATIENCE, async {
        let mut response = post(&proxy, "/v1/chat/completions", &chat("gpt-5", true)).await;
        let text = read_until(&mut response, "partial").await;
        upstream.release();
        read_to_end(&mut response, text).await
    })
    .await
    .expect("the stream ends, never hangs");
    let (chunks, done) = chunks_of(&text);
    assert!(done, "{text}");
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""}),
        "the role chunk comes first, at once"
    );
    assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "partial");
    assert_openai_error(chunks.last().unwrap());
    assert_eq!(upstream.hits(), 1, "no retry once bytes reached the client");
    until("the slot is released", || async {
        health(&proxy).await["requests"]["in_flight"] == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v1_responses_is_served_by_default_and_404_when_turned_off() {
    // Off (via the WARDEN_ variable): the OpenAI-shaped 404.
    let (_upstream, _prompts, _home, proxy) =
        setup(Answer::Text, "", &[("WARDEN_ENABLE_RESPONSES_API", "0")]);
    let r = post(
        &proxy,
        "/v1/responses",
        &json!({"model": "gpt-5", "input": "hi"}),
    )
    .await;
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_openai_error(&body);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("enable_responses_api"),
        "{body}"
    );
    drop(proxy);

    // On by default: forwarded, same admission as chat. A request without
    // instructions of its own gets the base prompt.
    let (upstream, _prompts, _home, proxy) =
        setup(Answer::Text, "", &[("WARDEN_AUTH_TOKEN", "tok")]);
    let bare = json!({"model": "gpt-5", "input": "hi"});
    let r = post(&proxy, "/v1/responses", &bare).await;
    assert_eq!(r.status(), 401, "bearer required like every /v1 route");
    let c = client();
    let url = format!("{}/v1/responses", proxy.url);
    let send = |body: &Value| c.post(&url).bearer_auth("tok").json(body).send();
    let reply: Value = send(&bare).await.unwrap().json().await.unwrap();
    assert_eq!(reply["object"], "response", "relayed as it is: {reply}");
    assert_eq!(reply["output"][0]["content"][0]["text"], TEXT);
    let sent = upstream.last_body();
    assert_eq!(sent["instructions"], remote_text("base_instructions"));
    assert_eq!(sent["input"], "hi");

    // Streaming is relayed as is (Responses events, not chat chunks).
    let mut streaming = bare.clone();
    streaming["stream"] = json!(true);
    let text = send(&streaming).await.unwrap().text().await.unwrap();
    assert!(
        text.contains("event: response.output_text.delta\n"),
        "{text}"
    );
    assert!(text.contains("event: response.completed\n"), "{text}");
    assert!(!text.contains("chat.completion.chunk"), "{text}");
    let metrics = metrics_text(&proxy).await;
    assert!(
        metrics.contains("warden_http_requests_total{route=\"/v1/responses\",status=\"200\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("warden_model_tokens_total{model=\"gpt-5\",kind=\"completion\"} 6"),
        "usage of both answers counted: {metrics}"
    );
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_base_prompt_is_not_added_when_the_client_brings_its_own() {
    let (upstream, _prompts, _home, proxy) = setup(Answer::Text, "", &[]);
    // Its own `instructions`: forwarded untouched.
    let own = json!({"model": "gpt-5", "input": "hi", "instructions": "be terse"});
    assert_eq!(post(&proxy, "/v1/responses", &own).await.status(), 200);
    assert_eq!(upstream.last_body(), own);
    // A leading developer message (what Codex CLI sends): untouched too.
    let codex_like = json!({"model": "gpt-5-codex", "input": [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "You are Codex."}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]});
    let r = client()
        .post(format!("{}/v1/responses", proxy.url))
        .header("session-id", "s-1")
        .header("originator", "codex_exec")
        .header("x-codex-turn-metadata", "{}")
        .json(&codex_like)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(upstream.last_body(), codex_like);
    let headers = upstream.last_headers();
    assert_eq!(headers["session-id"], "s-1", "Codex's headers forwarded");
    assert_eq!(headers["originator"], "codex_exec");
    assert_eq!(headers["x-codex-turn-metadata"], "{}");
    assert_eq!(headers["x-request-id"], r.headers()["x-request-id"]);
    drop(proxy);

    // responses_always_base_instructions: the base prompt always on
    // top and the client's own kept as a developer message.
    let (upstream, _prompts, _home, proxy) = setup(
        Answer::Text,
        "",
        &[("WARDEN_RESPONSES_ALWAYS_BASE_INSTRUCTIONS", "1")],
    );
    assert_eq!(post(&proxy, "/v1/responses", &own).await.status(), 200);
    let sent = upstream.last_body();
    assert_eq!(sent["instructions"], remote_text("base_instructions"));
    assert_eq!(sent["input"][0]["role"], "developer");
    assert_eq!(sent["input"][0]["content"][0]["text"], "be terse");
    assert_eq!(sent["input"][1]["content"][0]["text"], "hi");
    drop(proxy);

    // CHATMOCK_ aliases; no base instructions ever: untouched even without its own.
    let (upstream, _prompts, _home, proxy) = setup(
        Answer::Text,
        "",
        &[
            ("CHATMOCK_ENABLE_RESPONSES_API", "true"),
            ("CHATMOCK_RESPONSES_NO_BASE_INSTRUCTIONS", "1"),
        ],
    );
    let bare = json!({"model": "gpt-5", "input": "hi"});
    assert_eq!(post(&proxy, "/v1/responses", &bare).await.status(), 200);
    assert_eq!(upstream.last_body(), bare);
}

#[tokio::test(flavor = "multi_thread")]
async fn expose_reasoning_lists_variants_also_through_the_chatmock_alias() {
    let ids = |models: Value| -> Vec<String> {
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    let all = [
        "gpt-5",
        "gpt-5-low",
        "gpt-5-medium",
        "gpt-5-high",
        "gpt-5-codex",
        "gpt-5-codex-low",
        "gpt-5-codex-medium",
        "gpt-5-codex-high",
    ];
    // The alias, on the offline mock.
    let home = TestHome::new();
    let proxy = InProcess::start(&home, &[("CHATMOCK_EXPOSE_REASONING", "1")]);
    assert_eq!(
        ids(get_json(&format!("{}/v1/models", proxy.url)).await),
        all
    );
    drop(proxy);
    // The WARDEN_ variable wins over its alias.
    let proxy = InProcess::start(
        &home,
        &[
            ("CHATMOCK_EXPOSE_REASONING", "1"),
            ("WARDEN_EXPOSE_REASONING", "0"),
        ],
    );
    assert_eq!(
        ids(get_json(&format!("{}/v1/models", proxy.url)).await),
        ["gpt-5", "gpt-5-codex"]
    );
    drop(proxy);
    // warden.toml, with a Responses upstream: a variant picks the effort.
    let (upstream, _prompts, _home, proxy) =
        setup(Answer::Text, "[features]\nexpose_reasoning = true\n", &[]);
    assert_eq!(
        ids(get_json(&format!("{}/v1/models", proxy.url)).await),
        all
    );
    post(&proxy, "/v1/chat/completions", &chat("gpt-5-low", false)).await;
    let sent = upstream.last_body();
    assert_eq!(sent["model"], "gpt-5");
    assert_eq!(sent["reasoning"]["effort"], "low");
}
