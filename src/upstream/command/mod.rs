//! Agent CLIs as providers (`api = "command"`, docs/contract.md §19): each request runs
//! the CLI once and its printed answer becomes the response.
//!
//! - [`presets`]: the command line of each known CLI (its own tools off,
//!   streaming JSON on) and how to install it.
//! - [`prompt`]: the conversation rendered as the prompt written to stdin.
//! - [`format`]: the CLI's output parsed, line by line as it arrives.
//! - [`process`]: the process group: spawned with a parent-death signal,
//!   killed as a whole when the request ends, reaped, its directory removed.
//!
//! One request, one process: in a fresh empty temporary directory, with an
//! environment of PATH, HOME, LANG, TMPDIR, the provider's `env` variables and
//! `WARDEN_REQUEST_ID`, nothing else. A streamed answer goes out chunk by
//! chunk as the CLI prints it. Before the first answer text, a failure (exit
//! status, an error event, no answer at all) is a 502 the router fails over
//! from; after it, the stream ends with an error event. Client gone, `timeout`
//! or shutdown: the group is killed. Output is bounded by
//! `max_response_bytes` (all of it) and `max_event_bytes` (one line).

pub(crate) mod format;
pub mod presets;
pub(crate) mod process;
pub(crate) mod prompt;

use std::collections::VecDeque;
use std::ffi::OsString;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::translated::{fresh_id, request_json, responses_over_chat};
use super::{ChatCall, ExchangeStats, Reply, ResponsesCall, unix_now};
use crate::api::openai::{ApiError, Usage};
use crate::home::config::{CommandSettings, Config, ProviderSettings};
use format::{Event, Parser};
pub use process::Registry;

/// How many bytes of the CLI's stderr are kept (its last lines).
const STDERR_TAIL_BYTES: usize = 2048;
/// How many of its last stderr lines an error message quotes.
const STDERR_TAIL_LINES: usize = 10;
/// After the CLI exited, how long its stderr may take to reach its end.
const STDERR_SETTLE: Duration = Duration::from_secs(2);
/// One read of its stdout.
const READ_CHUNK: usize = 16 * 1024;

pub struct CommandUpstream {
    name: String,
    invocation: presets::Invocation,
    /// The provider's `env` variables that are set, with their values.
    env: Vec<(String, OsString)>,
    /// Values never shown in a log line or an error (env values, keys, tokens).
    secrets: Arc<[String]>,
    /// The provider's exact model names: these pass no model to the CLI.
    models: Vec<String>,
    timeout: Duration,
    max_response_bytes: usize,
    max_event_bytes: usize,
    registry: Registry,
}

impl CommandUpstream {
    pub fn new(
        provider: &ProviderSettings,
        command: &CommandSettings,
        config: &Config,
    ) -> CommandUpstream {
        let env: Vec<(String, OsString)> = command
            .env
            .iter()
            .filter_map(|var| {
                config
                    .env
                    .get(var)
                    .map(|v| (var.clone(), OsString::from(v)))
            })
            .collect();
        let mut secrets: Vec<String> = env
            .iter()
            .filter_map(|(_, v)| v.to_str().map(str::to_string))
            .collect();
        secrets.extend(config.auth_token());
        secrets.extend(config.upstream_api_key());
        for other in config.provider_settings() {
            secrets.extend(config.provider_api_key(&other));
        }
        // Short values would blank out ordinary words.
        secrets.retain(|s| s.len() >= 4);
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        CommandUpstream {
            name: provider.name.clone(),
            invocation: presets::Invocation::new(command),
            env,
            secrets: Arc::from(secrets),
            models: provider
                .models
                .iter()
                .filter(|m| !m.ends_with('*'))
                .cloned()
                .collect(),
            timeout: provider.timeout,
            max_response_bytes: config.upstream.max_response_bytes,
            max_event_bytes: config.upstream.max_event_bytes,
            registry: Registry::default(),
        }
    }

    /// The processes this provider is running.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// What the start-up log line shows for it.
    pub fn display(&self) -> String {
        format!("command:{}", self.invocation.program())
    }

