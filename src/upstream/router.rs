//! The router: picks the provider for each request by its model, and fails over
//! to the next candidate before the first byte reaches the client.
//!
//! The gateway calls [`Router::chat`] and [`Router::responses`] exactly as it
//! once called a single upstream (`call -> Result<Reply, ApiError>`); the chosen
//! provider and the number of failovers are recorded in the call's
//! [`ExchangeStats`] (for `x-warden-provider`, the access log and metrics).
//!
//! # Choosing
//!
//! Candidates are the providers whose `models` match, in `priority` order
//! (lower first); within one priority the one with the fewest requests in
//! flight per unit of `weight` goes first, ties drawn at random by weight.
//! Providers in cooldown, or at their own `max_concurrent`, are skipped. The
//! candidate set is a bit mask over the (at most [`MAX_PROVIDERS`]) providers,
//! so routing allocates nothing.
//!
//! # Failing over
//!
//! An attempt fails on a connect error, a timeout, a 429 or a 5xx, or a stream
//! whose first event is an error: the router then tries the next candidate.
//! Other answers (2xx, other 4xx) go to the client as they are. The attempt
//! budget (`upstream.attempts`) and the deadline (`upstream.first_byte_timeout`)
//! cover the whole chain. When every candidate has been tried and budget is
//! left, they are tried again after a backoff (honouring `Retry-After`), except
//! after a timeout. Once a stream's first event has gone to the client nothing
//! is retried: a later failure ends the stream with an error event.
//!
//! # Adding a provider kind
//!
//! A kind is a variant of [`Upstream`] (e.g. `Anthropic`): add the variant, its
//! value of `api` in [`crate::home::config::UpstreamApi`], build it in
//! [`Upstream::build`] and answer in [`Upstream::chat`] (and `responses` and
//! `models`, or say it does not serve them). The router needs no change, as
//! long as the kind reports what happened before the first byte as
//! `Err(ApiError)` with the upstream's status (429 and 5xx fail over; a
//! `retry_after` is honoured) and returns a stream only once the upstream
//! accepted the request. An error as the stream's first event is caught here.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::time::Instant;

use super::provider::{Admission, FailureKind, Provider};
use super::{
    ChatCall, CompletionsCall, EmbeddingsCall, ExchangeStats, FrameStream, Reply, ResponsesCall,
    Upstream, UpstreamError, retry,
};
use crate::api::metrics::Metrics;
use crate::api::openai::ApiError;
use crate::api::sse::SseParser;
use crate::home::config::Config;
use crate::prompts::PromptStore;
use crate::telemetry::{AttemptSpan, AttemptStart, SpanParent, UsageSource};

/// At most this many providers (the candidate set is a `u64` bit mask).
pub use crate::home::config::MAX_PROVIDERS;

/// How much of a stream is read, at most, to find its first event.
const PEEK_LIMIT: usize = 64 * 1024;

pub struct Router {
    /// Sorted by priority (stable: equal priorities keep the file's order).
    providers: Vec<Arc<Provider>>,
    /// Attempts for one request, over all its candidates.
    attempts: u32,
    /// Until the first byte, over all attempts.
    chain_timeout: Duration,
    /// Consecutive failures that cool a provider.
    failures: u32,
    /// Seconds a cooling provider is skipped.
    cooldown: Duration,
    /// `[aliases]`: a name clients send -> the model routed.
    aliases: std::collections::HashMap<String, String>,
    /// Built from `[[providers]]` (not the `[upstream]` shorthand).
    declared: bool,
}

/// Where one model goes.
struct Route<'a> {
    /// The providers that may serve it, a bit mask over `Router::providers`.
    candidates: u64,
    /// The model name to send upstream, when it is not the one the client sent.
    rewrite: Option<&'a str>,
}

impl Router {
    /// Builds every provider the configuration declares. `prompts` supplies
    /// the `instructions` of Responses API providers.
    pub fn from_config(
        config: &Config,
        metrics: Arc<Metrics>,
        prompts: PromptStore,
    ) -> Result<Router, UpstreamError> {
        let mut providers = Vec::new();
        for settings in config.provider_settings() {
            let mut one_attempt = settings.clone();
            // The router makes the attempts; each provider call is one.
            one_attempt.attempts = 1;
            let upstream = Upstream::build(&one_attempt, config, metrics.clone(), prompts.clone())
                .map_err(|e| UpstreamError::Provider {
                    name: settings.name.clone(),
                    source: Box::new(e),
                })?;
            let handles = metrics.provider(&settings.name);
            providers.push(Arc::new(Provider::new(settings, upstream, handles)));
        }
        if providers.is_empty() || providers.len() > MAX_PROVIDERS {
            return Err(UpstreamError::ProviderCount {
                count: providers.len(),
                max: MAX_PROVIDERS,
            });
        }
        providers.sort_by_key(|p| p.settings.priority);
        Ok(Router {
            providers,
            attempts: config.upstream.attempts.max(1),
            chain_timeout: config.upstream.first_byte_timeout(),
            failures: config.routing.failures.max(1),
            cooldown: Duration::from_secs(config.routing.cooldown),
            aliases: config
                .aliases
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            declared: !config.providers.is_empty(),
        })
    }

