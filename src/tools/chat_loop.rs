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
/// call, `owner` names the caller (its key's name; "" when anyone may call):
/// server calls kept from a mixed answer go back only into the same caller's
/// follow-up. Without a server tool to offer (all overridden by the client's
/// own) it is one plain call.
pub async fn run_chat(
    tools: Arc<Tools>,
    model: ModelCall,
    call: ChatCall,
    trace: Option<SpanParent>,
    owner: String,
) -> Result<Reply, ApiError> {
    let Ok(Value::Object(mut request)) = serde_json::from_slice::<Value>(&call.body) else {
        return model(call).await;
    };
    if let Some(Value::Array(messages)) = request.get_mut("messages") {
        tools.pending.restore(&owner, messages);
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
        owner,
        round: 0,
        ran: false,
    };
    // The first model call before any answer goes out: its errors are the
    // request's, and an answer without server calls is served as it is.
    let calls = match state.ask().await? {
        Step::Final(completion) => {
            let completion = state.finish(completion);
            if !client_stream {
                return Ok(Reply::Complete(Bytes::from(completion.to_string())));
            }
            let frames = completion_chunks(&completion, include_usage);
            return Ok(Reply::Stream(Box::pin(futures_util::stream::iter(frames))));
        }
        Step::Tools(calls) => calls,
    };
    if !client_stream {
        let completion = state.answer(calls).await?;
        let completion = state.finish(completion);
        return Ok(Reply::Complete(Bytes::from(completion.to_string())));
    }
    // Tools run: the answer starts now, keep-alive comments until the last round.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    tokio::spawn(async move {
        let mut next = Some(calls);
        let outcome = loop {
            if let Some(calls) = next.take() {
                match keep_alive(&tx, state.run(calls)).await {
                    None => return, // the client went away: no more rounds
                    Some(Some(answer)) => break Ok(answer),
                    Some(None) => {}
                }
            }
            match keep_alive(&tx, state.ask()).await {
                None => return,
                Some(Ok(Step::Final(completion))) => break Ok(completion),
                Some(Ok(Step::Tools(calls))) => next = Some(calls),
                Some(Err(e)) => break Err(e),
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
                if state.call.stats.tool_limit_reached.load(Ordering::Relaxed) {
                    frames.push(Bytes::from(format!(
                        ": {} reached\n\n",
                        super::LIMIT_HEADER
                    )));
                }
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

/// Sends `: keep-alive` comments to a streaming client while `work` runs:
/// its output, or `None` when the client went away (then `work` is dropped).
async fn keep_alive<T>(
    tx: &tokio::sync::mpsc::Sender<Bytes>,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::pin!(work);
    let mut ticker = tokio::time::interval(KEEP_ALIVE_EVERY);
    ticker.tick().await;
    loop {
        tokio::select! {
            done = &mut work => return Some(done),
            _ = ticker.tick() => {
                if tx.send(Bytes::from_static(KEEP_ALIVE)).await.is_err() {
                    return None;
                }
            }
            () = tx.closed() => return None,
        }
    }
}

enum Step {
    /// The model called server tools: run them.
    Tools(Calls),
    /// The answer for the client.
    Final(Value),
}

/// A model answer that calls server tools, its calls split by who runs them.
struct Calls {
    completion: Value,
    /// Every call of the answer, in its order.
    all: Vec<Value>,
    server: Vec<Value>,
    client: Vec<Value>,
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
    /// Who asked: what this request keeps is for its follow-up only.
    owner: String,
    round: u32,
    /// Whether any server tool ran.
    ran: bool,
}

impl Loop {
    /// One model call: the answer for the client, or server calls to run.
    /// At `max_rounds` the answer is final, without its server calls.
    async fn ask(&mut self) -> Result<Step, ApiError> {
        self.round += 1;
        if self.round > 1 {
            self.call.stats.bank_usage();
            // Tools used up the request's time: say so, rather than let the
            // provider's next call fail (and be blamed) for it.
            if let Some(deadline) = self.call.stats.deadline.get().filter(|d| d.passed()) {
                return Err(ApiError::gateway_timeout(format!(
                    "the request's deadline ({} s, upstream.timeout) passed while server tools ran",
                    deadline.total.as_secs()
                )));
            }
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
        let all: Vec<Value> = message
            .get("tool_calls")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let is_server = |c: &Value| {
            c.pointer("/function/name")
                .and_then(Value::as_str)
                .is_some_and(|n| self.offered.contains(n))
        };
        let (server, client): (Vec<Value>, Vec<Value>) = all.iter().cloned().partition(is_server);
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
        Ok(Step::Tools(Calls {
            completion,
            all,
            server,
            client,
        }))
    }

    /// Runs one answer's server calls. `None`: the results are in the
    /// conversation, call the model again. Mixed with client calls: the answer
    /// for the client, with its own calls only (ours are kept for its follow-up).
    async fn run(&mut self, calls: Calls) -> Option<Value> {
        let results = self.run_calls(&calls.server).await;
        self.ran = true;
        let mut completion = calls.completion;
        let Some(message) = completion
            .pointer_mut("/choices/0/message")
            .and_then(Value::as_object_mut)
        else {
            return Some(completion);
        };
        let mut assistant = message.clone();
        assistant.entry("content").or_insert(Value::Null);
        if !calls.client.is_empty() {
            let ids = calls
                .client
                .iter()
                .filter_map(|c| c["id"].as_str().map(str::to_string))
                .collect();
            self.tools
                .pending
                .keep(&self.owner, ids, calls.all, results);
            message.insert("tool_calls".into(), Value::Array(calls.client));
            return Some(completion);
        }
        if let Some(Value::Array(messages)) = self.request.get_mut("messages") {
            messages.push(Value::Object(assistant));
            messages.extend(results);
        }
        None
    }

    /// Runs `calls` and goes on (model call, server calls, …) to the answer
    /// for the client.
    async fn answer(&mut self, mut calls: Calls) -> Result<Value, ApiError> {
        loop {
            if let Some(answer) = self.run(calls).await {
                return Ok(answer);
            }
            match self.ask().await? {
                Step::Final(completion) => return Ok(completion),
                Step::Tools(next) => calls = next,
            }
        }
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
