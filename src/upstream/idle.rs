//! The idle side of the keep-alive pool of [`super::streams`]: at most
//! `max_idle` idle connections to one upstream, the most recently used reused
//! first, none kept idle for longer than about the idle timeout (a sweep every
//! half of it closes those idle since the sweep before last, and those the
//! upstream closed), and no sweep task while nothing is idle.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

/// A connection that can wait idle in a pool.
pub trait Connection: Send + 'static {
    /// Whether it can still carry a request (the upstream has not closed it).
    fn is_open(&self) -> bool;
}

/// The idle connections to one upstream.
pub struct Idle<C> {
    state: Mutex<State<C>>,
    max_idle: usize,
    /// Half the idle timeout: how often the sweep runs.
    sweep_every: Duration,
}

struct State<C> {
    /// Each with the sweep count when it was put back; the last is reused first.
    conns: Vec<(C, u64)>,
    sweeps: u64,
    /// Whether a sweep task is running (it stops when nothing is idle).
    sweeping: bool,
}

impl<C: Connection> Idle<C> {
    /// At most `max_idle` idle connections, none idle longer than about `idle_timeout`.
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Arc<Idle<C>> {
        Arc::new(Idle {
            state: Mutex::new(State {
                conns: Vec::new(),
                sweeps: 0,
                sweeping: false,
            }),
            max_idle,
            sweep_every: idle_timeout / 2,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<C>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection that is still open.
    pub fn take(&self) -> Option<C> {
        let mut state = self.lock();
        while let Some((conn, _)) = state.conns.pop() {
            if conn.is_open() {
                return Some(conn);
            }
        }
        None
    }

    /// A connection whose answer was read to its end: kept for the next
    /// request, unless `max_idle` are idle already.
    pub fn put(self: &Arc<Self>, conn: C) {
        let mut state = self.lock();
        if state.conns.len() >= self.max_idle {
            return;
        }
        let sweeps = state.sweeps;
        state.conns.push((conn, sweeps));
        if !state.sweeping {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                state.sweeping = true;
                runtime.spawn(sweep(Arc::downgrade(self), self.sweep_every));
            }
        }
    }

    /// Idle connections now (for tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().conns.len()
    }

    /// `f` of the idle connections (each with its sweep count) and whether a
    /// sweep task runs (for tests).
    #[cfg(test)]
    pub fn inspect<R>(&self, f: impl FnOnce(&[(C, u64)], bool) -> R) -> R {
        let state = self.lock();
        f(&state.conns, state.sweeping)
    }
}

/// Every `every`, closes the connections idle since before the previous sweep
/// (so none stays idle for more than twice `every`) and those the upstream
/// closed; stops when none is idle or the pool is gone.
async fn sweep<C: Connection>(idle: Weak<Idle<C>>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(idle) = idle.upgrade() else { return };
        let mut state = idle.lock();
        state.sweeps += 1;
        let now = state.sweeps;
        state
            .conns
            .retain(|(conn, since)| now - since < 2 && conn.is_open());
        if state.conns.is_empty() {
            state.sweeping = false;
            return;
        }
    }
}