    /// `name=url` of every provider (URLs redacted), for the start-up log line.
    pub fn summary(&self) -> String {
        self.providers
            .iter()
            .map(|p| match &p.upstream {
                Upstream::Command(c) => format!("{}={}", p.name, c.display()),
                _ => format!(
                    "{}={}",
                    p.name,
                    crate::support::redact::url(&p.settings.url)
                ),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The task that keeps the model catalog up to date (see [`super::catalog`]);
    /// `None` when no provider discovers its models.
    pub fn catalog(&self, config: &Config) -> Option<super::catalog::Catalog> {
        let catalog = super::catalog::Catalog::new(
            self.providers.clone(),
            config.home.cache_dir().join("models.json"),
            Duration::from_secs(config.routing.catalog_refresh),
        );
        catalog.discovers().then_some(catalog)
    }

    /// Kills every agent CLI process still running (after the shutdown
    /// drain); returns how many there were.
    pub fn kill_processes(&self) -> usize {
        self.providers
            .iter()
            .map(|p| match &p.upstream {
                Upstream::Command(c) => c.registry().kill_all(),
                _ => 0,
            })
            .sum()
    }

    /// Every provider, in priority order.
    pub fn providers(&self) -> &[Arc<Provider>] {
        &self.providers
    }

    /// A Chat Completions request, to the first candidate that answers.
    pub async fn chat(&self, mut call: ChatCall) -> Result<Reply, ApiError> {
        let candidates = self.route_and_rewrite(&mut call.model, &mut call.body)?;
        // Borrowed by the request and by each attempt (which copies it).
        let call = &call;
        let request = Request::new("chat", &call.model, call.stream, &call.body);
        self.dispatch(request, candidates, &call.stats, |provider, span| {
            let mut call = call.clone();
            if span.is_some() {
                trace_headers(Arc::make_mut(&mut call.headers), span);
            }
            async move { provider.upstream.chat(call).await }
        })
        .await
    }

    /// A Responses API request (forwarded as it is), routed by `call.model`.
    pub async fn responses(&self, mut call: ResponsesCall) -> Result<Reply, ApiError> {
        let candidates = self.route_and_rewrite(&mut call.model, &mut call.body)?;
        // Borrowed by the request and by each attempt (which copies it).
        let call = &call;
        let request = Request::new("chat", &call.model, call.stream, &call.body);
        self.dispatch(request, candidates, &call.stats, |provider, span| {
            let mut call = call.clone();
            trace_headers(&mut call.headers, span);
            async move { provider.upstream.responses(call).await }
        })
        .await
    }

    /// An embeddings request (forwarded as it is), routed by `call.model` to
    /// the candidates that serve embeddings (not `api = "anthropic"`).
    pub async fn embeddings(&self, mut call: EmbeddingsCall) -> Result<Reply, ApiError> {
        let candidates = self.route_and_rewrite(&mut call.model, &mut call.body)?;
        let candidates = self.serving(
            &call.model,
            candidates,
            Upstream::serves_embeddings,
            "embeddings",
        )?;
        // Borrowed by the request and by each attempt (which copies it).
        let call = &call;
        let request = Request::new("embeddings", &call.model, false, &call.body);
        self.dispatch(request, candidates, &call.stats, |provider, span| {
            let mut call = call.clone();
            trace_headers(&mut call.headers, span);
            async move { provider.upstream.embeddings(call).await }
        })
        .await
    }

    /// A legacy completions request, routed by `call.model`.
    pub async fn completions(&self, mut call: CompletionsCall) -> Result<Reply, ApiError> {
        let candidates = self.route_and_rewrite(&mut call.model, &mut call.body)?;
        // Borrowed by the request and by each attempt (which copies it).
        let call = &call;
        let request = Request::new("text_completion", &call.model, call.stream, &call.body);
        self.dispatch(request, candidates, &call.stats, |provider, span| {
            let mut call = call.clone();
            trace_headers(&mut call.headers, span);
            async move { provider.upstream.completions(call).await }
        })
        .await
    }

    /// Whether some provider has `passthrough = true`.
    pub fn passes_through(&self) -> bool {
        self.passthrough_mask() != 0
    }

    /// The providers with `passthrough = true`, as a bit mask.
    fn passthrough_mask(&self) -> u64 {
        let mut mask = 0;
        for (i, provider) in self.providers.iter().enumerate() {
            if provider.settings.passthrough && provider.upstream.http().is_some() {
                mask |= 1 << i;
            }
        }
        mask
    }

    /// Where a pass-through request goes: the `passthrough = true` providers
    /// that serve `model` when the request names one (with the model name to
    /// send instead, for an alias or `PROVIDER/MODEL`), else all of them.
    pub fn route_passthrough(
        &self,
        model: Option<&str>,
        path: &str,
    ) -> Result<(u64, Option<String>), ApiError> {
        let mask = self.passthrough_mask();
        if mask == 0 {
            return Err(no_passthrough(path));
        }
        let Some(model) = model else {
            return Ok((mask, None));
        };
        let route = self.route(model)?;
        let candidates = route.candidates & mask;
        if candidates == 0 {
            return Err(ApiError::not_found(format!(
                "no provider with passthrough = true serves the model {model:?}; set \
                 passthrough = true on a [[providers]] entry that serves it"
            ))
            .code("model_not_found")
            .param("model"));
        }
        Ok((candidates, route.rewrite.map(str::to_owned)))
    }

    /// A pass-through request to the first of `candidates` that answers (a
    /// streamed body: one attempt only, it cannot be sent twice).
    pub async fn passthrough(
        &self,
        model: &str,
        candidates: u64,
        call: super::passthrough::PassCall,
    ) -> Result<super::passthrough::Passed, ApiError> {
        let attempts = if call.body.repeatable() {
            self.attempts
        } else {
            1
        };
        let stats = call.stats.clone();
        // The body is streamed: never read for a span.
        let request = Request::new("passthrough", model, false, b"");
        self.dispatch_at_most(attempts, request, candidates, &stats, |provider, span| {
            let mut call = call.clone();
            trace_headers(&mut call.headers, span);
            async move {
                match provider.upstream.http() {
                    Some(http) => http.pass(&call).await,
                    None => Err(ApiError::bad_gateway(
                        "the mock has no other endpoints to pass requests through to",
                    )),
                }
            }
        })
        .await
    }

    /// `candidates` narrowed to the providers whose kind `serves` the route    /// `candidates` narrowed to the providers whose kind `serves` the route
    /// (`what`, for the message); none left: 404 `model_not_found` saying why.
    fn serving(
        &self,
        model: &str,
        candidates: u64,
        serves: fn(&Upstream) -> bool,
        what: &str,
    ) -> Result<u64, ApiError> {
        let mut kept = 0;
        let mut names = Vec::new();
        for (i, provider) in self.providers.iter().enumerate() {
            if candidates & (1 << i) != 0 {
                if serves(&provider.upstream) {
                    kept |= 1 << i;
                } else {
                    names.push(format!(
                        "{} (api = \"{}\")",
                        provider.name,
                        provider.settings.api.as_str()
                    ));
                }
            }
        }
        if kept != 0 {
            return Ok(kept);
        }
        Err(ApiError::not_found(format!(
            "the providers of the model {model:?} do not serve {what}: {}; \
             route it to a provider with api = \"chat\" (or write PROVIDER/MODEL)",
            names.join(", ")
        ))
        .code("model_not_found")
        .param("model"))
    }

    /// Routes a request by `model` and returns its candidates; when an alias or
    /// `PROVIDER/MODEL` names another model, `model` and the body's `model`
    /// field become that one.
    fn route_and_rewrite(&self, model: &mut String, body: &mut Bytes) -> Result<u64, ApiError> {
        let route = self.route(model)?;
        let candidates = route.candidates;
        if let Some(rewritten) = route.rewrite.map(str::to_owned) {
            *body = with_model(body, &rewritten)?;
            *model = rewritten;
        }
        Ok(candidates)
    }

    /// Resolves aliases and `PROVIDER/MODEL`, and finds the candidates.
    /// Allocates nothing for a plain model name.
    fn route<'a>(&'a self, model: &'a str) -> Result<Route<'a>, ApiError> {
        let (routed, aliased) = match self.aliases.get(model) {
            Some(target) => (target.as_str(), true),
            None => (model, false),
        };
        if let Some((prefix, rest)) = routed.split_once('/') {
            if let Some(i) = self.providers.iter().position(|p| &*p.name == prefix) {
                if rest.is_empty() {
                    return Err(ApiError::bad_request(format!(
                        "{model:?} names the provider {prefix:?} but no model after the '/'"
                    ))
                    .code("model_not_found")
                    .param("model"));
                }
                return Ok(Route {
                    candidates: 1 << i,
                    rewrite: Some(rest),
                });
            }
        }
        let candidates = self.candidates(routed);
        if candidates == 0 {
            let via = if aliased {
                format!(" (the alias {model:?} names {routed:?})")
            } else {
                String::new()
            };
            return Err(ApiError::not_found(format!(
                "no provider serves the model {routed:?}{via}; see GET /v1/models, \
                 or write PROVIDER/MODEL"
            ))
            .code("model_not_found")
            .param("model"));
        }
        Ok(Route {
            candidates,
            rewrite: aliased.then_some(routed),
        })
    }

    /// The `/v1/models` list. With `[[providers]]`: the catalog (declared and
    /// discovered models, see [`super::catalog`]). With `[upstream]` alone, as
    /// always: the upstream's own list when it has one (`None`: the caller
    /// serves the configured models).
    pub async fn models(&self) -> Option<Bytes> {
        if self.declared {
            return Some(super::catalog::list(&self.providers));
        }
        for provider in &self.providers {
            if let Some(list) = provider.upstream.models().await {
                return Some(list);
            }
        }
        None
    }

    /// What clients cannot reach now because every provider that serves it is
    /// cooling: entries of the providers' `models` (patterns as written; the ids
    /// a discovering provider reported) and aliases (`NAME (alias of TARGET)`).
    /// Requests for them get 503 `providers_cooling` until one recovers, so
    /// `/health` warns while this is not empty. Empty at once when nothing cools.
    pub fn cooling_models(&self) -> Vec<String> {
        let mut cooling: u64 = 0;
        for (i, provider) in self.providers.iter().enumerate() {
            if provider.health().cooling {
                cooling |= 1 << i;
            }
        }
        if cooling == 0 {
            return Vec::new();
        }
        let all_cooling = |candidates: u64| candidates != 0 && candidates & !cooling == 0;
        let mut names: Vec<String> = Vec::new();
        for provider in &self.providers {
            let entries = if provider.discovers() {
                provider.discovered()
            } else {
                provider.settings.models.clone()
            };
            for entry in entries {
                // A pattern's candidates: the providers that serve what it starts with.
                let probe = entry.strip_suffix('*').unwrap_or(&entry);
                if all_cooling(self.candidates(probe)) && !names.contains(&entry) {
                    names.push(entry);
                }
            }
        }
        let mut aliases: Vec<(&String, &String)> = self.aliases.iter().collect();
        aliases.sort();
        for (alias, target) in aliases {
            if self
                .route(alias)
                .is_ok_and(|route| all_cooling(route.candidates))
            {
                names.push(format!("{alias} (alias of {target})"));
            }
        }
        names
    }

    /// The providers that serve `model`, as a bit mask over `self.providers`.
    fn candidates(&self, model: &str) -> u64 {
        let mut mask = 0;
        for (i, provider) in self.providers.iter().enumerate() {
            if provider.serves(model) {
                mask |= 1 << i;
            }
        }
        mask
    }

    /// The next provider to try among `candidates` minus `excluded`: the
    /// best-ranked available one of the lowest priority that has one.
    fn pick(&self, candidates: u64, excluded: u64, used: &[u8; MAX_PROVIDERS]) -> Option<usize> {
        let mut best: Option<usize> = None;
        let mut tied_weight: u64 = 0;
        for (i, provider) in self.providers.iter().enumerate() {
            let bit = 1u64 << i;
            if candidates & bit == 0
                || excluded & bit != 0
                || u32::from(used[i]) >= provider.settings.attempts
                || !provider.looks_available()
            {
                continue;
            }
            let weight = u64::from(provider.settings.weight.max(1));
            let Some(b) = best else {
                best = Some(i);
                tied_weight = weight;
                continue;
            };
            let current = &self.providers[b];
            if provider.settings.priority > current.settings.priority {
                break;
            }
            // Fewer in flight per unit of weight wins: compare a/wa with b/wb.
            let mine = u64::from(provider.in_flight()) * u64::from(current.settings.weight.max(1));
            let theirs = u64::from(current.in_flight()) * weight;
            if mine < theirs {
                best = Some(i);
                tied_weight = weight;
            } else if mine == theirs {
                tied_weight += weight;
                if fastrand::u64(..tied_weight) < weight {
                    best = Some(i);
                }
            }
        }
        best
    }

    /// Runs attempts until one answers, the budget is spent or the deadline passes.
    async fn dispatch<T, F, Fut>(
        &self,
        request: Request<'_>,
        candidates: u64,
        stats: &Arc<ExchangeStats>,
        call: F,
    ) -> Result<T, ApiError>
    where
        T: Answer,
        F: FnMut(Arc<Provider>, Option<&AttemptSpan>) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        self.dispatch_at_most(self.attempts, request, candidates, stats, call)
            .await
    }

    /// [`Router::dispatch`] with at most `max_attempts` attempts.
    async fn dispatch_at_most<T, F, Fut>(
        &self,
        max_attempts: u32,
        request: Request<'_>,
        candidates: u64,
        stats: &Arc<ExchangeStats>,
        mut call: F,
    ) -> Result<T, ApiError>
    where
        T: Answer,
        F: FnMut(Arc<Provider>, Option<&AttemptSpan>) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let (model, stream) = (request.model, request.stream);
        let attempts_allowed = max_attempts.clamp(1, self.attempts.max(1));
        // The chain's start: also the first attempt's (one clock read for both).
        let begun = Instant::now();
        let deadline = begun + self.chain_timeout;
        let mut first_start = Some(begun);
        let mut used = [0u8; MAX_PROVIDERS];
        let mut tried: u64 = 0;
        let mut attempts = 0u32;
        let mut last: Option<(ApiError, FailureKind)> = None;
        let mut skipped_full = false;
        // The provider of the last failed attempt, until the next attempt starts.
        let mut failed_at: Option<usize> = None;
        while attempts < attempts_allowed {
            let Some(index) = self.pick(candidates, tried, &used) else {
                // Everyone this round was tried: another round after a
                // backoff, unless the last failure was a timeout.
                let retry = tried != 0
                    && matches!(
                        last,
                        Some((_, FailureKind::Failed | FailureKind::RateLimited))
                    )
                    && self.pick(candidates, 0, &used).is_some();
                if !retry {
                    break;
                }
                tried = 0;
                let retry_after = last
                    .as_ref()
                    .and_then(|(e, _)| e.retry_after)
                    .map(Duration::from_secs);
                let wait = retry::backoff(attempts, retry_after);
                if Instant::now() + wait >= deadline {
                    break;
                }
                tokio::time::sleep(wait).await;
                continue;
            };
            let provider = &self.providers[index];
            tried |= 1 << index;
            let probe = match provider.admit() {
                Admission::Open => false,
                Admission::Probe => true,
                Admission::Full => {
                    skipped_full = true;
                    continue;
                }
                Admission::Cooling(_) => continue,
            };
            let mut probe = ProbeGuard {
                provider,
                armed: probe,
            };
            if let Some(previous) = failed_at.take() {
                // Moving on from a failed attempt.
                self.providers[previous].metrics.failovers.inc();
                stats.failovers.fetch_add(1, Ordering::Relaxed);
            }
            attempts += 1;
            used[index] = used[index].saturating_add(1);
            provider.metrics.requests.inc();
            let in_flight = self.providers[index].enter();
            // Off, no span: one check of an empty cell.
            let span = stats
                .trace
                .get()
                .map(|parent| request.attempt_span(parent, provider, attempts, stats));
            let started = first_start.take().unwrap_or_else(Instant::now);
            let outcome = tokio::time::timeout_at(deadline, async {
                match call(provider.clone(), span.as_ref()).await {
                    Ok(answer) if stream => answer.first_event().await,
                    other => Attempt::Done(other),
                }
            })
            .await;
            let elapsed = started.elapsed();
            provider.metrics.latency.observe(elapsed.as_secs_f64());
            let (error, kind) = match outcome {
                Err(_) => {
                    if let Some(span) = span {
                        span.failed("timeout");
                    }
                    let e = ApiError::gateway_timeout(format!(
                        "no provider answered within {} s (upstream.first_byte_timeout, \
                         which covers every attempt); the last one tried was {:?}",
                        self.chain_timeout.as_secs(),
                        provider.name
                    ));
                    probe.failed(self, FailureKind::Timeout, &e);
                    stats.set_provider(&self.providers[index]);
                    return Err(e);
                }
                Ok(Attempt::Done(Ok(mut reply))) => {
                    probe.succeeded();
                    stats.set_provider(&self.providers[index]);
                    if stream && reply.streamed() {
                        // The stream's first event has arrived.
                        provider
                            .metrics
                            .time_to_first_token
                            .observe(elapsed.as_secs_f64());
                    }
                    reply = reply.metered(stats);
                    if let Some(span) = span {
                        reply = reply.end_span(span, elapsed, stats.clone());
                    }
                    return Ok(reply.hold(in_flight));
                }
                Ok(Attempt::Done(Err(e))) => {
                    if let Some(span) = span {
                        // The provider's own status where the error renders one.
                        match e.upstream_status {
                            Some(status) => span.failed(&status.to_string()),
                            None if failure_kind(&e) == Some(FailureKind::Timeout) => {
                                span.failed("timeout");
                            }
                            None => span.failed(e.status.as_str()),
                        }
                    }
                    match failure_kind(&e) {
                        None => {
                            probe.succeeded();
                            stats.set_provider(&self.providers[index]);
                            return Err(e);
                        }
                        Some(kind) => (e, kind),
                    }
                }
                Ok(Attempt::ErrorFirst { answer, message }) => {
                    if let Some(span) = span {
                        span.failed("error_event");
                    }
                    let e = ApiError::bad_gateway(format!(
                        "provider {:?} answered with an error event: {message}",
                        provider.name
                    ));
                    probe.failed(self, FailureKind::Failed, &e);
                    // Fail over only to another provider ready now; else the
                    // client gets the stream as it came.
                    let more = attempts < attempts_allowed
                        && self.pick(candidates, tried, &used).is_some();
                    if !more {
                        stats.set_provider(&self.providers[index]);
                        return Ok(answer.metered(stats).hold(in_flight));
                    }
                    failed_at = Some(index);
                    tracing::warn!(provider = %provider.name, error = %message,
                        "stream began with an error event: failing over");
                    last = Some((e, FailureKind::Failed));
                    continue;
                }
            };
            probe.failed(self, kind, &error);
            failed_at = Some(index);
            if attempts < attempts_allowed {
                tracing::debug!(provider = %provider.name, error = %error.message,
                    "attempt failed: trying the next candidate");
            }
            last = Some((error, kind));
        }
        if let Some((mut error, _)) = last {
            if let Some(index) = failed_at {
                stats.set_provider(&self.providers[index]);
            }
            if attempts > 1 {
                error.message = format!("{} (after {attempts} attempts)", error.message);
            }
            return Err(error);
        }
        // A provider at its own max_concurrent is never picked, so it is
        // seen here: busy, not cooling.
        let full = skipped_full
            || self.providers.iter().enumerate().any(|(i, p)| {
                candidates & (1 << i) != 0 && p.is_full() && p.cooling_for().is_none()
            });
        Err(self.none_available(model, candidates, full))
    }

    /// Every candidate was cooling (or full): 503 with the earliest recovery.
    fn none_available(&self, model: &str, candidates: u64, full: bool) -> ApiError {
        let mut earliest: Option<Duration> = None;
        let mut names = Vec::new();
        for (i, provider) in self.providers.iter().enumerate() {
            if candidates & (1 << i) != 0 {
                names.push(provider.name.to_string());
                let wait = provider.cooling_for().unwrap_or(Duration::from_secs(1));
                earliest = Some(earliest.map_or(wait, |e: Duration| e.min(wait)));
            }
        }
        let secs = earliest.unwrap_or_default().as_secs_f64().ceil().max(1.0) as u64;
        if full {
            return ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                format!(
                    "every provider for {model:?} ({}) is busy or cooling down; retry shortly",
                    names.join(", ")
                ),
            )
            .code("providers_busy")
            .retry_after(1);
        }
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_error",
            format!(
                "every provider for {model:?} ({}) is cooling down after failures; \
                 the first recovers in {secs} s",
                names.join(", ")
            ),
        )
        .code("providers_cooling")
        .retry_after(secs)
    }
}

