//! W3C Trace Context (`traceparent`, `tracestate`) in and out.
//!
//! In: the headers of an HTTP request or a NATS message, read through a lookup
//! function so both ingresses share one parser (the SDK's
//! [`TraceContextPropagator`]). Out: the attempt span's own context, written as
//! the two header values a provider receives.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// The header names, lower case as HTTP/2 spells them.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// The values live for `'a`, so they outlive any borrow of the lookup itself.
struct Lookup<'a, F>(F, std::marker::PhantomData<&'a str>);

impl<'a, F: Fn(&str) -> Option<&'a str>> Extractor for Lookup<'a, F> {
    fn get(&self, key: &str) -> Option<&str> {
        (self.0)(key)
    }
    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

/// The remote span context a request carries, when its `traceparent` is valid.
pub fn extract<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<SpanContext> {
    // No traceparent: skip the propagator (and its Context) altogether.
    get(TRACEPARENT)?;
    let cx = TraceContextPropagator::new().extract(&Lookup(get, std::marker::PhantomData));
    let remote = cx.span().span_context().clone();
    remote.is_valid().then_some(remote)
}

/// The `traceparent` value for `sc` (version 00).
pub fn traceparent(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// The `tracestate` value for `sc`, when it has one.
pub fn tracestate(sc: &SpanContext) -> Option<String> {
    let header = sc.trace_state().header();
    (!header.is_empty()).then_some(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_read_and_written_back_the_same() {
        let value = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let sc = extract(|k| match k {
            TRACEPARENT => Some(value),
            TRACESTATE => Some("congo=t61rcWkgMzE"),
            _ => None,
        })
        .unwrap();
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(traceparent(&sc), value);
        assert_eq!(tracestate(&sc).as_deref(), Some("congo=t61rcWkgMzE"));
    }

    #[test]
    fn invalid_or_missing_traceparents_are_ignored() {
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert!(
                extract(|k| (k == TRACEPARENT).then_some(bad)).is_none(),
                "{bad:?}"
            );
        }
        assert!(extract(|_| None).is_none());
    }
}
