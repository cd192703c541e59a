//! The gateway in the test's own process: [`warden::gateway::run`] on
//! 127.0.0.1:0, for tests of request handling that need no process of their own
//! (no signals, PID file, log file or exit code). It serves what `proxy` serves,
//! through the same `Gateway::new` and `gateway::run`, without a child process
//! to exec, load and reap per test. What it does not share with the binary: the
//! process environment is the test runner's (the configuration sees only the
//! variables given, but an `HTTP_PROXY` of the runner would reach the upstream
//! client, as it reaches the tests' own client), and no tracing subscriber, so
//! no log file.

use warden::gateway::{self, Gateway};
use warden::home::Home;
use warden::home::config::{Config, Overrides};
use warden::home::env::EnvSource;

use super::http::Served;
use super::{PATIENCE, TestHome};

/// A gateway serving on its own runtime (so sync and async tests can use it);
/// stopped at once on drop.
pub struct InProcess {
    pub url: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl InProcess {
    /// Loads `warden.toml` of `home` with the home's `.env` and `env` (which wins)
    /// as the only variables: as with `bin()`, no variable of the developer's
    /// leaks in. Then serves it on a port of its own.
    pub fn start(home: &TestHome, env: &[(&str, &str)]) -> InProcess {
        let mut vars: Vec<(String, String)> = match dotenvy::from_path_iter(home.file(".env")) {
            Ok(lines) => lines.map(|line| line.unwrap()).collect(),
            Err(_) => Vec::new(),
        };
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let home = Home::at(home.path());
        let config = Config::load_with_env(
            &home,
            &Overrides::default(),
            EnvSource::from_pairs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
        )
        .unwrap_or_else(|e| panic!("the test's configuration does not load: {e}"));
        home.ensure_dirs().unwrap();
        let gw = Gateway::new(config).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        // Returns once the gateway says it is ready, as `Proxy::start` returns
        // once the binary has said where it listens.
        let mut ready = gw.watch_ready();
        let (tx, rx) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            let _ = ready.wait_for(|ready| *ready).await;
            let _ = tx.send(());
        });
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            gateway::run(listener, gw, std::future::pending()).await
        });
        rx.recv_timeout(PATIENCE)
            .expect("the in-process gateway became ready");
        InProcess {
            url,
            runtime: Some(runtime),
        }
    }
}

impl Served for InProcess {
    fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        // Not a drain (that is the binary's business, tested there): the
        // runtime and every connection go at once. `shutdown_background` is the
        // one way to drop a runtime from inside an async test.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