/// 404 for a pass-through path when no provider has `passthrough = true`.
pub fn no_passthrough(path: &str) -> ApiError {
    ApiError::not_found(format!(
        "no route for {}: warden serves chat, responses, messages, embeddings and completions \
         itself and passes other /v1/ paths only to providers with passthrough = true \
         (set it on a [[providers]] entry, or upstream.passthrough = true)",
        crate::support::redact::client(path)
    ))
}

/// What the router knows of a request, for its attempts and their spans.
#[derive(Clone, Copy)]
struct Request<'a> {
    /// `gen_ai.operation.name`.
    operation: &'static str,
    /// The model sent upstream.
    model: &'a str,
    stream: bool,
    /// The body sent upstream (read for a span only with `capture_content`).
    body: &'a [u8],
}

impl<'a> Request<'a> {
    fn new(operation: &'static str, model: &'a str, stream: bool, body: &'a [u8]) -> Request<'a> {
        Request {
            operation,
            model,
            stream,
            body,
        }
    }

    /// The CLIENT span of attempt number `attempt` at `provider`.
    fn attempt_span(
        &self,
        parent: &SpanParent,
        provider: &Provider,
        attempt: u32,
        stats: &ExchangeStats,
    ) -> AttemptSpan {
        parent.attempt(AttemptStart {
            operation: self.operation,
            model: self.model,
            provider: &provider.name,
            system: provider.genai_system(),
            server: provider
                .server
                .as_ref()
                .map(|(host, port)| (host.as_str(), *port)),
            attempt,
            stream: self.stream,
            key: stats.key_name.get().map(|k| &**k),
            body: self.body,
        })
    }
}

/// Puts the attempt span's own context in the headers that go to the
/// provider (`traceparent`, and `tracestate` when the trace has one).
fn trace_headers(headers: &mut axum::http::HeaderMap, span: Option<&AttemptSpan>) {
    use axum::http::HeaderValue;
    let Some(span) = span else { return };
    if let Ok(value) = HeaderValue::from_str(&span.traceparent()) {
        headers.insert(crate::telemetry::propagation::TRACEPARENT, value);
    }
    if let Some(Ok(value)) = span.tracestate().map(|s| HeaderValue::from_str(&s)) {
        headers.insert(crate::telemetry::propagation::TRACESTATE, value);
    }
}

/// The request body with `model` replaced (aliases and `PROVIDER/MODEL`);
/// every other field is kept as it was.
pub fn with_model(body: &Bytes, model: &str) -> Result<Bytes, ApiError> {
    let mut value: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)
        .map_err(|e| {
            ApiError::bad_request(format!("request body is not a JSON object: {e}"))
                .code("invalid_request")
        })?;
    value.insert("model".into(), serde_json::Value::String(model.into()));
    serde_json::to_vec(&value)
        .map(Bytes::from)
        .map_err(|e| ApiError::bad_request(format!("cannot rewrite the request: {e}")))
}

