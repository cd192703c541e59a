//! A prompt server for tests: `GET /prompts/{name}` answers a known text per
//! name, or fails, or hangs, as the test switches it (an axum app on 127.0.0.1:0).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptMode {
    /// 200 with [`remote_text`].
    Up,
    /// 503 (a retryable failure).
    Down,
    /// Never answers: the proxy's `prompts.fetch_timeout` must end the fetch.
    Slow,
}

/// What the server answers for a prompt name.
pub fn remote_text(name: &str) -> String {
    format!("REMOTE PROMPT {name}: you are a tested assistant.\n")
}

/// The SHA-256 of [`remote_text`], as `prompts.source.sha256` wants it.
pub fn remote_sha256(name: &str) -> String {
    hex::encode(Sha256::digest(remote_text(name).as_bytes()))
}

pub struct PromptState {
    mode: Mutex<PromptMode>,
    pub hits: AtomicUsize,
}

pub struct PromptServer {
    pub addr: SocketAddr,
    pub state: Arc<PromptState>,
}

async fn prompt(State(st): State<Arc<PromptState>>, Path(name): Path<String>) -> Response {
    st.hits.fetch_add(1, Ordering::SeqCst);
    let mode = *st.mode.lock().unwrap();
    match mode {
        PromptMode::Up => (
            [("content-type", "text/markdown; charset=utf-8")],
            remote_text(&name),
        )
            .into_response(),
        PromptMode::Down => {
            (StatusCode::SERVICE_UNAVAILABLE, "prompt server is down").into_response()
        }
        PromptMode::Slow => {
            tokio::time::sleep(std::time::Duration::from_secs(120)).await;
            "too late".into_response()
        }
    }
}

impl PromptServer {
    pub fn start(mode: PromptMode) -> PromptServer {
        let state = Arc::new(PromptState {
            mode: Mutex::new(mode),
            hits: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/prompts/{name}", get(prompt))
            .with_state(state.clone());
        PromptServer {
            addr: serve(app),
            state,
        }
    }

    /// The URL to configure as a `[[prompts.source]]`'s `url`.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/prompts/{name}", self.addr)
    }

    pub fn set_mode(&self, mode: PromptMode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }
}

/// Serves `app` on 127.0.0.1:0 from its own runtime thread (so it works from
/// sync and async tests) and returns the address.
pub fn serve(app: Router) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    addr
}
