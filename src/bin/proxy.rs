//! `proxy`: the OpenAI-compatible gateway, in the foreground.
//!
//! Serves until SIGTERM or SIGINT, then stops accepting, drains in-flight
//! requests for at most `server.graceful_timeout` and exits 0. Configuration
//! errors exit 2 with the file, key and line. `proxy prompts status|refresh|clear`
//! manages the prompt cache without a running proxy. All the work is in the
//! library (`warden::gateway::serve`, `warden::prompts::command`); this file parses
//! arguments and, in `main` alone, turns an error into its message and exit code.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use warden::gateway::serve::{ServeError, serve_foreground};
use warden::home::config::{Config, ConfigError, Overrides};
use warden::home::{Home, HomeError};
use warden::prompts::command::PromptsAction;
use warden::support::cli::HomeArgs;
use warden::support::exit;

/// mimalloc instead of glibc's malloc: the gateway allocates and frees small
/// buffers on every request from two threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The warden gateway: an OpenAI-compatible API in front of an upstream.
///
/// Examples:
///   proxy                                  # serve on 127.0.0.1:8000, built-in offline upstream
///   proxy --port 0                         # any free port (printed on stdout)
///   proxy --upstream http://127.0.0.1:9000/v1
///   proxy prompts status --json            # the prompt cache, no proxy needed
///   proxy --generate man > proxy.1         # also complete-bash, complete-zsh, complete-fish
#[derive(Parser, Debug)]
#[command(name = "proxy", version = warden::VERSION, verbatim_doc_comment)]
struct Args {
    #[command(flatten)]
    home: HomeArgs,
    /// Address to listen on [default: WARDEN_HOST, else server.host, else 127.0.0.1]
    #[arg(long, value_name = "H")]
    host: Option<String>,
    /// Port to listen on; 0 picks a free one [default: WARDEN_PORT, else server.port, else 8000]
    #[arg(long, value_name = "P")]
    port: Option<u16>,
    /// Upstream base URL, or "mock" [default: WARDEN_UPSTREAM_URL, else upstream.url, else mock]
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Manage the prompt cache under the home (works whether or not a proxy runs)
    Prompts {
        #[command(subcommand)]
        action: PromptsAction,
        /// Print one JSON document instead of text
        #[arg(long, global = true)]
        json: bool,
    },
}

fn main() -> ExitCode {
    if let Some(code) = warden::support::cli::handle_generate(Args::command) {
        return code;
    }
    match run(Args::parse()) {
        Ok(code) => exit::to_exit_code(code),
        Err(e) => {
            let code = match &e {
                ProxyError::Home(_) | ProxyError::Config(_) => exit::USAGE,
                ProxyError::Runtime(_) | ProxyError::Serve(_) => exit::FAILED,
            };
            let status = exit::fail("proxy", &e, code);
            if let ProxyError::Config(_) = e {
                // doctor cannot fix a wrong value or key: the message above names it.
                eprintln!("proxy: fix what it names and start again");
            }
            status
        }
    }
}

/// Why `proxy` ends early; [`main`] chooses the exit code.
#[derive(Debug, thiserror::Error)]
enum ProxyError {
    #[error(transparent)]
    Home(#[from] HomeError),
    #[error("configuration error: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Serves (or runs `proxy prompts`); `Ok` is the exit code.
fn run(args: Args) -> Result<i32, ProxyError> {
    let home = Home::resolve(args.home.home.as_deref())?;
    let overrides = Overrides {
        host: args.host,
        port: args.port,
        upstream_url: args.upstream,
    };
    let config = Config::load(&home, &overrides)?;
    if let Some(Command::Prompts { action, json }) = args.command {
        return Ok(warden::prompts::command::run(
            &config,
            action,
            json,
            &mut std::io::stdout(),
        ));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ProxyError::Runtime)?;
    runtime.block_on(serve_foreground(config, overrides))?;
    Ok(exit::OK)
}
