//! JetStream mode (`nats.jetstream = true`): chat requests as durable jobs.
//!
//! A client publishes a Chat Completions body to `SUBJECT.jobs.chat` (an
//! embeddings request to `SUBJECT.jobs.embeddings`) with the header
//! `Warden-Reply-To: SUBJECT_FOR_REPLIES`. The jobs live in the
//! work-queue stream `nats.stream` until a proxy acks them; every proxy pulls
//! from one durable consumer (`warden`), whose `max_ack_pending` is
//! `nats.max_concurrent`, and pulls only as many jobs as it has room for.
//!
//! - The answer goes to the `Warden-Reply-To` subject in the shapes of
//!   [`super::reply`]; the job is acked after the last reply.
//! - While a job runs, a progress ack every `ack_wait / 2` keeps it ours; a
//!   proxy that dies stops sending them, and after `ack_wait` the server
//!   redelivers the job to another proxy.
//! - An upstream failure before any reply was sent (429, 5xx, timeout): nak
//!   with a delay growing with each delivery, so another proxy (or a recovered
//!   upstream) tries again; at the last of [`MAX_DELIVER`] deliveries the error
//!   is the reply and the job is acked. A bad job (no `Warden-Reply-To`, not a
//!   chat request, another 4xx): an error reply when possible, and `term`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use async_nats::jetstream::{self as js, AckKind};
use futures_util::StreamExt;
use tokio::sync::{Semaphore, watch};

use super::reply::{self, Delivered};
use super::{CHAT_ROUTE, EMBEDDINGS_ROUTE, InFlight, NatsError};
use crate::api::openai::ApiError;
use crate::gateway::Gateway;
use crate::gateway::dispatch::{Ingress, Record};

/// The header naming where a job's replies go.
pub const REPLY_TO_HEADER: &str = "Warden-Reply-To";
/// The durable consumer of chat jobs every proxy shares.
pub const CONSUMER: &str = "warden";
/// The durable consumer of embeddings jobs (a work-queue stream takes one
/// consumer per subject, and one filter per consumer before NATS 2.10).
pub const EMBEDDINGS_CONSUMER: &str = "warden-embeddings";

/// The jobs of one subject: `SUBJECT.jobs.chat` or `SUBJECT.jobs.embeddings`.
#[derive(Clone, Copy)]
struct Queue {
    consumer: &'static str,
    /// The part after `SUBJECT.jobs.`.
    subject: &'static str,
}

const QUEUES: [Queue; 2] = [
    Queue {
        consumer: CONSUMER,
        subject: "chat",
    },
    Queue {
        consumer: EMBEDDINGS_CONSUMER,
        subject: "embeddings",
    },
];
/// Deliveries of one job at most (the first and four redeliveries).
pub const MAX_DELIVER: i64 = 5;
/// How long one pull waits for jobs before asking again.
const PULL_EXPIRES: Duration = Duration::from_secs(2);

/// Sets up the stream and its consumers, then pulls chat and embeddings jobs
/// until `stop` (the two share `permits`).
pub async fn run(
    gw: Arc<Gateway>,
    client: async_nats::Client,
    permits: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
) {
    let [chat, embeddings] = QUEUES.map(|queue| {
        run_queue(
            gw.clone(),
            client.clone(),
            permits.clone(),
            stop.clone(),
            queue,
        )
    });
    tokio::join!(chat, embeddings);
}

/// Pulls the jobs of one queue until `stop`; retried with backoff while the
/// server is away or JetStream is not enabled there.
async fn run_queue(
    gw: Arc<Gateway>,
    client: async_nats::Client,
    permits: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
    queue: Queue,
) {
    let mut failures: u32 = 0;
    while !*stop.borrow() {
        match pull_jobs(&gw, &client, &permits, &mut stop, queue).await {
            Ok(()) => break,
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay =
                    Duration::from_millis(200u64 << failures.min(4)).min(Duration::from_secs(3));
                if failures == 1 || failures % 20 == 0 {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "NATS JetStream jobs: cannot pull, retrying");
                }
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = stop.wait_for(|stop| *stop) => break,
                }
            }
        }
    }
    tracing::debug!("NATS JetStream jobs: no longer pulling");
}

