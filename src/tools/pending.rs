//! Server calls kept while the client runs its own: when one model answer
//! mixes server and client tool calls, the server ones run and the client gets
//! the assistant message with its own calls only. The whole message and the
//! server results are kept here, under the caller and the client calls' ids,
//! and put back into the conversation when the same caller's follow-up brings
//! those ids: another caller who sends the same ids gets nothing of them.
//! Bounded: at most [`MAX_ENTRIES`] answers and [`MAX_BYTES`] of them, each
//! for [`KEEP_FOR`]. The count alone would not do: one answer may hold 16
//! replies of up to `upstream.max_event_bytes` each.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How many answers are kept at most; the oldest goes first.
pub const MAX_ENTRIES: usize = 1000;
/// How long one is kept.
pub const KEEP_FOR: Duration = Duration::from_secs(600);
/// How much of their calls and results is kept at most (as JSON text); the
/// oldest goes first, and an answer larger than this alone is not kept.
pub const MAX_BYTES: usize = 64 * 1024 * 1024;

/// One mixed answer: every call it made, and the server calls' results.
#[derive(Debug)]
struct Kept {
    tool_calls: Vec<Value>,
    results: Vec<Value>,
    at: Instant,
    /// About its size as JSON text.
    size: usize,
}

#[derive(Default)]
struct Inner {
    by_call: HashMap<String, Arc<Kept>>,
    /// Insertion order: every client call id of an answer, and the answer.
    /// An id may name a newer answer in `by_call` by then (a provider that
    /// reuses call ids): that one stays when this one goes.
    order: VecDeque<(Vec<String>, Arc<Kept>)>,
    /// The sizes in `order`, summed.
    bytes: usize,
}

#[derive(Default)]
pub struct Pending {
    inner: Mutex<Inner>,
}

impl Pending {
    /// Keeps an answer for `owner` (the caller): `tool_calls` all of its
    /// calls, `client_ids` the ids of the client's among them, `results` the
    /// server calls' tool messages.
    pub fn keep(
        &self,
        owner: &str,
        client_ids: Vec<String>,
        tool_calls: Vec<Value>,
        results: Vec<Value>,
    ) {
        self.keep_at(owner, client_ids, tool_calls, results, Instant::now());
    }

    fn keep_at(
        &self,
        owner: &str,
        client_ids: Vec<String>,
        tool_calls: Vec<Value>,
        results: Vec<Value>,
        now: Instant,
    ) {
        if client_ids.is_empty() {
            return;
        }
        let client_ids: Vec<String> = client_ids.iter().map(|id| slot(owner, id)).collect();
        let size = tool_calls.iter().chain(&results).map(json_size).sum();
        if size > MAX_BYTES {
            tracing::warn!(
                bytes = size,
                "a mixed answer's server calls and results are too large to keep; \
                 the client's follow-up goes to the model without them"
            );
            return;
        }
        let kept = Arc::new(Kept {
            tool_calls,
            results,
            at: now,
            size,
        });
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.expire(now);
        while inner.order.len() >= MAX_ENTRIES || inner.bytes + size > MAX_BYTES {
            inner.pop_oldest();
        }
        for id in &client_ids {
            inner.by_call.insert(id.clone(), kept.clone());
        }
        inner.order.push_back((client_ids, kept));
        inner.bytes += size;
    }

    /// Puts kept server calls back into `messages` (a Chat Completions
    /// conversation): an assistant message whose calls are the client's of a
    /// kept answer gets all of that answer's calls again, followed by the
    /// server calls' results, when `owner` kept it. Returns whether anything
    /// was put back.
    pub fn restore(&self, owner: &str, messages: &mut Vec<Value>) -> bool {
        self.restore_at(owner, messages, Instant::now())
    }

