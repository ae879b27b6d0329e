//! The `dopc` command line: its arguments (the binary parses them; `cargo xtask dist`
//! makes completions and man pages from them).
#![allow(missing_docs)]

use clap::{Args, Parser, Subcommand};
use dop_cli::{self as cli, ValidateArgs};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The dop server: queues executions of dopv and dopi, streams their logs and serves the
/// combined state of each plan.
#[derive(Parser)]
#[command(name = "dopc", version = dop_cli::VERSION, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    pub global: cli::GlobalArgs,
    #[command(flatten)]
    pub client: dopc_client::cli::ClientArgs,
    #[command(subcommand)]
    pub command: Command,
}

pub const EXIT_CODES: &str = "Exit status: 0 success, 1 invalid plan, failed command or failed \
                          execution, 2 not in sync (only `plan drift --detailed-exitcode`), 4 \
                          execution cancelled, 5 server unreachable (or TLS failed, or it timed \
                          out), 6 token refused, 64 usage error.";

#[derive(Subcommand)]
pub enum Command {
    /// Check a plan file and report every problem at once (file, plan path, line).
    Validate(ValidateArgs),
    /// Serve the API (`/api/v1`) until SIGTERM or SIGINT; then stop taking requests and hand
    /// running executions back to the queue.
    Serve(ServeArgs),
    /// Manage API tokens (stored hashed in the plan store; works while a server runs).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print the API's OpenAPI description (JSON).
    Openapi,
    /// The client commands, as `dopc-client` has them.
    #[command(flatten)]
    Client(dopc_client::cli::ClientCommand),
    /// Print the shell completion script (bash, zsh, fish, elvish, powershell).
    Completion(dop_cli::CompletionArgs),
}

#[derive(Args)]
pub struct ServeArgs {
    /// The server's settings file (TOML: bind, max_body_bytes, shutdown_timeout_secs,
    /// local_dir, connect_timeout_secs, provider_api_timeout_secs, provider_wait_timeout_secs,
    /// [tls] cert and key, [monitor.<plan>] interval_secs and auto_sync) [default: /etc/dop/dopc.toml when it exists].
    #[arg(
        long,
        value_name = "FILE",
        env = "DOPC_SERVER_CONFIG",
        hide_env_values = true
    )]
    pub server_config: Option<PathBuf>,
    /// Where to listen [default: 127.0.0.1:8780; port 0 picks a free one].
    #[arg(long, value_name = "ADDR", env = "DOPC_BIND", hide_env_values = true)]
    pub bind: Option<SocketAddr>,
    /// Where the `local` provider keeps its nodes [default: <store-dir>/local].
    #[arg(
        long,
        value_name = "DIR",
        env = "DOP_LOCAL_DIR",
        hide_env_values = true
    )]
    pub local_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make a token; it is printed once and stored only as its hash.
    Create {
        /// Who or what uses it.
        name: String,
        /// What it may do: metrics (only `/metrics`), read (plans with secrets masked, state,
        /// logs, executions, metrics), operate (read, and start, cancel and reset
        /// executions) or admin (everything).
        #[arg(long, value_name = "ROLE", default_value = "admin")]
        role: crate::access::Role,
        /// Only these plans (comma-separated names or `/regex/`); the others are answered as
        /// missing [default: every plan].
        #[arg(long, value_name = "PLANS")]
        plans: Option<String>,
    },
    /// List the tokens (names, roles, plans and times; never the tokens); `--json` for JSON.
    List,
    /// Revoke the tokens of a name: requests with them are refused from now on.
    Revoke {
        /// The token's name.
        name: String,
    },
}