async fn consumer(
    gw: &Gateway,
    client: &async_nats::Client,
    queue: Queue,
) -> Result<js::consumer::Consumer<pull::Config>, NatsError> {
    let nats = &gw.config.nats;
    let context = js::new(client.clone());
    let stream = context
        .get_or_create_stream(stream::Config {
            name: nats.stream.clone(),
            subjects: vec![format!("{}.jobs.>", nats.subject)],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|source| NatsError::Stream {
            stream: nats.stream.clone(),
            source,
        })?;
    let config = pull::Config {
        durable_name: Some(queue.consumer.into()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: nats.ack_wait(),
        max_deliver: MAX_DELIVER,
        max_ack_pending: nats.max_concurrent as i64,
        filter_subject: format!("{}.jobs.{}", nats.subject, queue.subject),
        ..Default::default()
    };
    match stream.create_consumer(config).await {
        Ok(consumer) => Ok(consumer),
        // An existing consumer with other settings (say, another proxy's
        // max_concurrent) is used as it is.
        Err(create) => {
            stream
                .get_consumer(queue.consumer)
                .await
                .map_err(|get| NatsError::Consumer {
                    consumer: queue.consumer,
                    stream: nats.stream.clone(),
                    create,
                    get,
                })
        }
    }
}

async fn pull_jobs(
    gw: &Arc<Gateway>,
    client: &async_nats::Client,
    permits: &Arc<Semaphore>,
    stop: &mut watch::Receiver<bool>,
    queue: Queue,
) -> Result<(), NatsError> {
    let consumer = consumer(gw, client, queue).await?;
    let pull_error = |source: Box<dyn std::error::Error + Send + Sync>| NatsError::Pull {
        consumer: queue.consumer,
        stream: gw.config.nats.stream.clone(),
        source,
    };
    tracing::info!(
        stream = %gw.config.nats.stream,
        consumer = queue.consumer,
        "NATS JetStream jobs: pulling"
    );
    loop {
        // Room first: a job is only pulled when it can start at once.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.map_err(|e| pull_error(e.into()))?,
            _ = stop.wait_for(|stop| *stop) => return Ok(()),
        };
        let mut held = Some(permit);
        let want = 1 + permits.available_permits().min(255);
        let mut batch = consumer
            .batch()
            .max_messages(want)
            .expires(PULL_EXPIRES)
            .messages()
            .await
            .map_err(|e| pull_error(e.into()))?;
        let mut stopping = false;
        loop {
            let next = tokio::select! {
                next = batch.next() => next,
                _ = stop.wait_for(|stop| *stop), if !stopping => {
                    stopping = true;
                    continue;
                }
            };
            let Some(message) = next else { break };
            let message = message.map_err(pull_error)?;
            if stopping {
                // Draining: hand the job straight back to another proxy.
                let _ = message.ack_with(AckKind::Nak(None)).await;
                continue;
            }
            let permit = match held.take() {
                Some(permit) => permit,
                None => match permits.clone().try_acquire_owned() {
                    Ok(permit) => permit,
                    Err(_) => {
                        let _ = message
                            .ack_with(AckKind::Nak(Some(Duration::from_millis(100))))
                            .await;
                        continue;
                    }
                },
            };
            let in_flight = InFlight::with(gw, permit);
            let (gw, client) = (gw.clone(), client.clone());
            tokio::spawn(async move {
                let _in_flight = in_flight;
                handle(gw, client, message).await;
            });
        }
        if stopping {
            return Ok(());
        }
    }
}

/// The nak delay for a job on its `delivered`-th delivery: 1 s doubling, at most 30 s.
fn nak_delay(delivered: i64) -> Duration {
    let shift = (delivered.max(1) - 1).min(5) as u32;
    Duration::from_secs(1u64 << shift).min(Duration::from_secs(30))
}

/// Retrying can help: the gateway's own limit, the upstream's 429 or 5xx.
fn retryable(e: &ApiError) -> bool {
    let status = e.status.as_u16();
    status == 429 || status >= 500
}

async fn handle(gw: Arc<Gateway>, client: async_nats::Client, message: js::Message) {
    let delivered = message.info().map_or(1, |info| info.delivered);
    let reply_to = message
        .headers
        .as_ref()
        .and_then(|h| h.get(REPLY_TO_HEADER))
        .map(|v| v.as_str().trim().to_string())
        .filter(|s| !s.is_empty() && !s.contains([' ', '*', '>']));
    let (message, acker) = message.split();
    let route = if message.subject.ends_with(".jobs.embeddings") {
        EMBEDDINGS_ROUTE
    } else {
        CHAT_ROUTE
    };
    let mut record = Record::start(gw.clone(), Ingress::Nats, route);
    record.trace_nats(&message.subject, message.headers.as_ref());
    let Some(reply_to) = reply_to else {
        tracing::warn!(
            subject = %message.subject,
            "NATS job without a usable {REPLY_TO_HEADER} header: terminated"
        );
        record.status = 400;
        record.finish(true);
        let _ = acker.ack_with(AckKind::Term).await;
        return;
    };
    let reply_to = async_nats::Subject::from(reply_to);
    let origin = match super::origin(&gw, message.headers.as_ref(), route) {
        Ok(origin) => origin,
        Err(e) => {
            // Not retried: another delivery would be refused the same way.
            record.status = e.status.as_u16();
            let sent = reply::publish_error(&client, reply_to, &e).await;
            record.finish(sent);
            let _ = acker.ack_with(AckKind::Term).await;
            return;
        }
    };
    let ack_wait = gw.config.nats.ack_wait();
    let interval = (ack_wait / 2).max(Duration::from_millis(500));
    // Progress acks while the upstream thinks (before the first chunk); the
    // streaming relay sends its own between chunks.
    let dispatched = {
        let origin = origin.traced(record.span_parent());
        let work = super::dispatch_route(&gw, message.payload, &origin);
        tokio::pin!(work);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                dispatched = &mut work => break dispatched,
                _ = ticker.tick() => { let _ = acker.ack_with(AckKind::Progress).await; }
            }
        }
    };
    record.exchange = dispatched.info;
    let last_try = delivered >= MAX_DELIVER;
    let stats = record.exchange.as_ref().map(|x| x.stats.clone());
    let delivered_reply = match dispatched.outcome {
        Ok((answer, slot)) => {
            reply::deliver(
                &client,
                reply_to,
                answer,
                slot,
                Some((&acker, interval)),
                stats.as_deref(),
            )
            .await
        }
        Err(e) if retryable(&e) && !last_try => {
            let delay = nak_delay(delivered);
            tracing::info!(
                status = e.status.as_u16(),
                delivered,
                retry_in_secs = delay.as_secs(),
                error = %e.message,
                "NATS job: upstream failed, nak (another delivery will retry)"
            );
            let _ = acker.ack_with(AckKind::Nak(Some(delay))).await;
            record.status = e.status.as_u16();
            record.finish(true);
            return;
        }
        Err(e) => Delivered {
            status: e.status.as_u16(),
            sent: reply::publish_error(&client, reply_to, &e).await,
            started: false,
        },
    };
    record.status = delivered_reply.status;
    record.finish(delivered_reply.sent);
    if !delivered_reply.sent && !delivered_reply.started {
        // Nothing reached the client (the connection went away): let another try.
        let _ = acker.ack_with(AckKind::Nak(None)).await;
        return;
    }
    let kind = if (400..500).contains(&delivered_reply.status) && delivered_reply.status != 429 {
        AckKind::Term
    } else {
        AckKind::Ack
    };
    if let Err(e) = acker.double_ack_with(kind).await {
        tracing::warn!(error = %e, "NATS job answered but its ack failed: it may be delivered again");
    }
}
