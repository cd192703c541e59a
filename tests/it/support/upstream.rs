//! Real HTTP upstreams for tests: small axum apps on 127.0.0.1:0 whose behaviour
//! the test scripts (fast, slow, failing then recovering, streaming, dropping
//! mid-stream, hanging), and which record what they received.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{Notify, mpsc};

/// How the upstream answers `POST /chat/completions`.
#[derive(Clone)]
pub enum Behaviour {
    /// A fixed chat.completion echoing nothing in particular.
    Fast,
    /// Answers after the test calls `release()` (signals `arrived` first).
    Gated,
    /// Answers `status` for the first `n` requests, then like `Fast`.
    FailThenRecover { n: usize, status: u16 },
    /// Always answers this status.
    Always(u16),
    /// Never answers.
    Hang,
    /// SSE: one chunk, then waits for `release()`, then the rest and [DONE].
    GatedStream,
    /// SSE: one chunk, then, after `release()`, the connection breaks.
    DropMidStream,
    /// SSE: one chunk, then nothing for ever (reports when the client went away).
    StallStream,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub state: Arc<UpstreamState>,
    _runtime: Option<std::thread::JoinHandle<()>>,
}

pub struct UpstreamState {
    behaviour: Behaviour,
    pub hits: AtomicUsize,
    pub bodies: Mutex<Vec<Bytes>>,
    pub headers: Mutex<Vec<HeaderMap>>,
    /// Notified when a request arrives (Gated, GatedStream, StallStream).
    pub arrived: Notify,
    gate: Notify,
    /// Receives a message when a streamed body is dropped (client went away).
    dropped_tx: mpsc::UnboundedSender<()>,
    pub dropped_rx: Mutex<Option<mpsc::UnboundedReceiver<()>>>,
}

impl UpstreamState {
    /// Lets Gated/GatedStream answers continue.
    pub fn release(&self) {
        self.gate.notify_one();
    }
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

struct DropSignal(mpsc::UnboundedSender<()>);
impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

pub const COMPLETION: &str = r#"{"id":"chatcmpl-up","object":"chat.completion","created":1,"model":"up-model","choices":[{"index":0,"message":{"role":"assistant","content":"from upstream"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#;

fn chunk(text: &str) -> Bytes {
    Bytes::from(format!(
        "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"up-model\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}},\"finish_reason\":null}}]}}\n\n"
    ))
}

fn sse(body: Body) -> Response {
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap()
}

async fn chat(State(st): State<Arc<UpstreamState>>, headers: HeaderMap, body: Bytes) -> Response {
    let n = st.hits.fetch_add(1, Ordering::SeqCst);
    st.bodies.lock().unwrap().push(body);
    st.headers.lock().unwrap().push(headers);
    let json = || ([("content-type", "application/json")], COMPLETION).into_response();
    match st.behaviour.clone() {
        Behaviour::Fast => json(),
        Behaviour::Gated => {
            st.arrived.notify_one();
            st.gate.notified().await;
            json()
        }
        Behaviour::FailThenRecover { n: fails, status } if n < fails => {
            (StatusCode::from_u16(status).unwrap(), "upstream is having a bad day").into_response()
        }
        Behaviour::FailThenRecover { .. } => json(),
        Behaviour::Always(status) => (
            StatusCode::from_u16(status).unwrap(),
            [("content-type", "application/json")],
            r#"{"error":{"message":"upstream says no","type":"invalid_request_error","param":null,"code":null}}"#,
        )
            .into_response(),
        Behaviour::Hang => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Behaviour::GatedStream => {
            let st2 = st.clone();
            let guard = DropSignal(st.dropped_tx.clone());
            let stream = async_stream(move |tx| async move {
                let _guard = guard;
                let _ = tx.send(chunk("first")).await;
                st2.arrived.notify_one();
                st2.gate.notified().await;
                let _ = tx.send(chunk("second")).await;
                let _ = tx
                    .send(Bytes::from_static(
                        b"data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"up-model\",\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2,\"total_tokens\":6}}\n\n",
                    ))
                    .await;
                let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
            });
            sse(stream)
        }
        Behaviour::DropMidStream => {
            // The first chunk; once the test has seen it arrive through the proxy
            // (and calls `release()`), a broken connection.
            let items = futures_util::stream::unfold(0, move |step| {
                let st = st.clone();
                async move {
                    match step {
                        0 => Some((Ok(chunk("partial")), 1)),
                        1 => {
                            st.gate.notified().await;
                            Some((Err(std::io::Error::other("upstream crashed")), 2))
                        }
                        _ => None,
                    }
                }
            });
            sse(Body::from_stream(items))
        }
        Behaviour::StallStream => {
            let st2 = st.clone();
            let guard = DropSignal(st.dropped_tx.clone());
            let stream = async_stream(move |tx| async move {
                let _guard = guard;
                let _ = tx.send(chunk("first")).await;
                st2.arrived.notify_one();
                // Wait until the receiver (the proxy) goes away.
                tx.closed().await;
            });
            sse(stream)
        }
    }
}