/// Whether an attempt's error is a failure that moves on to the next candidate.
fn failure_kind(e: &ApiError) -> Option<FailureKind> {
    match e.status {
        StatusCode::TOO_MANY_REQUESTS => Some(FailureKind::RateLimited),
        StatusCode::GATEWAY_TIMEOUT | StatusCode::REQUEST_TIMEOUT => Some(FailureKind::Timeout),
        StatusCode::NOT_IMPLEMENTED => None,
        s if s.is_server_error() => Some(FailureKind::Failed),
        _ => None,
    }
}

/// Holds the half-open probe slot until the attempt's verdict; dropping it
/// without one (the client went away) gives the slot back.
struct ProbeGuard<'a> {
    provider: &'a Provider,
    armed: bool,
}

impl ProbeGuard<'_> {
    fn succeeded(&mut self) {
        self.provider.succeeded(self.armed);
        self.armed = false;
    }

    fn failed(&mut self, router: &Router, kind: FailureKind, error: &ApiError) {
        self.provider.failed(
            kind,
            error.retry_after.map(Duration::from_secs),
            &error.message,
            self.armed,
            router.failures,
            router.cooldown,
        );
        self.armed = false;
    }
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.provider.abandon_probe();
        }
    }
}

/// What a provider attempt answers, as the router's one dispatch path needs
/// it: [`Reply`] for the routes it understands, a pass-through answer
/// (`super::passthrough::Passed`) for the others.
pub trait Answer: Sized + Send {
    /// For a streamed answer: read up to its first event, so an error there
    /// fails over like a failure before the first byte. Others are done.
    fn first_event(self) -> impl Future<Output = Attempt<Self>> + Send {
        std::future::ready(Attempt::Done(Ok(self)))
    }
    /// The answer keeps its provider's in-flight count until it is over.
    fn hold(self, in_flight: super::provider::InFlight) -> Self;
    /// A metered exchange's answer, counted as it streams
    /// ([`super::metering`]); unmetered ones are untouched.
    fn metered(self, _stats: &Arc<ExchangeStats>) -> Self {
        self
    }
    /// Whether it is a stream (its first event has arrived).
    fn streamed(&self) -> bool {
        false
    }
    /// The attempt's span ends with this answer (a stream's when it ends);
    /// `first_chunk` is the time from the attempt's start until now.
    fn end_span(
        self,
        span: AttemptSpan,
        _first_chunk: std::time::Duration,
        usage: Arc<ExchangeStats>,
    ) -> Self {
        span.answered(b"", usage.as_ref());
        self
    }
}

