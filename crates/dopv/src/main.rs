//! `dopv`: makes the infrastructure match the plan.

use std::io;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dop_core::cli::{self, ValidateArgs};
use dop_store::cli::{self as plans, Io, PlanCommand};

/// Make the infrastructure match the plan: create, change and remove nodes on providers.
#[derive(Parser)]
#[command(name = "dopv", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(flatten)]
    global: cli::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

const EXIT_CODES: &str = "Exit status: 0 success, 1 invalid plan or failed command, 2 usage \
                          error, 3 plan locked by another process.";

#[derive(Subcommand)]
enum Command {
    /// Check a plan file and report every problem at once (file, plan path, line).
    Validate(ValidateArgs),
    #[command(flatten)]
    Plan(PlanCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (mut out, mut err) = (io::stdout().lock(), io::stderr().lock());
    let config = match cli::load_config(&cli.global, &mut err) {
        Ok(config) => config,
        Err(status) => return ExitCode::from(status),
    };
    let mut streams = Io {
        out: &mut out,
        err: &mut err,
    };
    ExitCode::from(match &cli.command {
        Command::Validate(args) => cli::validate(args, &config, streams.out, streams.err),
        Command::Plan(command) => plans::run(command, &config, &mut streams),
    })
}
