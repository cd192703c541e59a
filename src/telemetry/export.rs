//! The export pipeline: a bounded queue that a span's end never waits on, and
//! one tokio task that drains it in batches to the collector over OTLP/HTTP.
//!
//! - A span that ends goes into the queue with `try_send`: when the queue is
//!   full (the collector is slower than the spans come, or down), the span is
//!   dropped and counted (`warden_telemetry_spans_dropped_total`). Nothing on
//!   the request path ever waits for the collector.
//! - The task sends at most [`MAX_BATCH`] spans per export, one export at a
//!   time, each bounded by [`EXPORT_TIMEOUT`]; a batch the collector refuses,
//!   fails or does not accept in time is dropped and counted too.
//! - Drops are logged, at most once per [`LOG_EVERY`], with how many and why,
//!   so tracing never switches itself off in silence.
//!
//! The SDK's own batch processor runs its exports on a thread of its own with
//! no tokio runtime, where warden's async HTTP client cannot run, and keeps its
//! drop count to itself; hence this processor.

use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Spans waiting for export, at most (then new ones are dropped).
pub const QUEUE_CAPACITY: usize = 2048;
/// Spans per export request, at most.
pub const MAX_BATCH: usize = 512;
/// How long the first span of a batch waits for others to join it.
pub const BATCH_DELAY: Duration = Duration::from_millis(500);
/// One export request, at most (connecting included); then its spans are dropped.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Drops are logged at most this often.
pub const LOG_EVERY: Duration = Duration::from_secs(60);

/// The SDK side: puts ended spans in the queue, never waiting.
#[derive(Debug)]
pub(super) struct QueueProcessor {
    spans: mpsc::Sender<SpanData>,
    dropped: Counter,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.spans.try_send(span).is_err() {
            self.dropped.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// The task side, until it is spawned, and the way to ask it to flush.
pub(super) struct Drain<E> {
    spans: mpsc::Receiver<SpanData>,
    flushes: mpsc::Receiver<oneshot::Sender<()>>,
    exporter: E,
    exported: Counter,
    dropped: Counter,
    /// The collector's URL as logs show it (userinfo hidden).
    shown_url: String,
}

/// Builds both halves: the processor for the tracer provider, the drain for
/// [`Drain::run`], and the sender of flush requests.
pub(super) fn pipeline<E: SpanExporter + 'static>(
    exporter: E,
    exported: Counter,
    dropped: Counter,
    shown_url: String,
) -> (QueueProcessor, Drain<E>, mpsc::Sender<oneshot::Sender<()>>) {
    let (span_tx, span_rx) = mpsc::channel(QUEUE_CAPACITY);
    let (flush_tx, flush_rx) = mpsc::channel(4);
    (
        QueueProcessor {
            spans: span_tx,
            dropped: dropped.clone(),
        },
        Drain {
            spans: span_rx,
            flushes: flush_rx,
            exporter,
            exported,
            dropped,
            shown_url,
        },
        flush_tx,
    )
}

impl<E: SpanExporter + 'static> Drain<E> {
    /// Exports until the tracer provider (every sender) is gone.
    pub(super) async fn run(mut self) {
        let mut batch: Vec<SpanData> = Vec::with_capacity(MAX_BATCH);
        let mut log = DropLog::new(self.dropped.get());
        loop {
            tokio::select! {
                n = self.spans.recv_many(&mut batch, MAX_BATCH) => {
                    if n == 0 {
                        return;
                    }
                    // Let others join the batch for a moment, unless it is full.
                    let deadline = Instant::now() + BATCH_DELAY;
                    while batch.len() < MAX_BATCH {
                        let room = MAX_BATCH - batch.len();
                        match tokio::time::timeout_at(deadline, self.spans.recv_many(&mut batch, room)).await {
                            Ok(n) if n > 0 => {}
                            _ => break,
                        }
                    }
                    self.export(&mut batch, &mut log).await;
                }
                Some(done) = self.flushes.recv() => {
                    while let Ok(span) = self.spans.try_recv() {
                        batch.push(span);
                        if batch.len() == MAX_BATCH {
                            self.export(&mut batch, &mut log).await;
                        }
                    }
                    self.export(&mut batch, &mut log).await;
                    let _ = done.send(());
                }
            }
        }
    }

    async fn export(&mut self, batch: &mut Vec<SpanData>, log: &mut DropLog) {
        if batch.is_empty() {
            return;
        }
        let spans = std::mem::take(batch);
        let n = spans.len() as u64;
        let failure = match tokio::time::timeout(EXPORT_TIMEOUT, self.exporter.export(spans)).await
        {
            Ok(Ok(())) => {
                self.exported.inc_by(n);
                None
            }
            Ok(Err(e)) => Some(crate::support::redact::urls_in(&e.to_string()).into_owned()),
            Err(_) => Some(format!("no answer within {} s", EXPORT_TIMEOUT.as_secs())),
        };
        if let Some(why) = &failure {
            self.dropped.inc_by(n);
            log.last_error = Some(crate::support::redact::truncate(why, 512).to_string());
        }
        log.maybe_log(self.dropped.get(), &self.shown_url);
    }
}

/// Rate-limited logging of drops: the first drop at once, then at most one
/// line per [`LOG_EVERY`] with the count since the last line.
struct DropLog {
    logged_count: u64,
    last_logged: Option<Instant>,
    last_error: Option<String>,
}

impl DropLog {
    fn new(count: u64) -> DropLog {
        DropLog {
            logged_count: count,
            last_logged: None,
            last_error: None,
        }
    }

    fn maybe_log(&mut self, count: u64, url: &str) {
        if count == self.logged_count {
            return;
        }
        if self.last_logged.is_some_and(|at| at.elapsed() < LOG_EVERY) {
            return;
        }
        let why = self.last_error.take().unwrap_or_else(|| {
            "the export queue was full (the collector is slower than the spans come)".into()
        });
        tracing::warn!(
            dropped = count - self.logged_count,
            dropped_total = count,
            collector = %url,
            error = %why,
            "telemetry: trace spans dropped; requests are not affected \
             (warden_telemetry_spans_dropped_total counts them)"
        );
        self.logged_count = count;
        self.last_logged = Some(Instant::now());
    }
}