impl Answer for Reply {
    fn streamed(&self) -> bool {
        matches!(self, Reply::Stream(_))
    }

    fn end_span(
        self,
        span: AttemptSpan,
        first_chunk: std::time::Duration,
        usage: Arc<ExchangeStats>,
    ) -> Reply {
        match self {
            Reply::Complete(body) => {
                span.answered(&body, usage.as_ref());
                Reply::Complete(body)
            }
            Reply::Stream(frames) => {
                let usage: Arc<dyn UsageSource> = usage;
                Reply::Stream(Box::pin(span.stream(frames, first_chunk, usage)))
            }
        }
    }

    async fn first_event(self) -> Attempt<Reply> {
        match self {
            Reply::Stream(frames) => first_event(frames).await,
            complete => Attempt::Done(Ok(complete)),
        }
    }

    fn metered(self, stats: &Arc<ExchangeStats>) -> Reply {
        match self {
            Reply::Stream(frames) if stats.is_metered() => {
                Reply::Stream(super::metering::meter(frames, stats.clone()))
            }
            other => other,
        }
    }

    /// A stream keeps its provider's in-flight count until it ends.
    fn hold(self, in_flight: super::provider::InFlight) -> Reply {
        match self {
            Reply::Complete(body) => Reply::Complete(body),
            Reply::Stream(frames) => Reply::Stream(Box::pin(frames.map(move |frame| {
                let _held = &in_flight;
                frame
            }))),
        }
    }
}

