//! `dopi`: runs a plan's steps on its nodes.

use std::io;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dop_core::cli::{self, PlanNodesArgs, ValidateArgs};

/// Run a plan's steps on its nodes: commands, files, reboots and Puppet runs over SSH, with
/// canaries, concurrency limits and resumable state.
#[derive(Parser)]
#[command(name = "dopi", version, after_help = EXIT_CODES)]
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
    /// List the nodes that node-selection flags pick from a plan, without running anything.
    PlanNodes(PlanNodesArgs),
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
        Command::PlanNodes(args) => cli::plan_nodes(args, &config, &mut out, &mut err),
    })
}