    /// The model given to the CLI for a routed model name: the part after
    /// `/`; none for one of the provider's own exact names (the CLI's default);
    /// else the name itself (e.g. `PROVIDER/MODEL` already rewritten to `MODEL`).
    fn cli_model<'a>(&self, model: &'a str) -> Option<&'a str> {
        if let Some((_, rest)) = model.split_once('/') {
            return (!rest.is_empty()).then_some(rest);
        }
        if model.is_empty() || model == self.name || self.models.iter().any(|m| m == model) {
            return None;
        }
        Some(model)
    }

    /// A Chat Completions request, answered by one run of the CLI.
    pub async fn chat(&self, call: ChatCall) -> Result<Reply, ApiError> {
        let request = request_json(&call.body, &call.model)?;
        let prompt = prompt::render(&request)?;
        let request_id = call
            .headers
            .get(super::forward::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let deadline = Instant::now() + self.timeout;
        let started = std::time::Instant::now();
        let mut run = self.start(&call.model, prompt, &request_id).await?;
        // Wait for the first answer text: a failure before it fails over.
        let mut pending: VecDeque<Event> = VecDeque::new();
        let mut first_text = false;
        let mut finished = false;
        while !first_text && !finished {
            let mut events = Vec::new();
            let more = match tokio::time::timeout_at(deadline, run.next(&mut events)).await {
                Ok(Ok(more)) => more,
                Ok(Err(failure)) => return Err(self.fail(&mut run, failure).await),
                Err(_) => return Err(self.fail(&mut run, Failure::Timeout).await),
            };
            for event in events {
                match event {
                    Event::Failed(message) => {
                        return Err(self.fail(&mut run, Failure::Reported(message)).await);
                    }
                    Event::Text(_) => first_text = true,
                    Event::Done => finished = true,
                    Event::Usage(..) => {}
                }
                pending.push_back(event);
            }
            if !more {
                finished = true;
            }
        }
        call.stats.add_upstream_time(started.elapsed());
        if !first_text {
            return Err(self.fail(&mut run, Failure::NoAnswer).await);
        }
        let answer = Answer {
            run,
            pending,
            finished,
            deadline,
            stats: call.stats.clone(),
            id: fresh_id("chatcmpl-"),
            model: call.model.clone(),
            created: unix_now(),
            name: self.name.clone(),
            timeout: self.timeout,
            secrets: self.secrets.clone(),
        };
        if call.stream {
            return Ok(Reply::Stream(answer.stream(call.include_usage)));
        }
        answer.complete().await.map(Reply::Complete)
    }

    /// A Responses API request, answered through [`CommandUpstream::chat`].
    pub async fn responses(&self, call: ResponsesCall) -> Result<Reply, ApiError> {
        responses_over_chat(call, |chat| self.chat(chat)).await
    }

    /// Spawns the CLI for one request and writes the prompt to its stdin.
    async fn start(&self, model: &str, prompt: String, request_id: &str) -> Result<Run, ApiError> {
        let argv = self.invocation.argv(self.cli_model(model), model);
        let workdir = tempfile::Builder::new()
            .prefix("warden-cli-")
            .tempdir()
            .map_err(|e| {
                ApiError::bad_gateway(format!(
                    "provider {:?}: cannot create a working directory for the CLI: {e}",
                    self.name
                ))
            })?;
        let mut command = std::process::Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .current_dir(workdir.path())
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for var in presets::PASSED_THROUGH {
            if let Some(value) = std::env::var_os(var) {
                command.env(var, value);
            }
        }
        for (var, value) in &self.env {
            command.env(var, value);
        }
        command.env("WARDEN_REQUEST_ID", request_id);
        let (mut child, group) = process::spawn(command, workdir, &self.registry)
            .await
            .map_err(|e| {
                let hint = if e.kind() == std::io::ErrorKind::NotFound {
                    format!(
                        ": {:?} is not on PATH ({})",
                        argv[0],
                        self.invocation.install_hint()
                    )
                } else {
                    format!(": {e}")
                };
                tracing::warn!(provider = %self.name, program = %argv[0], error = %e, "cannot start the CLI");
                ApiError::bad_gateway(format!("provider {:?}: cannot run the CLI{hint}", self.name))
            })?;
        tracing::debug!(provider = %self.name, pid = group.pid(), program = %argv[0], "CLI started");
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(ApiError::bad_gateway("the CLI's pipes are missing"));
        };
        let pipes = (
            tokio::process::ChildStdin::from_std(stdin),
            tokio::process::ChildStdout::from_std(stdout),
            tokio::process::ChildStderr::from_std(stderr),
        );
        let (Ok(mut stdin), Ok(stdout), Ok(mut stderr)) = pipes else {
            return Err(ApiError::bad_gateway("cannot read the CLI's pipes"));
        };
        let writer = tokio::spawn(async move {
            // A CLI that exits without reading its stdin is not an error here.
            let _ = stdin.write_all(prompt.as_bytes()).await;
            let _ = stdin.shutdown().await;
        });
        let tail = Arc::new(Mutex::new(Tail::default()));
        let tail_writer = tail.clone();
        let stderr_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                match stderr.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if let Ok(mut t) = tail_writer.lock() {
                            t.push(&buf[..n]);
                        }
                    }
                }
            }
        });
        let mut group = group;
        let exited = group.exited.take();
        Ok(Run {
            group,
            stdout,
            writer,
            stderr_task,
            tail,
            exited,
            parser: Parser::new(self.invocation.format()),
            line: Vec::new(),
            utf8_rest: Vec::new(),
            total: 0,
            max_total: self.max_response_bytes,
            max_line: self.max_event_bytes,
            done: false,
            program: argv[0].clone(),
        })
    }

    /// Ends a run that failed before answering: kills its group, logs the
    /// redacted end of its stderr and returns the error the router sees.
    async fn fail(&self, run: &mut Run, failure: Failure) -> ApiError {
        run.group.kill();
        let tail = redact(&self.secrets, &run.stderr_tail().await);
        let error = failure.error(
            &self.name,
            &run.program,
            &tail,
            self.timeout,
            self.max_response_bytes,
            self.max_event_bytes,
        );
        tracing::warn!(provider = %self.name, error = %error.message, "the CLI failed before answering");
        error
    }
}