pub enum Attempt<T> {
    Done(Result<T, ApiError>),
    /// A stream whose first event is an error (what was read is still in `answer`).
    ErrorFirst {
        answer: T,
        message: String,
    },
}

/// Reads a stream up to its first complete event; an error there counts as a
/// failure before the first byte. The stream is handed back whole either way.
async fn first_event(mut frames: FrameStream) -> Attempt<Reply> {
    // Any line ending the SSE specification allows (CRLF, LF, CR) ends it.
    let mut parser = SseParser::new();
    let mut seen = 0;
    let mut read: Vec<Bytes> = Vec::with_capacity(1);
    let message = loop {
        let Some(frame) = frames.next().await else {
            break None;
        };
        let events = parser.feed(&frame);
        seen += frame.len();
        read.push(frame);
        if let Some(first) = events.first() {
            break error_data(&first.data);
        }
        // Only a comment so far (a keep-alive): the stream has begun well.
        if !parser.mid_event() || seen > PEEK_LIMIT {
            break None;
        }
    };
    let rest = futures_util::stream::iter(read).chain(frames);
    let frames: FrameStream = Box::pin(rest);
    match message {
        Some(message) => Attempt::ErrorFirst {
            answer: Reply::Stream(frames),
            message,
        },
        None => Attempt::Done(Ok(Reply::Stream(frames))),
    }
}

