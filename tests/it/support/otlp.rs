//! A real OTLP/HTTP collector for tests: an axum app on 127.0.0.1:0 that takes
//! `POST /v1/traces` (protobuf), decodes it with `opentelemetry-proto` and keeps
//! both the spans and every raw byte it received. It can also hang (a slow
//! collector) or refuse (a broken one).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use prost::Message;
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::PATIENCE;

/// OTLP span kinds.
pub const INTERNAL: i32 = 1;
pub const SERVER: i32 = 2;
pub const CLIENT: i32 = 3;
pub const CONSUMER: i32 = 5;
/// OTLP status code of an error.
pub const STATUS_ERROR: i32 = 2;

/// One exported span, decoded into plain values.
#[derive(Clone, Debug)]
pub struct Span {
    pub name: String,
    pub kind: i32,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub attributes: BTreeMap<String, Value>,
    pub status_code: i32,
    /// (trace id, span id) of each link.
    pub links: Vec<(String, String)>,
    /// The resource's `service.name`.
    pub service_name: String,
}

impl Span {
    /// An attribute, or Null.
    pub fn attr(&self, key: &str) -> Value {
        self.attributes.get(key).cloned().unwrap_or(Value::Null)
    }
}

fn any(value: &Option<AnyValue>) -> Value {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => json!(s),
        Some(Any::BoolValue(b)) => json!(b),
        Some(Any::IntValue(i)) => json!(i),
        Some(Any::DoubleValue(d)) => json!(d),
        Some(Any::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(|v| any(&Some(v.clone()))).collect())
        }
        other => json!(format!("{other:?}")),
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, Value> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), any(&kv.value)))
        .collect()
}

/// How the collector answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Accept = 0,
    /// Never answers (a collector that is too slow).
    Hang = 1,
    /// Answers 503.
    Refuse = 2,
}

pub struct CollectorState {
    mode: AtomicU8,
    pub spans: Mutex<Vec<Span>>,
    /// Every request body, as received.
    pub raw: Mutex<Vec<Bytes>>,
    pub requests: AtomicUsize,
    changed: Notify,
}

pub struct Collector {
    pub addr: SocketAddr,
    pub state: Arc<CollectorState>,
}

async fn traces(State(st): State<Arc<CollectorState>>, body: Bytes) -> Response {
    st.requests.fetch_add(1, Ordering::SeqCst);
    st.raw.lock().unwrap().push(body.clone());
    st.changed.notify_waiters();
    match st.mode.load(Ordering::SeqCst) {
        1 => return std::future::pending::<Response>().await,
        2 => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
        _ => {}
    }
    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
    let mut decoded = Vec::new();
    for rs in &request.resource_spans {
        let resource = rs
            .resource
            .as_ref()
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service_name = resource
            .get("service.name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                decoded.push(Span {
                    name: s.name.clone(),
                    kind: s.kind,
                    trace_id: hex::encode(&s.trace_id),
                    span_id: hex::encode(&s.span_id),
                    parent_span_id: hex::encode(&s.parent_span_id),
                    attributes: attributes(&s.attributes),
                    status_code: s.status.as_ref().map_or(0, |st| st.code),
                    links: s
                        .links
                        .iter()
                        .map(|l| (hex::encode(&l.trace_id), hex::encode(&l.span_id)))
                        .collect(),
                    service_name: service_name.clone(),
                });
            }
        }
    }
    st.spans.lock().unwrap().extend(decoded);
    st.changed.notify_waiters();
    ([("content-type", "application/x-protobuf")], Bytes::new()).into_response()
}

impl Collector {
    pub fn start(mode: Mode) -> Collector {
        let state = Arc::new(CollectorState {
            mode: AtomicU8::new(mode as u8),
            spans: Mutex::new(Vec::new()),
            raw: Mutex::new(Vec::new()),
            requests: AtomicUsize::new(0),
            changed: Notify::new(),
        });
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(traces))
            .with_state(state.clone());
        Collector {
            addr: super::prompt_server::serve(app),
            state,
        }
    }

    /// The base URL for `telemetry.otlp_endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<Span> {
        self.state.spans.lock().unwrap().clone()
    }

    /// Every byte the collector received, concatenated.
    pub fn raw_bytes(&self) -> Vec<u8> {
        self.state.raw.lock().unwrap().concat()
    }

    /// Waits (bounded by PATIENCE) until the spans received satisfy `done`.
    pub async fn until(&self, what: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let changed = self.state.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!("timed out waiting for {what}; spans so far: {spans:#?}");
            }
        }
    }

    /// Waits until `n` spans of trace `trace_id` arrived; returns them.
    pub async fn trace(&self, trace_id: &str, n: usize) -> Vec<Span> {
        let spans = self
            .until(&format!("{n} spans of trace {trace_id}"), |spans| {
                spans.iter().filter(|s| s.trace_id == trace_id).count() >= n
            })
            .await;
        spans
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }

    /// Waits until an export request arrived.
    pub async fn wait_request(&self) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let changed = self.state.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.state.requests.load(Ordering::SeqCst) > 0 {
                return;
            }
            tokio::time::timeout_at(deadline, changed)
                .await
                .expect("an export request reached the collector");
        }
    }
}

/// `(trace id, parent span id)` of a `traceparent` value.
pub fn parse_traceparent(value: &str) -> (String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {value:?}");
    assert_eq!(parts[0], "00");
    (parts[1].to_string(), parts[2].to_string())
}
