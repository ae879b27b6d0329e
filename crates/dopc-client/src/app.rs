//! The `dopc-client` command line (the binary parses it; `cargo xtask dist` makes completions
//! and man pages from it).
#![allow(missing_docs)]

use clap::{Parser, Subcommand};
use dop_cli::CompletionArgs;

use crate::cli::{ClientArgs, ClientCommand};

/// The client of a dop server: plans, executions, their logs and state. The same commands as
/// `dopc` offers next to `serve` and `token`, without the server.
#[derive(Parser)]
#[command(name = "dopc-client", version = dop_cli::VERSION, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: Command,
}

pub const EXIT_CODES: &str = "Exit status: 0 success, 1 the server refused or the followed \
                          execution failed, 2 not in sync (only `plan drift \
                          --detailed-exitcode`), 4 execution cancelled, 5 server unreachable \
                          (or TLS failed, or it timed out), 6 token refused, 64 usage error.";

#[derive(Subcommand)]
pub enum Command {
    #[command(flatten)]
    Client(ClientCommand),
    /// Print the shell completion script (bash, zsh, fish, elvish, powershell).
    Completion(CompletionArgs),
}
