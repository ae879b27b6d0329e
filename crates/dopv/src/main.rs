//! `dopv`: makes the infrastructure match the plan.

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
    cli::main_with(&cli.global, |config, out, err| match &cli.command {
        Command::Validate(args) => cli::validate(args, config, out, err),
        Command::Plan(command) => {
            plans::run(command, config, &|_| Vec::new(), &mut Io { out, err })
        }
    })
}
