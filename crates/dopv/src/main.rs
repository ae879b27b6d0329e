//! `dopv`: makes the infrastructure match the plan.

use std::io;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dop_core::cli::{self, ValidateArgs};

/// Make the infrastructure match the plan: create, change and remove nodes on providers.
#[derive(Parser)]
#[command(name = "dopv", version, after_help = EXIT_CODES)]
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
    let (mut out, mut err) = (io::stdout().lock(), io::stderr().lock());
    let config = match cli::load_config(&cli.global, &mut err) {
        Ok(config) => config,
        Err(status) => return ExitCode::from(status),
    };
    ExitCode::from(match &cli.command {
        Command::Validate(args) => cli::validate(args, &config, &mut out, &mut err),
    })
}