/// `text` with every secret value replaced by `***` and URL passwords hidden.
fn redact(secrets: &[String], text: &str) -> String {
    let mut out = crate::support::redact::urls_in(text).into_owned();
    for secret in secrets {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "***");
        }
    }
    out
}

/// Why a run ended without a (complete) answer.
#[derive(Debug)]
enum Failure {
    Exit(ExitStatus),
    Reported(String),
    NoAnswer,
    Timeout,
    TooLarge,
    LineTooLarge,
}

impl Failure {
    fn error(
        &self,
        name: &str,
        program: &str,
        stderr: &str,
        timeout: Duration,
        max_total: usize,
        max_line: usize,
    ) -> ApiError {
        let what = match self {
            Failure::Exit(status) => match (
                status.code(),
                std::os::unix::process::ExitStatusExt::signal(status),
            ) {
                (Some(code), _) => format!("{program} exited with status {code}"),
                (None, Some(signal)) => format!("{program} was killed by signal {signal}"),
                _ => format!("{program} ended ({status})"),
            },
            Failure::Reported(message) => format!(
                "{program} reported an error: {}",
                crate::support::redact::truncate(message, 512)
            ),
            Failure::NoAnswer => format!("{program} exited without answering"),
            Failure::Timeout => format!(
                "{program} did not finish within {} s (the provider's timeout); it was killed",
                timeout.as_secs()
            ),
            Failure::TooLarge => format!(
                "{program} printed more than {max_total} bytes (upstream.max_response_bytes); it was killed"
            ),
            Failure::LineTooLarge => format!(
                "{program} printed a line longer than {max_line} bytes (upstream.max_event_bytes); it was killed"
            ),
        };
        let message = if stderr.is_empty() {
            format!("provider {name:?}: {what}")
        } else {
            format!("provider {name:?}: {what}; its stderr ended with: {stderr}")
        };
        if matches!(self, Failure::Timeout) {
            ApiError::gateway_timeout(message)
        } else {
            ApiError::bad_gateway(message)
        }
    }
}

/// The last bytes the CLI wrote to stderr.
#[derive(Default)]
struct Tail {
    bytes: VecDeque<u8>,
}

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        let keep = chunk.len().min(STDERR_TAIL_BYTES);
        self.bytes.extend(&chunk[chunk.len() - keep..]);
        while self.bytes.len() > STDERR_TAIL_BYTES {
            self.bytes.pop_front();
        }
    }

    /// Its last lines, control characters escaped, joined by ` | `.
    fn lines(&self) -> String {
        let bytes: Vec<u8> = self.bytes.iter().copied().collect();
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let start = lines.len().saturating_sub(STDERR_TAIL_LINES);
        let mut out = String::new();
        for (i, line) in lines[start..].iter().enumerate() {
            if i > 0 {
                out.push_str(" | ");
            }
            let _ = crate::support::redact::escape_controls(line, &mut out);
        }
        out
    }
}

