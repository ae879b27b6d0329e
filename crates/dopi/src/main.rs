//! `dopi`: runs a plan's steps on its nodes.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dop_core::cli::{self, PlanNodesArgs, ValidateArgs};
use dop_store::cli::{self as plans, ImportArgs, Io, PlanCommand};
use dopi::cli::{self as runs, plugin_check, ForgetHostKeyArgs, ResetArgs, RunArgs, ShowArgs};

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

const EXIT_CODES: &str = "Exit status: 0 success, 1 invalid plan or failed command or run, 2 \
                          usage error, 3 plan locked by another process, 4 run stopped by a \
                          signal (run again to continue).";

#[derive(Subcommand)]
enum Command {
    /// Check a plan file and report every problem at once (file, plan path, line), plugins
    /// and their parameters included.
    Validate(ValidateArgs),
    /// List the nodes that node-selection flags pick from a plan, without running anything.
    PlanNodes(PlanNodesArgs),
    #[command(flatten)]
    Plan(PlanCommand),
    /// Run a step set of a stored plan; done work is never redone.
    Run(RunArgs),
    /// Put failed (with --force: all) work back to ready, by step set, step and node.
    Reset(ResetArgs),
    /// Show a stored plan and the state of every step and node (works while a run holds it).
    Show(ShowArgs),
    /// Import the plans, history and state of an original DOP plan store.
    ImportStore(ImportArgs),
    /// Forget the recorded SSH host key of nodes (after they were rebuilt outside dopv).
    ForgetHostKey(ForgetHostKeyArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::main_with(&cli.global, |config, out, err| {
        let mut io = Io { out, err };
        match &cli.command {
            Command::Validate(args) => {
                cli::validate_with(args, config, &plugin_check, io.out, io.err)
            }
            Command::PlanNodes(args) => cli::plan_nodes(args, config, io.out, io.err),
            Command::Plan(command) => plans::run(command, config, &plugin_check, &mut io),
            Command::Run(args) => runs::run(args, config, &mut io),
            Command::Reset(args) => runs::reset(args, config, &mut io),
            Command::Show(args) => runs::show(args, config, &mut io),
            Command::ImportStore(args) => plans::import(args, config, &mut io),
            Command::ForgetHostKey(args) => runs::forget_host_key(args, config, &mut io),
        }
    })
}