/// A body fed by a task through a channel; the task is aborted when the body is dropped.
pub fn async_stream<F, Fut>(f: F) -> Body
where
    F: FnOnce(mpsc::Sender<Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let abort = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(f(tx)));
    let stream = futures_util::stream::unfold((rx, abort), |(mut rx, abort)| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(b), (rx, abort)))
    });
    Body::from_stream(stream)
}

async fn models() -> impl IntoResponse {
    (
        [("content-type", "application/json")],
        r#"{"object":"list","data":[{"id":"up-model","object":"model","created":1,"owned_by":"up"}]}"#,
    )
}

impl Upstream {
    /// Starts an upstream on its own runtime thread, so it works from sync and async tests.
    pub fn start(behaviour: Behaviour) -> Upstream {
        let (dropped_tx, dropped_rx) = mpsc::unbounded_channel();
        let state = Arc::new(UpstreamState {
            behaviour,
            hits: AtomicUsize::new(0),
            bodies: Mutex::new(Vec::new()),
            headers: Mutex::new(Vec::new()),
            arrived: Notify::new(),
            gate: Notify::new(),
            dropped_tx,
            dropped_rx: Mutex::new(Some(dropped_rx)),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/models", get(models))
            .with_state(state.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
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
        Upstream {
            addr,
            state,
            _runtime: Some(handle),
        }
    }

    /// The base URL to configure as `upstream.url`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Waits until a request has arrived (Gated, GatedStream, StallStream).
    pub async fn wait_arrival(&self) {
        tokio::time::timeout(super::PATIENCE, self.state.arrived.notified())
            .await
            .expect("a request reached the upstream");
    }

    /// Waits until a streamed body was dropped by its reader (the proxy).
    pub async fn wait_stream_dropped(&self) {
        let mut rx = self
            .state
            .dropped_rx
            .lock()
            .unwrap()
            .take()
            .expect("only once");
        tokio::time::timeout(super::PATIENCE, rx.recv())
            .await
            .expect("the upstream stream was dropped");
    }
}

/// A loopback address on which nothing listens: a socket is bound to the port
/// and never listens, for as long as the test process runs, so a connection to
/// it is refused and no other test (nor a proxy it starts) can be given the
/// port meanwhile.
pub fn closed_port_url() -> String {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, getsockname, socket,
    };
    use std::os::fd::{AsRawFd, OwnedFd};
    static HELD: Mutex<Vec<OwnedFd>> = Mutex::new(Vec::new());
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("a TCP socket");
    bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).expect("bind 127.0.0.1:0");
    let addr: SockaddrIn = getsockname(fd.as_raw_fd()).expect("the bound address");
    HELD.lock().unwrap().push(fd);
    format!("http://127.0.0.1:{}/v1", addr.port())
}
