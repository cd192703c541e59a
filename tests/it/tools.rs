//! Server tools run over NATS (docs/contract.md §18) against a real nats-server,
//! a tool service written here with async-nats, and a scripted upstream that
//! asks for tools: one round, two rounds, parallel calls, mixed server and
//! client calls, every failure (timeout, no responders, NATS down, a reply
//! that is not JSON), the `max_rounds` limit, a streaming client, Messages and
//! NATS clients, and the opt-out.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::support::gateway::InProcess;
use crate::support::http::{Served, metrics_text, post_chat};
use crate::support::nats::NatsServer;
use crate::support::prompt_server::serve;
use crate::support::{PATIENCE, TestHome, client};

/// An upstream that answers each chat request with the next scripted answer
/// (the last one again once the script is used up) and records the requests.
struct Scripted {
    url: String,
    requests: Arc<Mutex<Vec<Value>>>,
}

impl Scripted {
    fn start(answers: Vec<Value>) -> Scripted {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let answers = Arc::new(answers);
        let app = Router::new().route(
            "/v1/chat/completions",
            post(move |body: Bytes| {
                let seen = seen.clone();
                let answers = answers.clone();
                async move {
                    let request: Value = serde_json::from_slice(&body).unwrap();
                    let n = {
                        let mut seen = seen.lock().unwrap();
                        seen.push(request);
                        seen.len()
                    };
                    let answer = answers[(n - 1).min(answers.len() - 1)].clone();
                    axum::Json(answer)
                }
            }),
        );
        Scripted {
            url: format!("http://{}/v1", serve(app)),
            requests,
        }
    }

    fn requests(&self) -> Vec<Value> {
        self.requests.lock().unwrap().clone()
    }
}

