//! `proxy`: the OpenAI-compatible gateway, in the foreground.
//!
//! Serves until SIGTERM or SIGINT, then stops accepting, drains in-flight
//! requests for at most `server.graceful_timeout` and exits 0. Configuration
//! errors exit 2 with the file, key and line. `proxy prompts status|refresh|clear`
//! manages the prompt cache without a running proxy. All the work is in the
//! library (`warden::gateway::serve`, `warden::prompts::command`); this file only parses
//! arguments.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use warden::home::config::{Config, Overrides};
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
    let args = Args::parse();
    let home = args.home.resolve_or_exit("proxy");
    let overrides = Overrides {
        host: args.host,
        port: args.port,
        upstream_url: args.upstream,
    };
    let config = match Config::load(&home, &overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("proxy: configuration error: {e}");
            eprintln!("proxy: fix the value (or run `doctor`) and start again");
            return exit::to_exit_code(exit::USAGE);
        }
    };
    if let Some(Command::Prompts { action, json }) = args.command {
        let code = warden::prompts::command::run(&config, action, json, &mut std::io::stdout());
        return exit::to_exit_code(code);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("proxy: cannot start the async runtime: {e}");
            return exit::to_exit_code(exit::FAILED);
        }
    };
    match runtime.block_on(warden::gateway::serve::serve_foreground(config)) {
        Ok(()) => exit::to_exit_code(exit::OK),
        Err(e) => {
            eprintln!("proxy: {e}");
            exit::to_exit_code(exit::FAILED)
        }
    }
}
