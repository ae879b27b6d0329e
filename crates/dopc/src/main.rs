//! `dopc`: the server that queues dopv and dopi executions and serves their logs and state.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dop_core::cli::{self, ValidateArgs};

/// The dop server: queues executions of dopv and dopi, streams their logs and serves the
/// combined state of each plan.
#[derive(Parser)]
#[command(name = "dopc", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(flatten)]
    global: cli::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

const EXIT_CODES: &str = "Exit status: 0 success, 1 invalid plan or failed command, 2 usage error.";

#[derive(Subcommand)]
enum Command {
    /// Check a plan file and report every problem at once (file, plan path, line).
    Validate(ValidateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::main_with(&cli.global, |config, out, err| match &cli.command {
        Command::Validate(args) => cli::validate(args, config, out, err),
    })
}