/// One running CLI and what has been read of it.
struct Run {
    group: process::Group,
    stdout: tokio::process::ChildStdout,
    writer: tokio::task::JoinHandle<()>,
    stderr_task: tokio::task::JoinHandle<()>,
    tail: Arc<Mutex<Tail>>,
    exited: Option<tokio::sync::oneshot::Receiver<ExitStatus>>,
    parser: Parser,
    /// A line not yet complete.
    line: Vec<u8>,
    /// Text format: the bytes of a UTF-8 character cut by a read.
    utf8_rest: Vec<u8>,
    total: usize,
    max_total: usize,
    max_line: usize,
    done: bool,
    program: String,
}

impl Drop for Run {
    fn drop(&mut self) {
        self.writer.abort();
        self.stderr_task.abort();
        // `group` kills the process group as it drops.
    }
}

impl Run {
    /// Reads the next piece of output into `out`. `Ok(false)`: the output
    /// ended and the CLI exited successfully (or said it was done).
    async fn next(&mut self, out: &mut Vec<Event>) -> Result<bool, Failure> {
        if self.done {
            return Ok(false);
        }
        let mut buf = vec![0u8; READ_CHUNK];
        let n = self.stdout.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            self.done = true;
            if !self.parser.is_text() && !self.line.is_empty() {
                let line = std::mem::take(&mut self.line);
                self.parser.line(&line, out);
            }
            let status = match self.exited.take() {
                Some(exited) => exited.await.ok(),
                None => None,
            };
            return match status {
                Some(status) if !status.success() => Err(Failure::Exit(status)),
                _ => Ok(false),
            };
        }
        self.total += n;
        if self.total > self.max_total {
            self.done = true;
            return Err(Failure::TooLarge);
        }
        let chunk = &buf[..n];
        if self.parser.is_text() {
            self.utf8_rest.extend_from_slice(chunk);
            let valid = match std::str::from_utf8(&self.utf8_rest) {
                Ok(_) => self.utf8_rest.len(),
                Err(e) if e.error_len().is_none() => e.valid_up_to(),
                // Not UTF-8 at all: shown lossily rather than held.
                Err(_) => self.utf8_rest.len(),
            };
            let text: Vec<u8> = self.utf8_rest.drain(..valid).collect();
            let text = String::from_utf8_lossy(&text);
            if !text.is_empty() {
                out.push(Event::Text(text.into_owned()));
            }
            return Ok(true);
        }
        let mut rest = chunk;
        while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
            if self.line.len() + newline > self.max_line {
                self.done = true;
                return Err(Failure::LineTooLarge);
            }
            if self.line.is_empty() {
                self.parser.line(&rest[..newline], out);
            } else {
                self.line.extend_from_slice(&rest[..newline]);
                let line = std::mem::take(&mut self.line);
                self.parser.line(&line, out);
            }
            rest = &rest[newline + 1..];
        }
        if self.line.len() + rest.len() > self.max_line {
            self.done = true;
            return Err(Failure::LineTooLarge);
        }
        self.line.extend_from_slice(rest);
        if out.iter().any(|e| matches!(e, Event::Done)) {
            self.done = true;
        }
        Ok(true)
    }

    /// The end of its stderr, once the pipe closed (bounded wait).
    async fn stderr_tail(&mut self) -> String {
        let _ = tokio::time::timeout(STDERR_SETTLE, &mut self.stderr_task).await;
        self.tail.lock().map(|t| t.lines()).unwrap_or_default()
    }
}

/// A run that has begun to answer.
struct Answer {
    run: Run,
    /// Events read while waiting for the first text.
    pending: VecDeque<Event>,
    finished: bool,
    deadline: Instant,
    stats: Arc<ExchangeStats>,
    id: String,
    model: String,
    created: u64,
    name: String,
    timeout: Duration,
    secrets: Arc<[String]>,
}

impl Answer {
    /// The next events: pending ones first, then what the CLI prints.
    /// `Ok(None)`: the answer is complete.
    async fn next(&mut self) -> Result<Option<Vec<Event>>, ApiError> {
        if !self.pending.is_empty() {
            return Ok(Some(self.pending.drain(..).collect()));
        }
        if self.finished {
            return Ok(None);
        }
        let mut events = Vec::new();
        let more = match tokio::time::timeout_at(self.deadline, self.run.next(&mut events)).await {
            Ok(Ok(more)) => more,
            Ok(Err(failure)) => Err(self.mid_answer_error(failure).await)?,
            Err(_) => Err(self.mid_answer_error(Failure::Timeout).await)?,
        };
        if !more || events.iter().any(|e| matches!(e, Event::Done)) {
            self.finished = true;
        }
        Ok(Some(events))
    }

