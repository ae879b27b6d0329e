//! `dopi`: runs a plan's steps on its nodes.

use std::io;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dop_core::cli::{self, PlanNodesArgs, ValidateArgs};
use dop_store::cli::{self as plans, ImportArgs, Io, PlanCommand, ShowArgs};

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

const EXIT_CODES: &str = "Exit status: 0 success, 1 invalid plan or failed command, 2 usage \
                          error, 3 plan locked by another process.";

#[derive(Subcommand)]
enum Command {
    /// Check a plan file and report every problem at once (file, plan path, line).
    Validate(ValidateArgs),
    /// List the nodes that node-selection flags pick from a plan, without running anything.
    PlanNodes(PlanNodesArgs),
    #[command(flatten)]
    Plan(PlanCommand),
    /// Show a stored plan and the dopi state of each step (works while a run holds the plan).
    Show(ShowArgs),
    /// Import the plans, history and state of an original DOP plan store.
    ImportStore(ImportArgs),
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
        Command::PlanNodes(args) => cli::plan_nodes(args, &config, streams.out, streams.err),
        Command::Plan(command) => plans::run(command, &config, &mut streams),
        Command::Show(args) => plans::show(args, &config, &mut streams),
        Command::ImportStore(args) => plans::import(args, &config, &mut streams),
    })
}
