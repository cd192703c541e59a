//! Retry policy for upstream calls: exponential backoff with jitter, honouring
//! the upstream's `Retry-After`. Retries only ever happen before the client has
//! seen a byte of the answer; the callers enforce that by retrying only while
//! waiting for response headers.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

/// The first backoff; each further attempt doubles it.
const BASE: Duration = Duration::from_millis(100);
/// No single wait is longer than this, whatever `Retry-After` says.
const MAX_WAIT: Duration = Duration::from_secs(10);

/// Statuses worth another attempt: rate limits and server-side failures.
pub fn is_retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
}

/// `Retry-After` as a duration: delta-seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// How long to wait before attempt `attempt + 1` (attempt counts from 1): full
/// jitter over an exponential window, but never less than `Retry-After`.
pub fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    crate::support::backoff::exponential_jitter(BASE, attempt, MAX_WAIT)
        .max(retry_after.unwrap_or_default())
        .min(MAX_WAIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_honours_retry_after() {
        assert!(backoff(1, None) <= Duration::from_millis(100));
        assert!(backoff(3, None) >= Duration::from_millis(200));
        assert_eq!(
            backoff(1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(backoff(1, Some(Duration::from_secs(3600))), MAX_WAIT);
    }

    #[test]
    fn parses_retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
    }
}