    async fn mid_answer_error(&mut self, failure: Failure) -> ApiError {
        self.run.group.kill();
        let tail = redact(&self.secrets, &self.run.stderr_tail().await);
        let error = failure.error(
            &self.name,
            &self.run.program,
            &tail,
            self.timeout,
            self.run.max_total,
            self.run.max_line,
        );
        tracing::warn!(provider = %self.name, error = %error.message, "the CLI failed mid-answer");
        error
    }

    fn record_usage(&self, prompt: u64, completion: u64) {
        self.stats.set_usage(Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            cached_tokens: 0,
        });
    }

    /// The whole answer as a `chat.completion` body.
    async fn complete(mut self) -> Result<Bytes, ApiError> {
        let mut text = String::new();
        let mut usage = (0, 0);
        while let Some(events) = self.next().await? {
            for event in events {
                match event {
                    Event::Text(t) => text.push_str(&t),
                    Event::Usage(p, c) => {
                        usage = (p, c);
                        self.record_usage(p, c);
                    }
                    Event::Failed(message) => {
                        return Err(self.mid_answer_error(Failure::Reported(message)).await);
                    }
                    Event::Done => {}
                }
            }
        }
        let body = json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }],
            "usage": usage_json(usage.0, usage.1),
        });
        Ok(Bytes::from(body.to_string()))
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> String {
        let chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        });
        format!("data: {chunk}\n\n")
    }

    /// The answer as Chat Completions chunks, each sent as the CLI prints it.
    fn stream(self, include_usage: bool) -> super::FrameStream {
        struct State {
            answer: Answer,
            include_usage: bool,
            role_sent: bool,
            usage: Option<(u64, u64)>,
            over: bool,
        }
        let state = State {
            answer: self,
            include_usage,
            role_sent: false,
            usage: None,
            over: false,
        };
        Box::pin(futures_util::stream::unfold(state, |mut st| async move {
            if st.over {
                return None;
            }
            loop {
                let mut out = String::new();
                match st.answer.next().await {
                    Ok(Some(events)) => {
                        for event in events {
                            match event {
                                Event::Text(text) => {
                                    let delta = if st.role_sent {
                                        json!({"content": text})
                                    } else {
                                        st.role_sent = true;
                                        json!({"role": "assistant", "content": text})
                                    };
                                    out.push_str(&st.answer.chunk(delta, None));
                                }
                                Event::Usage(p, c) => {
                                    st.usage = Some((p, c));
                                    st.answer.record_usage(p, c);
                                }
                                Event::Failed(message) => {
                                    let error = st
                                        .answer
                                        .mid_answer_error(Failure::Reported(message))
                                        .await;
                                    out.push_str(&error.sse_frame());
                                    out.push_str("data: [DONE]\n\n");
                                    st.over = true;
                                    break;
                                }
                                Event::Done => {}
                            }
                        }
                    }
                    Ok(None) => {
                        out.push_str(&st.answer.chunk(json!({}), Some("stop")));
                        if st.include_usage {
                            let (p, c) = st.usage.unwrap_or((0, 0));
                            let chunk = json!({
                                "id": st.answer.id,
                                "object": "chat.completion.chunk",
                                "created": st.answer.created,
                                "model": st.answer.model,
                                "choices": [],
                                "usage": usage_json(p, c),
                            });
                            out.push_str(&format!("data: {chunk}\n\n"));
                        }
                        out.push_str("data: [DONE]\n\n");
                        st.over = true;
                    }
                    Err(error) => {
                        out.push_str(&error.sse_frame());
                        out.push_str("data: [DONE]\n\n");
                        st.over = true;
                    }
                }
                if !out.is_empty() {
                    return Some((Bytes::from(out), st));
                }
            }
        }))
    }
}

fn usage_json(prompt: u64, completion: u64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stderr_tail_keeps_the_last_lines_escaped() {
        let mut tail = Tail::default();
        for i in 0..30 {
            tail.push(format!("line {i}\n").as_bytes());
        }
        tail.push(b"bell\x07\n");
        let lines = tail.lines();
        assert!(lines.starts_with("line 21 | "), "{lines}");
        assert!(
            lines.ends_with("bell\\u{7}") || lines.contains("bell\\"),
            "{lines}"
        );
        let mut big = Tail::default();
        big.push(&vec![b'x'; 10_000]);
        assert_eq!(big.bytes.len(), STDERR_TAIL_BYTES);
    }
}