fn completion(message: Value, finish: &str) -> Value {
    json!({"id": "chatcmpl-s", "object": "chat.completion", "created": 1, "model": "gpt-5",
           "choices": [{"index": 0, "message": message, "finish_reason": finish}],
           "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}})
}

fn says(text: &str) -> Value {
    completion(json!({"role": "assistant", "content": text}), "stop")
}

/// An answer calling `(id, tool, arguments)` each.
fn calls(list: &[(&str, &str, Value)]) -> Value {
    let calls: Vec<Value> = list
        .iter()
        .map(|(id, name, args)| {
            json!({"id": id, "type": "function",
                   "function": {"name": name, "arguments": args.to_string()}})
        })
        .collect();
    completion(
        json!({"role": "assistant", "content": null, "tool_calls": calls}),
        "tool_calls",
    )
}

const DECLARE: &str = r#"
[[tools.declare]]
name = "get_weather"
description = "Current weather for a city"
parameters = { type = "object", properties = { city = { type = "string" } }, required = ["city"] }

[[tools.declare]]
name = "get_time"
description = "The time in a city"

[[tools.declare]]
name = "silent"

[[tools.declare]]
name = "nobody"

[[tools.declare]]
name = "garbled"

[[tools.declare]]
name = "big"

[[tools.declare]]
name = "refusing"
"#;

/// The gateway, with the home it serves (removed after the gateway stops).
struct Gateway {
    inner: InProcess,
    _home: TestHome,
}

impl Served for Gateway {
    fn url(&self) -> &str {
        self.inner.url()
    }
}

fn gateway(nats: &NatsServer, upstream: &Scripted, tools: &str) -> Gateway {
    gateway_with(nats, upstream, "", tools, "")
}

/// `upstream_extra` goes into `[upstream]`, `tools` into `[tools]`, `after` at
/// the end (other sections).
fn gateway_with(
    nats: &NatsServer,
    upstream: &Scripted,
    upstream_extra: &str,
    tools: &str,
    after: &str,
) -> Gateway {
    let home = TestHome::new();
    home.config(&config_text(nats, upstream, upstream_extra, tools, after));
    Gateway {
        inner: InProcess::start(&home, &[]),
        _home: home,
    }
}

/// The configuration [`gateway_with`] serves: `tools.timeout = 1` unless
/// `tools` sets it.
fn config_text(
    nats: &NatsServer,
    upstream: &Scripted,
    upstream_extra: &str,
    tools: &str,
    after: &str,
) -> String {
    let timeout = if tools.contains("timeout") {
        ""
    } else {
        "timeout = 1"
    };
    format!(
        "[upstream]\nurl = \"{}\"\nattempts = 1\n{upstream_extra}\n\n[nats]\nurl = \"{}\"\n\n[tools]\n{timeout}\n{tools}\n{DECLARE}\n{after}",
        upstream.url,
        nats.url()
    )
}

/// A tool service on the bus: `get_weather` answers `{"city":…,"temp":21}`,
/// `get_time` `{"time":"12:00"}` (each only once the other has arrived when
/// `together` is set: proof that parallel calls run at once), `silent` never
/// answers, `garbled` answers text that is not JSON; `nobody` has no service.
async fn tool_service(nats: &NatsServer, together: bool) -> async_nats::Client {
    let nc = nats.client().await;
    let mut subscriptions = Vec::new();
    for tool in [
        "get_weather",
        "get_time",
        "silent",
        "garbled",
        "big",
        "refusing",
    ] {
        subscriptions.push(nc.subscribe(format!("tools.execute.{tool}")).await.unwrap());
    }
    let mut subscription = futures_util::stream::select_all(subscriptions);
    nc.flush().await.unwrap();
    let replies = nc.clone();
    let arrived = Arc::new(tokio::sync::Semaphore::new(0));
    tokio::spawn(async move {
        while let Some(message) = subscription.next().await {
            let replies = replies.clone();
            let arrived = arrived.clone();
            tokio::spawn(async move {
                let Some(reply_to) = message.reply.clone() else {
                    return;
                };
                let tool = message
                    .subject
                    .as_str()
                    .rsplit('.')
                    .next()
                    .unwrap()
                    .to_string();
                if let Some(seen) = message.headers.as_ref().and_then(|h| h.get("traceparent")) {
                    TRACEPARENTS.lock().unwrap().push(seen.as_str().to_string());
                }
                let args: Value = serde_json::from_slice(&message.payload).unwrap_or(Value::Null);
                let answer = match tool.as_str() {
                    "get_weather" | "get_time" => {
                        if together {
                            arrived.add_permits(1);
                            // Both calls in flight at once, or this one waits in vain.
                            let both =
                                tokio::time::timeout(PATIENCE, arrived.acquire_many(2)).await;
                            if let Ok(Ok(permits)) = both {
                                permits.forget();
                                arrived.add_permits(2);
                            }
                        }
                        if tool == "get_weather" {
                            json!({"city": args["city"], "temp": 21}).to_string()
                        } else {
                            json!({"time": "12:00"}).to_string()
                        }
                    }
                    "garbled" => "sunny, probably".to_string(),
                    "refusing" => {
                        // What a NATS micro-service sends for an error.
                        let mut headers = async_nats::HeaderMap::new();
                        headers.insert("Nats-Service-Error", "city unknown");
                        headers.insert("Nats-Service-Error-Code", "400");
                        let _ = replies
                            .publish_with_headers(reply_to, headers, Bytes::new())
                            .await;
                        return;
                    }
                    "big" => json!({"data": "x".repeat(4096)}).to_string(),
                    _ => return, // silent
                };
                let _ = replies.publish(reply_to, Bytes::from(answer)).await;
            });
        }
    });
    nc
}

/// The `traceparent` headers tool calls carried (only the traced test sets traces on).
static TRACEPARENTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn chat_body(stream: bool) -> Value {
    json!({"model": "gpt-5", "stream": stream,
           "messages": [{"role": "user", "content": "weather in Oslo?"}]})
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

/// The tool messages the upstream's request `n` carried, by call id.
fn tool_results(request: &Value) -> Vec<(String, Value)> {
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| {
            (
                m["tool_call_id"].as_str().unwrap().to_string(),
                serde_json::from_str(m["content"].as_str().unwrap()).unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_round_calls_the_tool_over_nats_and_the_model_again() {
    let nats = NatsServer::start();
    let _service = tool_service(&nats, false).await;
    let upstream = Scripted::start(vec![
        calls(&[("call_1", "get_weather", json!({"city": "Oslo"}))]),
        says("It is 21 degrees in Oslo."),
    ]);
    let gw = gateway(&nats, &upstream, "");
    let response = post_chat(&gw, &chat_body(false)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "x-warden-tool-rounds").as_deref(),
        Some("2")
    );
    assert_eq!(header(&response, "x-warden-tool-limit"), None);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "It is 21 degrees in Oslo."
    );
    assert_eq!(
        body["usage"]["prompt_tokens"], 20,
        "both rounds' usage: {body}"
    );
    assert_eq!(body["usage"]["total_tokens"], 26);

    let requests = upstream.requests();
    assert_eq!(requests.len(), 2);
    let offered: Vec<&str> = requests[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert!(offered.contains(&"get_weather"), "{offered:?}");
    assert_eq!(
        requests[0]["tools"][0]["function"]["parameters"]["required"],
        json!(["city"])
    );
    assert_eq!(
        tool_results(&requests[1]),
        vec![("call_1".to_string(), json!({"city": "Oslo", "temp": 21}))]
    );
    let assistant = &requests[1]["messages"][1];
    assert_eq!(assistant["role"], "assistant");
    assert_eq!(assistant["tool_calls"][0]["id"], "call_1");

    let metrics = metrics_text(&gw).await;
    assert!(
        metrics.contains(r#"warden_tool_calls_total{tool="get_weather",outcome="ok"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"warden_tool_call_duration_seconds_count{tool="get_weather"} 1"#));
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_calls_run_at_once_and_a_second_round_follows() {
    let nats = NatsServer::start();
    let _service = tool_service(&nats, true).await;
    let upstream = Scripted::start(vec![
        calls(&[
            ("call_w", "get_weather", json!({"city": "Oslo"})),
            ("call_t", "get_time", json!({"city": "Oslo"})),
        ]),
        calls(&[
            ("call_w2", "get_weather", json!({"city": "Bergen"})),
            ("call_t2", "get_time", json!({"city": "Bergen"})),
        ]),
        says("done"),
    ]);
    let gw = gateway(&nats, &upstream, "");
    let response = post_chat(&gw, &chat_body(false)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "x-warden-tool-rounds").as_deref(),
        Some("3")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "done");
    let requests = upstream.requests();
    assert_eq!(requests.len(), 3);
    // Each waited for the other: sequential calls would have timed out (1 s).
    assert_eq!(
        tool_results(&requests[1]),
        vec![
            ("call_w".to_string(), json!({"city": "Oslo", "temp": 21})),
            ("call_t".to_string(), json!({"time": "12:00"})),
        ]
    );
    assert_eq!(
        tool_results(&requests[2]).len(),
        4,
        "the conversation grows"
    );
    assert_eq!(
        tool_results(&requests[2])[2],
        ("call_w2".to_string(), json!({"city": "Bergen", "temp": 21}))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_become_error_results_for_the_model_and_metrics() {
    let nats = NatsServer::start();
    let _service = tool_service(&nats, false).await;
    let upstream = Scripted::start(vec![
        calls(&[
            ("c_silent", "silent", json!({})),
            ("c_nobody", "nobody", json!({})),
            ("c_garbled", "garbled", json!({})),
            ("c_refusing", "refusing", json!({})),
        ]),
        says("sorry"),
    ]);
    let gw = gateway(&nats, &upstream, "");
    let response = post_chat(&gw, &chat_body(false)).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "sorry");
    let results = tool_results(&upstream.requests()[1]);
    assert_eq!(results.len(), 4);
    for (id, needle) in [
        ("c_silent", "no reply within"),
        ("c_nobody", "no service answers"),
        ("c_garbled", "not JSON"),
        ("c_refusing", "city unknown"),
    ] {
        let (_, result) = results.iter().find(|(i, _)| i == id).unwrap();
        let error = result["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{result}"));
        assert!(error.contains(needle), "{id}: {error}");
    }
    let metrics = metrics_text(&gw).await;
    for series in [
        r#"warden_tool_calls_total{tool="silent",outcome="timeout"} 1"#,
        r#"warden_tool_calls_total{tool="nobody",outcome="no_responders"} 1"#,
        r#"warden_tool_calls_total{tool="garbled",outcome="invalid_reply"} 1"#,
        r#"warden_tool_calls_total{tool="refusing",outcome="error"} 1"#,
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_down_is_an_error_result_not_a_hang() {
    let mut nats = NatsServer::start();
    let upstream = Scripted::start(vec![
        calls(&[("call_1", "get_weather", json!({"city": "Oslo"}))]),
        says("the weather service is away"),
    ]);
    // A tool timeout far past the test's patience: the answer cannot be the
    // timeout's.
    let gw = gateway(&nats, &upstream, "timeout = 3600");
    nats.stop();
    let response = tokio::time::timeout(PATIENCE, post_chat(&gw, &chat_body(false)))
        .await
        .expect("an answer while NATS is down, without waiting for the tool timeout");
    assert_eq!(response.status(), 200);
    let results = tool_results(&upstream.requests()[1]);
    let error = results[0].1["error"].as_str().unwrap();
    assert!(error.contains("NATS is not connected"), "{error}");
    let metrics = metrics_text(&gw).await;
    assert!(
        metrics.contains(r#"warden_tool_calls_total{tool="get_weather",outcome="error"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn max_rounds_stops_the_loop_and_says_so() {
    let nats = NatsServer::start();
    let _service = tool_service(&nats, false).await;
    let upstream = Scripted::start(vec![calls(&[(
        "again",
        "get_weather",
        json!({"city": "Oslo"}),
    )])]);
    let gw = gateway(&nats, &upstream, "max_rounds = 3");
    let response = post_chat(&gw, &chat_body(false)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "x-warden-tool-rounds").as_deref(),
        Some("3")
    );
    assert_eq!(
        header(&response, "x-warden-tool-limit").as_deref(),
        Some("reached")
    );
    let body: Value = response.json().await.unwrap();
    let choice = &body["choices"][0];
    assert!(choice["message"].get("tool_calls").is_none(), "{body}");
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(upstream.requests().len(), 3);

    // A streaming client's headers went out before the loop ended: comments say it.
    let response = post_chat(&gw, &chat_body(true)).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.contains(": x-warden-tool-rounds 3\n"), "{text}");
    assert!(text.contains(": x-warden-tool-limit reached\n"), "{text}");
    assert!(
        !text.contains("tool_calls\":["),
        "no unexecuted call: {text}"
    );
    assert_eq!(upstream.requests().len(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn mixed_calls_return_the_clients_and_keep_ours_for_the_follow_up() {
    let nats = NatsServer::start();
    let _service = tool_service(&nats, false).await;
    let upstream = Scripted::start(vec![
        calls(&[
            ("call_srv", "get_weather", json!({"city": "Oslo"})),
            ("call_cli", "read_file", json!({"path": "a.txt"})),
        ]),
        says("the file says hi and it is 21 degrees"),
    ]);
    let gw = gateway(&nats, &upstream, "");
    let client_tool = json!({"type": "function", "function": {"name": "read_file",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}});
    let mut request = chat_body(false);
    request["tools"] = json!([client_tool]);
    let response = post_chat(&gw, &request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "x-warden-tool-rounds").as_deref(),
        Some("1")
    );
    let body: Value = response.json().await.unwrap();
    let message = body["choices"][0]["message"].clone();
    let ids: Vec<&str> = message["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["call_cli"], "only the client's call: {body}");
    let first = upstream.requests()[0].clone();
    let offered: Vec<&str> = first["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        offered[0], "read_file",
        "the client's own first: {offered:?}"
    );
    assert!(
        offered.contains(&"get_weather"),
        "next to ours: {offered:?}"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");

    // The client runs its tool and comes back.
    let mut follow_up = request.clone();
    let messages = follow_up["messages"].as_array_mut().unwrap();
    messages.push(message);
    messages.push(json!({"role": "tool", "tool_call_id": "call_cli", "content": "hi"}));
    let response = post_chat(&gw, &follow_up).await;
    assert_eq!(response.status(), 200);
    let requests = upstream.requests();
    assert_eq!(requests.len(), 2);
    let sent = &requests[1]["messages"];
    let both: Vec<&str> = sent[1]["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(both, ["call_srv", "call_cli"], "{sent}");
    assert_eq!(sent[2]["tool_call_id"], "call_srv");
    assert_eq!(
        serde_json::from_str::<Value>(sent[2]["content"].as_str().unwrap()).unwrap(),
        json!({"city": "Oslo", "temp": 21})
    );
    assert_eq!(sent[3]["tool_call_id"], "call_cli");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streaming_client_gets_the_last_round_as_chunks() {
    let nats = NatsServer::start();
    let _service = tool_service(&nats, false).await;
    let upstream = Scripted::start(vec![
        calls(&[("call_1", "get_weather", json!({"city": "Oslo"}))]),
        says("It is 21 degrees."),
    ]);
    let gw = gateway(&nats, &upstream, "");
    let mut request = chat_body(true);
    request["stream_options"] = json!({"include_usage": true});
    let response = post_chat(&gw, &request).await;
    assert_eq!(response.status(), 200);
    assert!(
        header(&response, "content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = response.text().await.unwrap();
    assert!(text.contains(": x-warden-tool-rounds 2"), "{text}");
    let data = crate::support::sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    let chunks: Vec<Value> = data
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "It is 21 degrees.");
    let usage = chunks.iter().find(|c| c["usage"].is_object()).unwrap();
    assert_eq!(usage["usage"]["prompt_tokens"], 20);
    for request in upstream.requests() {
        assert_eq!(request["stream"], false, "rounds are asked whole");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_and_nats_clients_get_the_tools_too() {
    let nats = NatsServer::start();
    let _service = tool_service(&nats, false).await;
    let upstream = Scripted::start(vec![
        calls(&[("call_1", "get_weather", json!({"city": "Oslo"}))]),
        says("21 degrees"),
        calls(&[("call_2", "get_weather", json!({"city": "Oslo"}))]),
        says("21 degrees"),
    ]);
    let gw = gateway(&nats, &upstream, "");
    let response = client()
        .post(format!("{}/v1/messages", gw.url()))
        .json(&json!({"model": "gpt-5", "max_tokens": 100,
                      "messages": [{"role": "user", "content": "weather in Oslo?"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "x-warden-tool-rounds").as_deref(),
        Some("2")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["content"][0]["text"], "21 degrees", "{body}");

    let nc = nats.client().await;
    let reply = tokio::time::timeout(
        PATIENCE,
        nc.request("warden.chat", Bytes::from(chat_body(false).to_string())),
    )
    .await
    .expect("a NATS reply")
    .unwrap();
    let body: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"], "21 degrees",
        "{body}"
    );
    let rounds = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("x-warden-tool-rounds"))
        .map(|v| v.as_str().to_string());
    assert_eq!(rounds.as_deref(), Some("2"));
    assert_eq!(upstream.requests().len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn opting_out_or_a_client_tool_of_the_same_name_offers_no_server_tool() {
    let nats = NatsServer::start();
    let _service = tool_service(&nats, false).await;
    let upstream = Scripted::start(vec![calls(&[(
        "call_1",
        "get_weather",
        json!({"city": "Oslo"}),
    )])]);
    let gw = gateway(&nats, &upstream, "");
    let response = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .header("x-warden-tools", "none")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-warden-tool-rounds"), None);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["tool_calls"][0]["id"],
        "call_1"
    );
    assert!(upstream.requests()[0].get("tools").is_none());

    let mut request = chat_body(false);
    request["tools"] =
        json!([{"type": "function", "function": {"name": "get_weather", "description": "mine"}}]);
    let response = post_chat(&gw, &request).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["tool_calls"][0]["id"],
        "call_1"
    );
    let sent = &upstream.requests()[1]["tools"];
    let weather: Vec<&Value> = sent
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["function"]["name"] == "get_weather")
        .collect();
    assert_eq!(weather.len(), 1);
    assert_eq!(weather[0]["function"]["description"], "mine");
    assert_eq!(
        upstream.requests().len(),
        2,
        "no loop: the client runs its own"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_responses_client_gets_the_tools_too() {
    let nats = NatsServer::start();
    let _service = tool_service(&nats, false).await;
    let upstream = Scripted::start(vec![
        calls(&[("call_1", "get_weather", json!({"city": "Oslo"}))]),
        says("21 degrees"),
    ]);
    let gw = gateway(&nats, &upstream, "");
    let response = client()
        .post(format!("{}/v1/responses", gw.url()))
        .json(&json!({"model": "gpt-5", "input": "weather in Oslo?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "x-warden-tool-rounds").as_deref(),
        Some("2")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "response", "{body}");
    let text = body["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["type"] == "message")
        .map(|item| item["content"][0]["text"].clone());
    assert_eq!(text, Some(json!("21 degrees")), "{body}");
    let requests = upstream.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        tool_results(&requests[1]),
        vec![("call_1".to_string(), json!({"city": "Oslo", "temp": 21}))]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replies_past_max_event_bytes_and_calls_past_16_an_answer_are_refused() {
    let nats = NatsServer::start();
    let _service = tool_service(&nats, false).await;
    let mut many: Vec<(String, &str, Value)> = vec![("c_big".to_string(), "big", json!({}))];
    for i in 0..16 {
        many.push((format!("c_{i}"), "get_weather", json!({"city": "Oslo"})));
    }
    let list: Vec<(&str, &str, Value)> = many
        .iter()
        .map(|(id, name, args)| (id.as_str(), *name, args.clone()))
        .collect();
    let upstream = Scripted::start(vec![calls(&list), says("ok")]);
    let gw = gateway_with(&nats, &upstream, "max_event_bytes = 2048", "", "");
    let response = post_chat(&gw, &chat_body(false)).await;
    assert_eq!(response.status(), 200);
    let results = tool_results(&upstream.requests()[1]);
    assert_eq!(results.len(), 17, "every call has its result");
    let error = results[0].1["error"].as_str().unwrap();
    assert!(error.contains("larger than 2048 bytes"), "{error}");
    assert_eq!(results[1].1, json!({"city": "Oslo", "temp": 21}));
    let last = results[16].1["error"].as_str().unwrap();
    assert!(last.contains("more than 16 server tool calls"), "{last}");
    let metrics = metrics_text(&gw).await;
    assert!(
        metrics.contains(r#"warden_tool_calls_total{tool="big",outcome="invalid_reply"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"warden_tool_calls_total{tool="get_weather",outcome="ok"} 15"#));
}

/// A marker in the model's tool arguments, which the weather service repeats
/// in its reply: it may reach a span only with `capture_content`.
const MARK: &str = "Oslo-7f3a9c";

/// Serves one request whose answer calls `get_time`, `get_weather` (with
/// [`MARK`]) and `garbled`, with traces sent to a collector of its own
/// (`telemetry` is added to `[telemetry]`). Returns the collector's spans once
/// the three tool spans are there, and its raw bytes.
async fn traced_tool_calls(telemetry: &str) -> (Vec<crate::support::otlp::Span>, Vec<u8>) {
    use crate::support::otlp::{Collector, Mode};
    let nats = NatsServer::start();
    let _service = tool_service(&nats, false).await;
    let collector = Collector::start(Mode::Accept);
    let upstream = Scripted::start(vec![
        calls(&[
            ("call_traced", "get_time", json!({"city": "Oslo"})),
            ("call_weather", "get_weather", json!({"city": MARK})),
            ("call_garbled", "garbled", json!({})),
        ]),
        says("noon"),
    ]);
    let telemetry = format!(
        "[telemetry]\notlp_endpoint = \"{}\"\n{telemetry}\n",
        collector.endpoint()
    );
    let gw = gateway_with(&nats, &upstream, "", "", &telemetry);
    let response = post_chat(&gw, &chat_body(false)).await;
    assert_eq!(response.status(), 200);
    let spans = collector
        .until("the three execute_tool spans and the request's", |spans| {
            spans
                .iter()
                .filter(|s| s.name.starts_with("execute_tool "))
                .count()
                == 3
                && spans.iter().any(|s| s.parent_span_id.is_empty())
        })
        .await;
    (spans, collector.raw_bytes())
}

#[tokio::test(flavor = "multi_thread")]
async fn each_call_is_an_execute_tool_span_whose_context_the_service_receives() {
    use crate::support::otlp::{INTERNAL, STATUS_ERROR};
    let (spans, raw) = traced_tool_calls("").await;
    let named = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no span {name}: {spans:?}"))
    };
    let tool = named("execute_tool get_time");
    assert_eq!(tool.kind, INTERNAL);
    assert_eq!(tool.attr("gen_ai.operation.name"), "execute_tool");
    assert_eq!(tool.attr("gen_ai.tool.name"), "get_time");
    assert_eq!(tool.attr("gen_ai.tool.call.id"), "call_traced");
    assert_eq!(tool.attr("warden.tool.outcome"), "ok");
    assert_eq!(tool.attr("error.type"), Value::Null);
    assert_ne!(tool.status_code, STATUS_ERROR);
    let server = spans
        .iter()
        .find(|s| s.trace_id == tool.trace_id && s.parent_span_id.is_empty())
        .expect("the request's span");
    for name in [
        "execute_tool get_time",
        "execute_tool get_weather",
        "execute_tool garbled",
    ] {
        assert_eq!(
            named(name).parent_span_id,
            server.span_id,
            "{name} is inside the request's span"
        );
    }
    let garbled = named("execute_tool garbled");
    assert_eq!(garbled.attr("warden.tool.outcome"), "invalid_reply");
    assert_eq!(garbled.attr("error.type"), "invalid_reply");
    assert_eq!(garbled.status_code, STATUS_ERROR);
    let sent = TRACEPARENTS.lock().unwrap().clone();
    assert!(
        sent.iter()
            .any(|t| t.contains(&tool.trace_id) && t.contains(&tool.span_id)),
        "the service got the span's context: {sent:?}"
    );
    // Without capture_content, neither the arguments nor the reply.
    assert_eq!(
        named("execute_tool get_weather").attr("gen_ai.tool.call.arguments"),
        Value::Null
    );
    let raw = String::from_utf8_lossy(&raw);
    assert!(
        !raw.contains(MARK),
        "arguments or reply in an exported span"
    );
    assert!(
        !raw.contains("sunny, probably"),
        "a reply in an exported span"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_capture_content_a_tool_span_has_the_arguments_and_the_result() {
    let (spans, _) = traced_tool_calls("capture_content = true").await;
    let weather = spans
        .iter()
        .find(|s| s.name == "execute_tool get_weather")
        .unwrap();
    let arguments: Value =
        serde_json::from_str(weather.attr("gen_ai.tool.call.arguments").as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"city": MARK}));
    let result: Value =
        serde_json::from_str(weather.attr("gen_ai.tool.call.result").as_str().unwrap()).unwrap();
    assert_eq!(result, json!({"city": MARK, "temp": 21}));
    let garbled = spans
        .iter()
        .find(|s| s.name == "execute_tool garbled")
        .unwrap();
    let result = garbled.attr("gen_ai.tool.call.result");
    assert!(
        result.as_str().unwrap().contains("not JSON"),
        "the result the model got: {result}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_rounds_usage_is_metered_against_the_clients_key() {
    let nats = NatsServer::start();
    let _service = tool_service(&nats, false).await;
    let upstream = Scripted::start(vec![
        calls(&[("call_1", "get_weather", json!({"city": "Oslo"}))]),
        says("21 degrees"),
    ]);
    let home = TestHome::new();
    home.config(&format!(
        "[upstream]\nurl = \"{}\"\nattempts = 1\n\n[nats]\nurl = \"{}\"\n\n[tools]\ntimeout = 1\n{DECLARE}",
        upstream.url,
        nats.url()
    ));
    let out = crate::support::run("proxy", &home, &["keys", "create", "team", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        crate::support::text(&out.stderr)
    );
    let key: Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = key["key"].as_str().unwrap().to_string();
    let gw = InProcess::start(&home, &[]);
    let response = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .bearer_auth(&key)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "x-warden-tool-rounds").as_deref(),
        Some("2")
    );
    // The ledger is written in batches: read until the row is there.
    let path = home.file("data/usage.db");
    let deadline = std::time::Instant::now() + PATIENCE;
    let row: (String, i64, i64) = loop {
        let read = || -> rusqlite::Result<(String, i64, i64)> {
            rusqlite::Connection::open(&path)?.query_row(
                "SELECT key, input_tokens, output_tokens FROM usage",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
        };
        if let Ok(row) = read() {
            break row;
        }
        assert!(std::time::Instant::now() < deadline, "no ledger row");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(row, ("team".to_string(), 20, 6), "both model calls' tokens");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_responders_is_answered_at_once_not_after_the_timeout() {
    let nats = NatsServer::start();
    let upstream = Scripted::start(vec![
        calls(&[("c_nobody", "nobody", json!({}))]),
        says("nobody serves that tool"),
    ]);
    // A tool timeout far past the test's patience: only NATS's own "no
    // responders" can end the call in time.
    let gw = gateway(&nats, &upstream, "timeout = 3600");
    let response = tokio::time::timeout(PATIENCE, post_chat(&gw, &chat_body(false)))
        .await
        .expect("an answer without waiting for the tool timeout");
    assert_eq!(response.status(), 200);
    let results = tool_results(&upstream.requests()[1]);
    let error = results[0].1["error"].as_str().unwrap();
    assert!(error.contains("no service answers"), "{error}");
    let metrics = metrics_text(&gw).await;
    assert!(
        metrics.contains(r#"warden_tool_calls_total{tool="nobody",outcome="no_responders"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_requests_deadline_ends_a_tool_call_that_outlives_it() {
    let nats = NatsServer::start();
    let _service = tool_service(&nats, false).await;
    let upstream = Scripted::start(vec![
        calls(&[("c_silent", "silent", json!({}))]),
        says("too late"),
    ]);
    // The request may take 2 s in all (`upstream.timeout`), the tool 3600 s.
    let gw = gateway_with(&nats, &upstream, "timeout = 2", "timeout = 3600", "");
    let response = tokio::time::timeout(PATIENCE, post_chat(&gw, &chat_body(false)))
        .await
        .expect("an answer by the request's deadline, not the tool's");
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 504, "the request's deadline passed: {body}");
    crate::support::assert_openai_error(&body);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("while server tools ran"), "{message}");
    assert_eq!(
        upstream.requests().len(),
        1,
        "no model call past the deadline"
    );
    let metrics = metrics_text(&gw).await;
    assert!(
        metrics.contains(r#"warden_tool_calls_total{tool="silent",outcome="timeout"} 1"#),
        "{metrics}"
    );
}

#[test]
fn every_failure_is_a_line_in_the_proxys_log() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let nats = NatsServer::start();
    let _service = runtime.block_on(tool_service(&nats, false));
    let upstream = Scripted::start(vec![
        calls(&[
            ("c_nobody", "nobody", json!({})),
            ("c_garbled", "garbled", json!({})),
            ("c_weather", "get_weather", json!({"city": "Oslo"})),
        ]),
        says("one of three"),
    ]);
    let home = TestHome::new();
    home.config(&config_text(&nats, &upstream, "", "", ""));
    let proxy = crate::support::Proxy::start(&home, &[], &[]);
    let response = runtime.block_on(post_chat(&proxy, &chat_body(false)));
    assert_eq!(response.status(), 200);
    let failed = |log: &str, tool: &str, outcome: &str| {
        log.lines().any(|line| {
            line.contains("server tool call failed")
                && line.contains(&format!("tool=\"{tool}\""))
                && line.contains(&format!("outcome=\"{outcome}\""))
        })
    };
    crate::support::eventually("both failures in the log", || {
        let log = home.read("logs/proxy.log");
        failed(&log, "nobody", "no_responders") && failed(&log, "garbled", "invalid_reply")
    });
    let log = home.read("logs/proxy.log");
    assert_eq!(
        log.matches("server tool call failed").count(),
        2,
        "one line per failure, none for the call that worked: {log}"
    );
    assert!(!log.contains("sunny, probably"), "no reply text in the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streaming_client_gets_keep_alive_comments_while_tools_run() {
    let nats = NatsServer::start();
    // A tool that answers only once the client has seen a keep-alive.
    let release = Arc::new(tokio::sync::Notify::new());
    let nc = nats.client().await;
    let mut requests = nc.subscribe("tools.execute.get_weather").await.unwrap();
    nc.flush().await.unwrap();
    let (held, replies) = (release.clone(), nc.clone());
    tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            let _ = tokio::time::timeout(PATIENCE, held.notified()).await;
            if let Some(reply) = message.reply {
                let answer = json!({"temp": 21}).to_string();
                let _ = replies.publish(reply, Bytes::from(answer)).await;
            }
        }
    });
    let round = [
        calls(&[("call_1", "get_weather", json!({"city": "Oslo"}))]),
        says("It is 21 degrees."),
    ];
    let upstream = Scripted::start(round.iter().cycle().take(6).cloned().collect());
    let gw = gateway(&nats, &upstream, "timeout = 60");
    let user = json!([{"role": "user", "content": "weather in Oslo?"}]);
    // (route, body, the keep-alive as the client sees it, and how many of
    // them come before any keep-alive of the tool loop: Messages starts with a
    // `ping` of its own.)
    let routes = [
        (
            "/v1/chat/completions",
            json!({"model": "gpt-5", "stream": true, "messages": user}),
            ": keep-alive\n\n",
            0,
        ),
        (
            "/v1/responses",
            json!({"model": "gpt-5", "stream": true, "input": "weather in Oslo?"}),
            ": keep-alive\n\n",
            0,
        ),
        (
            "/v1/messages",
            json!({"model": "gpt-5", "stream": true, "max_tokens": 100, "messages": user}),
            "event: ping\n",
            1,
        ),
    ];
    for (route, body, keep_alive, at_start) in routes {
        let mut response = client()
            .post(format!("{}{route}", gw.url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            200,
            "{route}: the answer starts while the tool runs"
        );
        let mut text = String::new();
        let mut released = false;
        while let Some(chunk) = tokio::time::timeout(PATIENCE, response.chunk())
            .await
            .expect("the stream goes on")
            .unwrap()
        {
            text.push_str(std::str::from_utf8(&chunk).unwrap());
            if !released && text.matches(keep_alive).count() > at_start {
                assert!(
                    !text.contains("21 degrees"),
                    "{route}: no answer before the last round: {text}"
                );
                release.notify_one();
                released = true;
            }
        }
        assert!(released, "{route}: a keep-alive while the tool ran: {text}");
        assert!(text.contains("It is 21 degrees."), "{route}: {text}");
    }
    let requests = upstream.requests();
    assert_eq!(requests.len(), 6);
    assert_eq!(
        tool_results(&requests[1]),
        vec![("call_1".to_string(), json!({"temp": 21}))]
    );
}

/// The JSON `data:` of every SSE event (named events included).
fn event_data(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .filter_map(|data| serde_json::from_str(data.trim()).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_messages_and_responses_clients_get_the_last_round() {
    let nats = NatsServer::start();
    let _service = tool_service(&nats, false).await;
    let upstream = Scripted::start(vec![
        calls(&[("call_1", "get_weather", json!({"city": "Oslo"}))]),
        says("21 degrees"),
        calls(&[("call_2", "get_weather", json!({"city": "Oslo"}))]),
        says("21 degrees"),
    ]);
    let gw = gateway(&nats, &upstream, "");
    let response = client()
        .post(format!("{}/v1/messages", gw.url()))
        .json(&json!({"model": "gpt-5", "max_tokens": 100, "stream": true,
                      "messages": [{"role": "user", "content": "weather in Oslo?"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let events = event_data(&text);
    let said: String = events
        .iter()
        .filter(|e| e["type"] == "content_block_delta")
        .filter_map(|e| e["delta"]["text"].as_str())
        .collect();
    assert_eq!(said, "21 degrees", "{text}");
    assert!(events.iter().any(|e| e["type"] == "message_stop"), "{text}");
    assert!(
        !events
            .iter()
            .any(|e| e["content_block"]["type"] == "tool_use"),
        "the server's call is not the client's: {text}"
    );

    let response = client()
        .post(format!("{}/v1/responses", gw.url()))
        .json(&json!({"model": "gpt-5", "input": "weather in Oslo?", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let events = event_data(&text);
    let said: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .filter_map(|e| e["delta"].as_str())
        .collect();
    assert_eq!(said, "21 degrees", "{text}");
    let completed = events
        .iter()
        .find(|e| e["type"] == "response.completed")
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        !completed["response"]["output"]
            .as_array()
            .unwrap()
            .iter()
            .any(|item| item["type"] == "function_call"),
        "{completed}"
    );
    let requests = upstream.requests();
    assert_eq!(requests.len(), 4);
    assert!(requests.iter().all(|r| r["stream"] == false));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streaming_nats_client_gets_the_count_on_done_and_can_opt_out() {
    let nats = NatsServer::start();
    let _service = tool_service(&nats, false).await;
    let upstream = Scripted::start(vec![
        calls(&[("call_1", "get_weather", json!({"city": "Oslo"}))]),
        calls(&[("call_2", "get_weather", json!({"city": "Oslo"}))]),
        says("21 degrees"),
    ]);
    let _gw = gateway(&nats, &upstream, "");
    let nc = nats.client().await;
    let header = |m: &async_nats::Message, name: &str| {
        m.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
    };

    // x-warden-tools: none as a NATS header: the model's call comes back.
    // (Asked again while the gateway has not subscribed yet.)
    let deadline = std::time::Instant::now() + PATIENCE;
    let reply = loop {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("x-warden-tools", "none");
        let body = Bytes::from(chat_body(false).to_string());
        match tokio::time::timeout(
            PATIENCE,
            nc.request_with_headers("warden.chat", headers, body),
        )
        .await
        .expect("a NATS reply")
        {
            Ok(reply) => break reply,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "{e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    let body: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(
        body["choices"][0]["message"]["tool_calls"][0]["id"], "call_1",
        "{body}"
    );
    assert_eq!(header(&reply, "x-warden-tool-rounds"), None);
    assert!(
        upstream.requests()[0].get("tools").is_none(),
        "no tool offered"
    );

    // Streamed: chunks of the last round, the count on the `done` message.
    let inbox = nc.new_inbox();
    let mut replies = nc.subscribe(inbox.clone()).await.unwrap();
    nc.publish_with_reply(
        "warden.chat",
        inbox,
        Bytes::from(chat_body(true).to_string()),
    )
    .await
    .unwrap();
    let mut text = String::new();
    let done = loop {
        let message = tokio::time::timeout(PATIENCE, replies.next())
            .await
            .expect("a stream message in time")
            .expect("subscription open");
        if header(&message, "Warden-Status").as_deref() == Some("done") {
            break message;
        }
        let chunk: Value = serde_json::from_slice(&message.payload).unwrap();
        if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
            text.push_str(piece);
        }
    };
    assert_eq!(text, "21 degrees");
    assert_eq!(header(&done, "x-warden-tool-rounds").as_deref(), Some("2"));
    assert_eq!(upstream.requests().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streaming_client_gets_only_its_own_calls_of_a_mixed_answer() {
    let nats = NatsServer::start();
    let _service = tool_service(&nats, false).await;
    let upstream = Scripted::start(vec![calls(&[
        ("call_srv", "get_weather", json!({"city": "Oslo"})),
        ("call_cli", "read_file", json!({"path": "a.txt"})),
    ])]);
    let gw = gateway(&nats, &upstream, "");
    let mut request = chat_body(true);
    request["tools"] = json!([{"type": "function", "function": {"name": "read_file"}}]);
    let response = post_chat(&gw, &request).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.contains(": x-warden-tool-rounds 1\n"), "{text}");
    let chunks: Vec<Value> = crate::support::sse_data(&text)
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let ids: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .filter_map(|c| c["id"].as_str())
        .collect();
    assert_eq!(ids, ["call_cli"], "only the client's call: {text}");
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls"),
        "{text}"
    );
    let metrics = metrics_text(&gw).await;
    assert!(
        metrics.contains(r#"warden_tool_calls_total{tool="get_weather",outcome="ok"} 1"#),
        "the server's call ran: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_messages_client_with_its_own_tool_gets_its_call_and_ours_come_back_on_the_follow_up() {
    let nats = NatsServer::start();
    let _service = tool_service(&nats, false).await;
    let upstream = Scripted::start(vec![
        calls(&[
            ("call_srv", "get_weather", json!({"city": "Oslo"})),
            ("call_cli", "read_file", json!({"path": "a.txt"})),
        ]),
        says("the file says hi and it is 21 degrees"),
    ]);
    let gw = gateway(&nats, &upstream, "");
    let tools = json!([{"name": "read_file", "description": "reads a file",
        "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}]);
    let user = json!({"role": "user", "content": "read a.txt and tell me the weather"});
    let messages = |extra: Vec<Value>| {
        let mut all = vec![user.clone()];
        all.extend(extra);
        json!({"model": "gpt-5", "max_tokens": 100, "tools": tools, "messages": all})
    };
    let post_messages = |body: Value| {
        client()
            .post(format!("{}/v1/messages", gw.url()))
            .json(&body)
            .send()
    };
    let response = post_messages(messages(vec![])).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let uses: Vec<&Value> = body["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "tool_use")
        .collect();
    assert_eq!(uses.len(), 1, "only the client's call: {body}");
    assert_eq!(uses[0]["name"], "read_file");
    assert_eq!(body["stop_reason"], "tool_use");
    let id = uses[0]["id"].as_str().unwrap().to_string();

    // The client runs read_file and comes back with its result.
    let follow_up = messages(vec![
        json!({"role": "assistant", "content": body["content"]}),
        json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": id, "content": "hi"}]}),
    ]);
    let response = post_messages(follow_up).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["content"][0]["text"],
        "the file says hi and it is 21 degrees"
    );
    let requests = upstream.requests();
    assert_eq!(requests.len(), 2);
    let sent = requests[1]["messages"].as_array().unwrap();
    let assistant = sent.iter().find(|m| m["role"] == "assistant").unwrap();
    let names: Vec<&str> = assistant["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["get_weather", "read_file"],
        "ours put back: {sent:?}"
    );
    let results: Vec<&Value> = sent.iter().filter(|m| m["role"] == "tool").collect();
    assert_eq!(results.len(), 2, "{sent:?}");
    assert_eq!(results[0]["tool_call_id"], "call_srv");
    assert_eq!(
        serde_json::from_str::<Value>(results[0]["content"].as_str().unwrap()).unwrap(),
        json!({"city": "Oslo", "temp": 21})
    );
    assert_eq!(results[1]["tool_call_id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_responses_client_with_its_own_tool_gets_its_call_and_ours_come_back_on_the_follow_up() {
    let nats = NatsServer::start();
    let _service = tool_service(&nats, false).await;
    let upstream = Scripted::start(vec![
        calls(&[
            ("call_srv", "get_weather", json!({"city": "Oslo"})),
            ("call_cli", "read_file", json!({"path": "a.txt"})),
        ]),
        says("the file says hi and it is 21 degrees"),
    ]);
    let gw = gateway(&nats, &upstream, "");
    let tools = json!([{"type": "function", "name": "read_file",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}]);
    let user = json!({"role": "user", "content": "read a.txt and tell me the weather"});
    let post_responses = |input: Vec<Value>| {
        client()
            .post(format!("{}/v1/responses", gw.url()))
            .json(&json!({"model": "gpt-5", "tools": tools, "input": input}))
            .send()
    };
    let response = post_responses(vec![user.clone()]).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let calls: Vec<Value> = body["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["type"] == "function_call")
        .cloned()
        .collect();
    assert_eq!(calls.len(), 1, "only the client's call: {body}");
    assert_eq!(calls[0]["name"], "read_file");
    let call_id = calls[0]["call_id"].as_str().unwrap().to_string();

    // The client runs read_file and comes back with the whole conversation.
    let response = post_responses(vec![
        user,
        calls[0].clone(),
        json!({"type": "function_call_output", "call_id": call_id, "output": "hi"}),
    ])
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let requests = upstream.requests();
    assert_eq!(requests.len(), 2);
    let sent = requests[1]["messages"].as_array().unwrap();
    let assistant = sent.iter().find(|m| m["role"] == "assistant").unwrap();
    let names: Vec<&str> = assistant["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["get_weather", "read_file"],
        "ours put back: {sent:?}"
    );
    let results: Vec<&Value> = sent.iter().filter(|m| m["role"] == "tool").collect();
    assert_eq!(results.len(), 2, "{sent:?}");
    assert_eq!(results[0]["tool_call_id"], "call_srv");
    assert_eq!(results[1]["tool_call_id"], call_id.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_responses_api_provider_runs_the_loop_through_the_translation() {
    use crate::support::responses_upstream::{Answer, ResponsesUpstream};
    let nats = NatsServer::start();
    let _service = tool_service(&nats, false).await;
    // It calls get_weather {"city":"Paris"} every time: the second round is the limit.
    let upstream = ResponsesUpstream::start(Answer::ToolCall);
    let home = TestHome::new();
    home.config(&format!(
        "[upstream]\nurl = \"{}\"\napi = \"responses\"\nattempts = 1\n\n[nats]\nurl = \"{}\"\n\n[tools]\ntimeout = 1\nmax_rounds = 2\n{DECLARE}",
        upstream.url(),
        nats.url()
    ));
    let gw = InProcess::start(&home, &[]);
    let response = post_chat(&gw, &chat_body(false)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "x-warden-tool-rounds").as_deref(),
        Some("2")
    );
    assert_eq!(
        header(&response, "x-warden-tool-limit").as_deref(),
        Some("reached")
    );
    let body: Value = response.json().await.unwrap();
    assert!(
        body["choices"][0]["message"].get("tool_calls").is_none(),
        "{body}"
    );
    assert_eq!(upstream.hits(), 2);
    let input = upstream.last_body()["input"].clone();
    let output = input
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["type"] == "function_call_output")
        .unwrap_or_else(|| panic!("the tool's result went to the provider: {input}"));
    assert_eq!(
        serde_json::from_str::<Value>(output["output"].as_str().unwrap()).unwrap(),
        json!({"city": "Paris", "temp": 21})
    );
    assert!(
        upstream.last_body()["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "get_weather"),
        "offered in the Responses shape"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jetstream_job_gets_the_tools_too() {
    let nats = NatsServer::start();
    let _service = tool_service(&nats, false).await;
    let upstream = Scripted::start(vec![
        calls(&[("call_1", "get_weather", json!({"city": "Oslo"}))]),
        says("21 degrees"),
    ]);
    let home = TestHome::new();
    home.config(&format!(
        "[upstream]\nurl = \"{}\"\nattempts = 1\n\n[nats]\nurl = \"{}\"\njetstream = true\n\n[tools]\ntimeout = 1\n{DECLARE}",
        upstream.url,
        nats.url()
    ));
    let _gw = InProcess::start(&home, &[]);
    let nc = nats.client().await;
    let js = async_nats::jetstream::new(nc.clone());
    let deadline = std::time::Instant::now() + PATIENCE;
    while js.get_stream("WARDEN").await.is_err() {
        assert!(std::time::Instant::now() < deadline, "no WARDEN stream");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut answers = nc.subscribe("answers.tools").await.unwrap();
    nc.flush().await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Warden-Reply-To", "answers.tools");
    js.publish_with_headers(
        "warden.jobs.chat",
        headers,
        Bytes::from(chat_body(false).to_string()),
    )
    .await
    .unwrap()
    .await
    .expect("the job stream stores the job");
    let answer = tokio::time::timeout(PATIENCE, answers.next())
        .await
        .expect("the job's answer in time")
        .unwrap();
    let body: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"], "21 degrees",
        "{body}"
    );
    let rounds = answer
        .headers
        .as_ref()
        .and_then(|h| h.get("x-warden-tool-rounds"))
        .map(|v| v.as_str().to_string());
    assert_eq!(rounds.as_deref(), Some("2"));
    assert_eq!(
        tool_results(&upstream.requests()[1]),
        vec![("call_1".to_string(), json!({"city": "Oslo", "temp": 21}))]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_anthropic_provider_runs_the_loop_through_the_translation() {
    let nats = NatsServer::start();
    let _service = tool_service(&nats, false).await;
    // A Messages API that asks for get_weather, then answers in text.
    let seen: Arc<Mutex<Vec<Value>>> = Arc::new(Mutex::new(Vec::new()));
    let requests = seen.clone();
    let app = Router::new().route(
        "/v1/messages",
        post(move |body: Bytes| {
            let requests = requests.clone();
            async move {
                let request: Value = serde_json::from_slice(&body).unwrap();
                let n = {
                    let mut requests = requests.lock().unwrap();
                    requests.push(request);
                    requests.len()
                };
                let content = if n == 1 {
                    json!([{"type": "tool_use", "id": "toolu_01", "name": "get_weather",
                            "input": {"city": "Oslo"}}])
                } else {
                    json!([{"type": "text", "text": "21 degrees"}])
                };
                axum::Json(json!({"id": format!("msg_{n}"), "type": "message",
                    "role": "assistant", "model": "claude-x", "content": content,
                    "stop_reason": if n == 1 { "tool_use" } else { "end_turn" },
                    "stop_sequence": null,
                    "usage": {"input_tokens": 10, "output_tokens": 3}}))
            }
        }),
    );
    let url = format!("http://{}/v1", serve(app));
    let home = TestHome::new();
    home.config(&format!(
        "[upstream]\nurl = \"{url}\"\napi = \"anthropic\"\napi_key_env = \"ANTHROPIC_API_KEY\"\nattempts = 1\n\n[nats]\nurl = \"{}\"\n\n[tools]\ntimeout = 1\n{DECLARE}",
        nats.url()
    ));
    let gw = InProcess::start(&home, &[("ANTHROPIC_API_KEY", "sk-ant-test")]);
    let response = post_chat(&gw, &chat_body(false)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "x-warden-tool-rounds").as_deref(),
        Some("2")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"], "21 degrees",
        "{body}"
    );
    assert_eq!(body["usage"]["prompt_tokens"], 20, "both rounds: {body}");
    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 2);
    assert!(
        requests[0]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "get_weather" && t["input_schema"]["required"] == json!(["city"])),
        "offered in the Messages shape: {}",
        requests[0]["tools"]
    );
    // The result reaches Claude as a tool_result block after its tool_use.
    let result = requests[1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .find(|block| block["type"] == "tool_result")
        .cloned()
        .unwrap_or_else(|| panic!("no tool_result: {}", requests[1]));
    assert_eq!(result["tool_use_id"], "toolu_01");
    let content = match &result["content"] {
        Value::String(text) => text.clone(),
        blocks => blocks[0]["text"].as_str().unwrap().to_string(),
    };
    assert_eq!(
        serde_json::from_str::<Value>(&content).unwrap(),
        json!({"city": "Oslo", "temp": 21})
    );
}
