//! The server-tool loop on Chat Completions: model call, server tool calls
//! (concurrently, over NATS), results appended, model called again; at most
//! `tools.max_rounds` model calls. A streaming client gets SSE keep-alive
//! comments while tools run, then the last answer as chunks.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde_json::{Map, Value, json};

use super::Tools;
use super::sse::{KEEP_ALIVE, collect, completion_chunks};
use crate::api::openai::ApiError;
use crate::telemetry::SpanParent;
use crate::upstream::{ChatCall, Reply};

/// One model call: the gateway's routed, admitted call to a provider.
pub type ModelCall =
    Arc<dyn Fn(ChatCall) -> BoxFuture<'static, Result<Reply, ApiError>> + Send + Sync>;

/// How often a streaming client gets a keep-alive comment while tools run.
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(5);

/// Serves a Chat Completions request with the server tools: `call` is the
/// admitted request (its body parsed again here), `model` makes one model
/// call. Without a server tool to offer (all overridden by the client's own)
/// it is one plain call.
pub async fn run_chat(
    tools: Arc<Tools>,
    model: ModelCall,
    call: ChatCall,
    trace: Option<SpanParent>,
) -> Result<Reply, ApiError> {
    let Ok(Value::Object(mut request)) = serde_json::from_slice::<Value>(&call.body) else {
        return model(call).await;
    };
    if let Some(Value::Array(messages)) = request.get_mut("messages") {
        tools.pending.restore(messages);
    }
    let offered = tools.offer(&mut request);
    if offered.is_empty() {
        let body = Bytes::from(Value::Object(request).to_string());
        return model(ChatCall { body, ..call }).await;
    }
    let client_stream = call.stream;
    let include_usage = call.include_usage;
    request.insert("stream".into(), json!(false));
    request.remove("stream_options");
    let mut state = Loop {
        tools,
        model,
        call,
        request,
        offered,
        trace,
        round: 0,
        ran: false,
    };
    // The first model call before any answer goes out: its errors are the
    // request's, and an answer without server calls is served as it is.
    let first = state.round().await?;
    if !client_stream {
        let completion = match first {
            Step::Final(c) => c,
            Step::Again => loop {
                if let Step::Final(c) = state.round().await? {
                    break c;
                }
            },
        };
        let completion = state.finish(completion);
        return Ok(Reply::Complete(Bytes::from(completion.to_string())));
    }
    if let Step::Final(completion) = first {
        let completion = state.finish(completion);
        let frames = completion_chunks(&completion, include_usage);
        return Ok(Reply::Stream(Box::pin(futures_util::stream::iter(frames))));
    }
    // Tools run: the answer starts now, keep-alive comments until the last round.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    tokio::spawn(async move {
        let outcome = loop {
            let step = {
                let round = state.round();
                tokio::pin!(round);
                let mut ticker = tokio::time::interval(KEEP_ALIVE_EVERY);
                ticker.tick().await;
                loop {
                    tokio::select! {
                        step = &mut round => break step,
                        _ = ticker.tick() => {
                            if tx.send(Bytes::from_static(KEEP_ALIVE)).await.is_err() {
                                return; // the client went away: no more rounds
                            }
                        }
                        () = tx.closed() => return,
                    }
                }
            };
            match step {
                Ok(Step::Again) => continue,
                Ok(Step::Final(c)) => break Ok(c),
                Err(e) => break Err(e),
            }
        };
        let frames = match outcome {
            Ok(completion) => {
                let completion = state.finish(completion);
                let rounds = state.call.stats.tool_rounds.load(Ordering::Relaxed);
                let mut frames = vec![Bytes::from(format!(
                    ": {} {rounds}\n\n",
                    super::ROUNDS_HEADER
                ))];
                frames.extend(completion_chunks(&completion, include_usage));
                frames
            }
            Err(e) => vec![Bytes::from(e.sse_frame())],
        };
        for frame in frames {
            if tx.send(frame).await.is_err() {
                return;
            }
        }
    });
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|frame| (frame, rx))
    });
    Ok(Reply::Stream(Box::pin(frames)))
}

enum Step {
    /// Server tools ran: call the model again.
    Again,
    /// The answer for the client.
    Final(Value),
}

struct Loop {
    tools: Arc<Tools>,
    model: ModelCall,
    /// The request as admitted: model, stats and headers of every round.
    call: ChatCall,
    /// The conversation so far, sent on each round.
    request: Map<String, Value>,
    offered: HashSet<String>,
    trace: Option<SpanParent>,
    round: u32,
    /// Whether any server tool ran.
    ran: bool,
}

