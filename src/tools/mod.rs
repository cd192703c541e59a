//! Tools the gateway runs itself, over NATS (docs/contract.md §18, docs/tools.md).
//!
//! Declared server tools (`[[tools.declare]]`) are offered to the model next to
//! the client's own. When the model calls one, the gateway sends the call's
//! arguments as a NATS request to `tools.subject.NAME` ([`caller`]), appends the
//! reply as the tool result and calls the model again ([`chat_loop`]), at most
//! `tools.max_rounds` model calls in all. The client only sees the last answer,
//! and calls of its own tools, as usual.
//!
//! Why this shape:
//! - **One loop, on Chat Completions.** Chat Completions, Messages (translated
//!   to Chat) and NATS chat requests all go through the gateway's one chat
//!   dispatch, which hands a request with server tools to [`run_chat`].
//! - **Nothing hangs.** Every call has `tools.timeout` and the request's own
//!   deadline; a NATS server that is down or a subject nobody serves is an
//!   answer at once; whatever goes wrong, the model reads `{"error":"…"}`.
//! - **Off costs nothing**: with no tool declared there is no [`Tools`], no
//!   connection and no parsing of requests.
//!
//! This folder never uses `gateway/`; the gateway uses it.

mod caller;
mod chat_loop;
pub mod pending;
mod sse;

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Map, Value, json};

pub use caller::{CallResult, Outcome};
pub use chat_loop::{ModelCall, run_chat};

use crate::api::metrics::Metrics;
use crate::home::config::Config;

/// Model calls made, on every answer in which server tools ran.
pub const ROUNDS_HEADER: &str = "x-warden-tool-rounds";
/// `reached` when `tools.max_rounds` stopped the loop.
pub const LIMIT_HEADER: &str = "x-warden-tool-limit";
/// `none`: this request is offered no server tool (HTTP and NATS header).
pub const OPT_OUT_HEADER: &str = "x-warden-tools";

/// Server tool calls one model answer may make; more get an error result.
pub const MAX_CALLS_PER_ANSWER: usize = 16;

/// The declared server tools and what runs them.
pub struct Tools {
    max_rounds: u32,
    /// The declared tools as Chat Completions tool objects.
    declared: Vec<(String, Value)>,
    caller: Arc<caller::NatsCaller>,
    /// Server calls kept while the client runs its own (bounded).
    pub pending: pending::Pending,
}

impl Tools {
    /// `None` while no tool is declared: then nothing of this runs.
    pub fn from_config(config: &Config, metrics: Arc<Metrics>) -> Option<Arc<Tools>> {
        if !config.tools.enabled() {
            return None;
        }
        let declared = config
            .tools
            .declare
            .iter()
            .map(|t| {
                let mut function = json!({"name": t.name, "parameters": t.parameters});
                if !t.description.is_empty() {
                    function["description"] = json!(t.description);
                }
                (
                    t.name.clone(),
                    json!({"type": "function", "function": function}),
                )
            })
            .collect();
        Some(Arc::new(Tools {
            max_rounds: config.tools.max_rounds,
            declared,
            caller: Arc::new(caller::NatsCaller::new(config, metrics)),
            pending: pending::Pending::default(),
        }))
    }

    /// Connects to NATS in the background (needs the Tokio runtime).
    pub fn start(&self) {
        self.caller.start();
    }

    /// Whether the `x-warden-tools` header's value opts a request out.
    pub fn opted_out(value: Option<&str>) -> bool {
        value.is_some_and(|v| v.trim().eq_ignore_ascii_case("none"))
    }

    /// Adds the declared tools the client did not bring itself to a Chat
    /// Completions request's `tools` (a client tool of the same name wins).
    /// Returns the names of the server tools offered.
    pub fn offer(&self, request: &mut Map<String, Value>) -> HashSet<String> {
        let mut own: HashSet<String> = HashSet::new();
        if let Some(tools) = request.get("tools").and_then(Value::as_array) {
            for tool in tools {
                if let Some(name) = tool
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                {
                    own.insert(name.to_string());
                }
            }
        } else if request.get("tools").is_some_and(|t| !t.is_null()) {
            // Not an array: left for the provider to refuse, unchanged.
            return HashSet::new();
        }
        let offered: Vec<&(String, Value)> = self
            .declared
            .iter()
            .filter(|(name, _)| !own.contains(name))
            .collect();
        if offered.is_empty() {
            return HashSet::new();
        }
        let tools = request
            .entry("tools")
            .or_insert_with(|| Value::Array(Vec::new()));
        if tools.is_null() {
            *tools = Value::Array(Vec::new());
        }
        if let Some(tools) = tools.as_array_mut() {
            tools.extend(offered.iter().map(|(_, tool)| tool.clone()));
        }
        offered.into_iter().map(|(name, _)| name.clone()).collect()
    }
}
