//! `server.max_body_memory`: one budget of bytes for every request body held in
//! memory at once, over all connections together (docs/contract.md §10).
//!
//! Each request body draws on the budget before it is read further: a
//! connection reserves room for its next chunk (the rest of a declared
//! `Content-Length`, at most [`CHUNK`]) and only then lets the body read from the
//! socket. When the budget is spent the body is simply not read (the client
//! meets TCP backpressure) until another request gives bytes back; one still
//! waiting at its `server.body_timeout` is answered 503 with `Retry-After`
//! ([`BodyMemoryFull`]). A request's bytes are given back when its handler has
//! answered (for a stream: when the answer starts), so the budget covers the
//! body while it is parsed and sent upstream, not only while it arrives.
//!
//! The fast path (the budget has room) is one `try_acquire` per chunk on a
//! semaphore and one small allocation per request (the [`Lease`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Semaphore;

/// The most one reservation asks for (a chunk of a body that arrives larger
/// reserves the rest before it is handed on; the HTTP/1 server connection
/// reads at most 16 KiB at once).
pub const CHUNK: usize = super::MAX_HEAD_BYTES;

/// The budget of one gateway.
pub struct BodyBudget {
    permits: Arc<Semaphore>,
    total: usize,
}

impl BodyBudget {
    pub fn new(total: usize) -> BodyBudget {
        BodyBudget {
            permits: Arc::new(Semaphore::new(total.min(Semaphore::MAX_PERMITS))),
            total,
        }
    }

    /// A new lease, holding nothing yet.
    pub fn lease(&self) -> Arc<Lease> {
        Arc::new(Lease {
            permits: self.permits.clone(),
            held: AtomicUsize::new(0),
        })
    }

    /// Bytes held now (reserved or holding body bytes), for `/metrics`.
    pub fn held(&self) -> usize {
        self.total
            .min(Semaphore::MAX_PERMITS)
            .saturating_sub(self.permits.available_permits())
    }

    /// `server.max_body_memory`.
    pub fn total(&self) -> usize {
        self.total
    }
}

/// What one request holds of the budget; given back when the last handle to it
/// is dropped (the body, and the connection's call once the handler answered).
pub struct Lease {
    permits: Arc<Semaphore>,
    held: AtomicUsize,
}

/// A wait for room in the budget.
pub type Acquire = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<tokio::sync::OwnedSemaphorePermit, tokio::sync::AcquireError>,
            > + Send,
    >,
>;

impl Lease {
    /// Takes `n` bytes now if the budget has them (and nobody is waiting first).
    pub fn try_take(&self, n: usize) -> bool {
        let Ok(count) = u32::try_from(n) else {
            return false;
        };
        match self.permits.try_acquire_many(count) {
            Ok(permit) => {
                permit.forget();
                self.held.fetch_add(n, Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }

    /// Waits for `n` bytes (first come, first served); hand the permit to
    /// [`Lease::took`].
    pub fn wait_for(&self, n: usize) -> Acquire {
        let count = u32::try_from(n).unwrap_or(u32::MAX);
        Box::pin(self.permits.clone().acquire_many_owned(count))
    }

    /// Counts a permit [`Lease::wait_for`] obtained as held by this lease.
    pub fn took(&self, permit: tokio::sync::OwnedSemaphorePermit) -> usize {
        let n = permit.num_permits();
        permit.forget();
        self.held.fetch_add(n, Ordering::Relaxed);
        n
    }

    /// Gives `n` held bytes back early (a reservation the body did not use).
    pub fn give_back(&self, n: usize) {
        if n > 0 {
            self.held.fetch_sub(n, Ordering::Relaxed);
            self.permits.add_permits(n);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let held = *self.held.get_mut();
        if held > 0 {
            self.permits.add_permits(held);
        }
    }
}

/// A body that could not get room in `server.max_body_memory` within
/// `server.body_timeout`: 503 with `Retry-After`.
#[derive(Debug, thiserror::Error)]
#[error(
    "request bodies already hold server.max_body_memory ({total} bytes) and this one got no room \
     within server.body_timeout ({secs} s); retry shortly"
)]
pub struct BodyMemoryFull {
    pub total: usize,
    pub secs: u64,
}

impl BodyMemoryFull {
    /// Whether `error` (an extractor's rejection) was caused by a full budget.
    pub fn caused<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyMemoryFull> {
        let mut current = Some(error);
        while let Some(e) = current {
            if let Some(full) = e.downcast_ref::<BodyMemoryFull>() {
                return Some(full);
            }
            current = e.source();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lease_gives_back_what_it_held_when_dropped() {
        let budget = BodyBudget::new(100);
        let a = budget.lease();
        assert!(a.try_take(70));
        assert_eq!(budget.held(), 70);
        let b = budget.lease();
        assert!(!b.try_take(50), "only 30 left");
        let mut wait = b.wait_for(50);
        assert!(futures_util::poll!(wait.as_mut()).is_pending());
        a.give_back(10);
        assert!(futures_util::poll!(wait.as_mut()).is_pending(), "40 of 50");
        drop(a);
        let permit = wait.await.unwrap();
        assert_eq!(b.took(permit), 50);
        assert_eq!(budget.held(), 50);
        drop(b);
        assert_eq!(budget.held(), 0);
    }
}