/// The message in an event's `data` when the event is an error (`{"error":
/// ...}` or a Responses `error` / `response.failed` event).
fn error_data(data: &str) -> Option<String> {
    if !data.contains("error") && !data.contains("failed") {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(data).ok()?;
    let error = if value.get("error").is_some_and(|e| !e.is_null()) {
        &value["error"]
    } else if value["type"] == "response.failed" {
        &value["response"]["error"]
    } else if value["type"] == "error" {
        &value
    } else {
        return None;
    };
    Some(
        error["message"]
            .as_str()
            .or_else(|| error.as_str())
            .unwrap_or("an error event")
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error message of the first event of `stream`, if it is an error.
    fn error_message(stream: &[u8]) -> Option<String> {
        let mut parser = SseParser::new();
        let mut events = parser.feed(stream);
        events.extend(parser.finish());
        error_data(&events.first()?.data)
    }

    #[test]
    fn error_events_are_recognised() {
        assert_eq!(
            error_message(br#"data: {"error":{"message":"quota"}}"#).as_deref(),
            Some("quota")
        );
        assert_eq!(
            error_message(
                br#"event: response.failed
data: {"type":"response.failed","response":{"error":{"message":"boom"}}}"#
            )
            .as_deref(),
            Some("boom")
        );
        assert_eq!(
            error_message(br#"data: {"choices":[{"delta":{"content":"error"}}]}"#),
            None
        );
        assert_eq!(error_message(b": keep-alive"), None);
        assert_eq!(error_message(br#"data: {"error":null,"choices":[]}"#), None);
    }

    #[tokio::test]
    async fn the_first_event_is_found_across_frames_and_the_stream_kept_whole() {
        let parts = vec![
            Bytes::from_static(b"data: {\"err"),
            Bytes::from_static(b"or\":{\"message\":\"x\"}}\n"),
            Bytes::from_static(b"\ndata: [DONE]\n\n"),
        ];
        let frames: FrameStream = Box::pin(futures_util::stream::iter(parts.clone()));
        let Attempt::ErrorFirst {
            answer: Reply::Stream(frames),
            message,
        } = first_event(frames).await
        else {
            panic!("an error first")
        };
        assert_eq!(message, "x");
        let all: Vec<Bytes> = frames.collect().await;
        assert_eq!(all.concat(), parts.concat());
    }

    #[tokio::test]
    async fn an_error_first_is_seen_whatever_the_line_endings() {
        for ending in ["\r\n", "\r", "\n"] {
            let error = format!("data: {{\"error\":{{\"message\":\"x\"}}}}{ending}{ending}");
            let frames: FrameStream = Box::pin(futures_util::stream::iter(vec![
                Bytes::from(error),
                Bytes::from_static(b"data: [DONE]\n\n"),
            ]));
            let Attempt::ErrorFirst { message, .. } = first_event(frames).await else {
                panic!("an error first, ending {ending:?}")
            };
            assert_eq!(message, "x");
        }
        // A keep-alive comment first: the stream has begun well, at once.
        let frames: FrameStream = Box::pin(futures_util::stream::iter(vec![Bytes::from_static(
            b": keep-alive\r\r",
        )]));
        assert!(matches!(first_event(frames).await, Attempt::Done(Ok(_))));
    }
}
