//! The one exponential backoff with jitter, shared by upstream retries and
//! prompt fetches.

use std::time::Duration;

/// The wait before retry `attempt` (counting from 1): a window of `base` doubling
/// per attempt, capped at `cap`, of which a random 50–100% is taken, so clients
/// that failed together do not retry together.
pub fn exponential_jitter(base: Duration, attempt: u32, cap: Duration) -> Duration {
    let window = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(cap);
    window.mul_f64(0.5 + fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_within_half_to_full_window_and_stays_under_the_cap() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(1);
        for (attempt, window_ms) in [
            (0, 100),
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            for _ in 0..50 {
                let wait = exponential_jitter(base, attempt, cap);
                let window = Duration::from_millis(window_ms);
                assert!(
                    wait >= window / 2 && wait <= window,
                    "attempt {attempt}: {wait:?}"
                );
            }
        }
    }
}