impl Loop {
    async fn round(&mut self) -> Result<Step, ApiError> {
        self.round += 1;
        if self.round > 1 {
            self.call.stats.bank_usage();
        }
        let body = Bytes::from(serde_json::to_vec(&self.request).expect("JSON serialises"));
        let call = ChatCall {
            body,
            stream: false,
            include_usage: false,
            ..self.call.clone()
        };
        let mut completion = match (self.model)(call).await? {
            Reply::Complete(body) => serde_json::from_slice::<Value>(&body).map_err(|_| {
                ApiError::bad_gateway(
                    "the upstream answered something that is not a chat.completion",
                )
            })?,
            Reply::Stream(frames) => collect(frames).await?,
        };
        let Some(message) = completion
            .pointer_mut("/choices/0/message")
            .and_then(Value::as_object_mut)
        else {
            return Ok(Step::Final(completion));
        };
        let calls: Vec<Value> = message
            .get("tool_calls")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let is_server = |c: &Value| {
            c.pointer("/function/name")
                .and_then(Value::as_str)
                .is_some_and(|n| self.offered.contains(n))
        };
        let (server, client): (Vec<Value>, Vec<Value>) = calls.iter().cloned().partition(is_server);
        if server.is_empty() {
            return Ok(Step::Final(completion));
        }
        if self.round >= self.tools.max_rounds {
            // The limit: the answer without the calls that will not run.
            self.call
                .stats
                .tool_limit_reached
                .store(true, Ordering::Relaxed);
            if client.is_empty() {
                message.remove("tool_calls");
                if let Some(reason) = completion.pointer_mut("/choices/0/finish_reason") {
                    if *reason == "tool_calls" {
                        *reason = json!("stop");
                    }
                }
            } else {
                message.insert("tool_calls".into(), Value::Array(client));
            }
            return Ok(Step::Final(completion));
        }
        let results = self.run_calls(&server).await;
        self.ran = true;
        let mut assistant = message.clone();
        assistant.entry("content").or_insert(Value::Null);
        if !client.is_empty() {
            // Mixed: the client runs its own; ours are kept for its follow-up.
            let ids = client
                .iter()
                .filter_map(|c| c["id"].as_str().map(str::to_string))
                .collect();
            self.tools.pending.keep(ids, calls, results);
            message.insert("tool_calls".into(), Value::Array(client));
            return Ok(Step::Final(completion));
        }
        if let Some(Value::Array(messages)) = self.request.get_mut("messages") {
            messages.push(Value::Object(assistant));
            messages.extend(results);
        }
        Ok(Step::Again)
    }

    /// Runs the server calls of one answer at once; their tool messages, in order.
    async fn run_calls(&self, calls: &[Value]) -> Vec<Value> {
        let deadline = self.call.stats.deadline.get().map(|d| d.at.into_std());
        let runs = calls.iter().enumerate().map(|(i, call)| {
            let id = call["id"].as_str().unwrap_or_default().to_string();
            let name = call
                .pointer("/function/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let arguments = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or("{}")
                .to_string();
            let tools = self.tools.clone();
            let trace = self.trace.clone();
            async move {
                let content = if i >= super::MAX_CALLS_PER_ANSWER {
                    json!({"error": format!(
                        "more than {} server tool calls in one answer: this one did not run",
                        super::MAX_CALLS_PER_ANSWER
                    )})
                    .to_string()
                } else {
                    tools
                        .caller
                        .call(&name, &id, &arguments, deadline, trace.as_ref())
                        .await
                        .content
                };
                json!({"role": "tool", "tool_call_id": id, "content": content})
            }
        });
        futures_util::future::join_all(runs).await
    }

    /// The answer for the client: when tools ran, the rounds recorded and the
    /// usage of every round in `usage`.
    fn finish(&self, mut completion: Value) -> Value {
        if self.ran {
            let stats = &self.call.stats;
            stats.tool_rounds.store(self.round, Ordering::Relaxed);
            let usage = stats.usage();
            if completion.get("usage").is_some_and(Value::is_object) {
                completion["usage"]["prompt_tokens"] = json!(usage.prompt_tokens);
                completion["usage"]["completion_tokens"] = json!(usage.completion_tokens);
                completion["usage"]["total_tokens"] =
                    json!(usage.prompt_tokens + usage.completion_tokens);
            }
        } else if self.call.stats.tool_limit_reached.load(Ordering::Relaxed) {
            self.call
                .stats
                .tool_rounds
                .store(self.round, Ordering::Relaxed);
        }
        completion
    }
}