    fn restore_at(&self, owner: &str, messages: &mut Vec<Value>, now: Instant) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.expire(now);
        if inner.by_call.is_empty() {
            return false;
        }
        let mut restored = false;
        let mut i = 0;
        while i < messages.len() {
            let kept = messages[i]
                .get("tool_calls")
                .and_then(Value::as_array)
                .and_then(|calls| calls.first())
                .and_then(|call| call.get("id"))
                .and_then(Value::as_str)
                .and_then(|id| inner.by_call.get(&slot(owner, id)))
                .cloned();
            if let Some(kept) = kept {
                messages[i]["tool_calls"] = Value::Array(kept.tool_calls.clone());
                let n = kept.results.len();
                for (k, result) in kept.results.iter().enumerate() {
                    messages.insert(i + 1 + k, result.clone());
                }
                restored = true;
                i += n;
            }
            i += 1;
        }
        restored
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .order
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn pop_oldest(&mut self) {
        if let Some((ids, kept)) = self.order.pop_front() {
            self.bytes -= kept.size;
            for id in ids {
                if self.by_call.get(&id).is_some_and(|k| Arc::ptr_eq(k, &kept)) {
                    self.by_call.remove(&id);
                }
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(_, kept)| now.saturating_duration_since(kept.at) >= KEEP_FOR)
        {
            self.pop_oldest();
        }
    }
}

/// Where a caller's call id is kept: a NUL cannot be in a key's name.
fn slot(owner: &str, id: &str) -> String {
    format!("{owner}\0{id}")
}

/// About the length of `value` as JSON text, without writing it out.
fn json_size(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => 8,
        Value::String(s) => s.len() + 2,
        Value::Array(items) => 2 + items.iter().map(|v| json_size(v) + 1).sum::<usize>(),
        Value::Object(map) => {
            2 + map
                .iter()
                .map(|(k, v)| k.len() + 4 + json_size(v))
                .sum::<usize>()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_kept_answer_goes_back_only_to_the_caller_that_kept_it() {
        let pending = Pending::default();
        let calls = vec![
            json!({"id": "s1", "type": "function", "function": {"name": "srv", "arguments": "{}"}}),
            json!({"id": "c1", "type": "function", "function": {"name": "cli", "arguments": "{}"}}),
        ];
        let result = json!({"role": "tool", "tool_call_id": "s1", "content": "{\"secret\":1}"});
        pending.keep("alice", vec!["c1".into()], calls.clone(), vec![result]);
        let follow_up = || {
            vec![
                json!({"role": "assistant", "content": null, "tool_calls": [calls[1].clone()]}),
                json!({"role": "tool", "tool_call_id": "c1", "content": "client"}),
            ]
        };
        // Another key, and a caller without a key, who send alice's call id.
        for other in ["bob", ""] {
            let mut messages = follow_up();
            assert!(
                !pending.restore(other, &mut messages),
                "{other:?} got alice's"
            );
            assert_eq!(messages, follow_up());
        }
        let mut messages = follow_up();
        assert!(pending.restore("alice", &mut messages));
        assert_eq!(messages[1]["content"], "{\"secret\":1}");
    }

    #[test]
    fn a_kept_answer_is_put_back_and_the_store_is_bounded() {
        let pending = Pending::default();
        let calls = vec![
            json!({"id": "s1", "type": "function", "function": {"name": "srv", "arguments": "{}"}}),
            json!({"id": "c1", "type": "function", "function": {"name": "cli", "arguments": "{}"}}),
        ];
        let result = json!({"role": "tool", "tool_call_id": "s1", "content": "{\"ok\":1}"});
        pending.keep("", vec!["c1".into()], calls.clone(), vec![result.clone()]);
        let mut messages = vec![
            json!({"role": "user", "content": "hi"}),
            json!({"role": "assistant", "content": null, "tool_calls": [calls[1]]}),
            json!({"role": "tool", "tool_call_id": "c1", "content": "client"}),
        ];
        assert!(pending.restore("", &mut messages));
        assert_eq!(messages.len(), 4);
        assert_eq!(messages[1]["tool_calls"], json!(calls));
        assert_eq!(messages[2], result);
        assert_eq!(messages[3]["tool_call_id"], "c1");

        for i in 0..MAX_ENTRIES + 10 {
            pending.keep("", vec![format!("x{i}")], vec![], vec![]);
        }
        assert_eq!(pending.len(), MAX_ENTRIES);
        let mut again = vec![json!({"role": "assistant", "tool_calls": [calls[1]]})];
        assert!(
            !pending.restore("", &mut again),
            "the oldest answer was dropped"
        );
    }

    #[test]
    fn a_kept_answer_expires_after_ten_minutes() {
        let pending = Pending::default();
        let start = Instant::now();
        let call =
            json!({"id": "c1", "type": "function", "function": {"name": "cli", "arguments": "{}"}});
        let result = json!({"role": "tool", "tool_call_id": "s1", "content": "{}"});
        pending.keep_at(
            "",
            vec!["c1".into()],
            vec![call.clone()],
            vec![result],
            start,
        );
        let conversation = || vec![json!({"role": "assistant", "tool_calls": [call.clone()]})];
        let mut messages = conversation();
        assert!(pending.restore_at("", &mut messages, start + KEEP_FOR - Duration::from_secs(1)));
        let mut messages = conversation();
        assert!(!pending.restore_at("", &mut messages, start + KEEP_FOR));
        assert_eq!(messages, conversation(), "left as the client sent it");
        assert!(pending.is_empty());
    }

    #[test]
    fn the_kept_answers_are_bounded_in_bytes_too() {
        let pending = Pending::default();
        let call = |id: &str| json!({"id": id, "type": "function", "function": {"name": "cli", "arguments": "{}"}});
        // A little over a third of the bound each: two fit at a time.
        let big = "x".repeat(MAX_BYTES / 3);
        let result = json!({"role": "tool", "tool_call_id": "s", "content": big});
        for id in ["a", "b", "c", "d"] {
            pending.keep("", vec![id.into()], vec![call(id)], vec![result.clone()]);
        }
        assert_eq!(pending.len(), 2);
        let restored = |id: &str| {
            pending.restore(
                "",
                &mut vec![json!({"role": "assistant", "tool_calls": [call(id)]})],
            )
        };
        assert!(!restored("a") && !restored("b"), "the oldest went first");
        assert!(restored("c") && restored("d"));
        // One answer larger than the bound alone is not kept, and pushes nothing out.
        let huge = json!({"role": "tool", "tool_call_id": "s", "content": "x".repeat(MAX_BYTES)});
        pending.keep("", vec!["e".into()], vec![call("e")], vec![huge]);
        assert!(!restored("e"));
        assert_eq!(pending.len(), 2);
    }

    #[test]
    fn an_older_answer_going_does_not_take_a_newer_one_with_the_same_call_id() {
        let pending = Pending::default();
        let call =
            json!({"id": "c1", "type": "function", "function": {"name": "cli", "arguments": "{}"}});
        let result = |text: &str| json!({"role": "tool", "tool_call_id": "s1", "content": text});
        pending.keep(
            "",
            vec!["c1".into()],
            vec![call.clone()],
            vec![result("old")],
        );
        for i in 0..MAX_ENTRIES - 2 {
            pending.keep("", vec![format!("x{i}")], vec![], vec![]);
        }
        // The same id again (a provider that reuses ids), then one more: the
        // old answer is the oldest and goes.
        pending.keep(
            "",
            vec!["c1".into()],
            vec![call.clone()],
            vec![result("new")],
        );
        pending.keep("", vec!["last".into()], vec![], vec![]);
        assert_eq!(pending.len(), MAX_ENTRIES);
        let mut messages = vec![json!({"role": "assistant", "tool_calls": [call]})];
        assert!(
            pending.restore("", &mut messages),
            "the newer answer is still kept"
        );
        assert_eq!(messages[1], result("new"));
    }
}
