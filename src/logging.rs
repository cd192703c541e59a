//! Log files under `logs/`: one line per event, text or JSON (`logs.format`).
//!
//! Writes go through a non-blocking appender so a slow disk never stalls a
//! request; the returned guard flushes on drop, so binaries hold it until exit.
//! When stderr is a terminal the same lines are mirrored there, which is what a
//! person running `proxy` in the foreground wants; a detached process (stderr
//! redirected to the log by `daemon`) does not duplicate its lines.

use std::io::IsTerminal;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

use crate::config::LogFormat;
use crate::home::{Home, LogKind};

/// Installs the global subscriber for a binary writing to `logs/<kind>.log`.
/// `verbose` lowers the level to debug; `RUST_LOG` overrides both.
pub fn init(
    home: &Home,
    kind: LogKind,
    format: LogFormat,
    verbose: bool,
) -> std::io::Result<WorkerGuard> {
    std::fs::create_dir_all(home.logs_dir())?;
    let path = home.log_file(kind);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
        })?;
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(file);
    let level = if verbose { "debug" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{level},hyper=warn,reqwest=warn,h2=warn,rustls=warn"
        ))
    });
    let mirror = std::io::stderr().is_terminal();
    let stderr = std::io::stderr.with_filter(move |_| mirror);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false)
        .with_writer(writer.and(stderr));
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second init in the same process (tests) keeps the first subscriber.
    let _ = result;
    Ok(guard)
}
