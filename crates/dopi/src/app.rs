//! The `dopi` command line: its arguments (the binary parses them; `cargo xtask dist`
//! makes completions and man pages from them).
#![allow(missing_docs)]

use crate::cli::{ForgetHostKeyArgs, ResetArgs, RunArgs, ShowArgs};
use clap::{Parser, Subcommand};
use dop_cli::store::{ImportArgs, PlanCommand};
use dop_cli::{self as cli, PlanNodesArgs, ValidateArgs};

/// Run a plan's steps on its nodes: commands, files, reboots and Puppet runs over SSH, with
/// canaries, concurrency limits and resumable state.
#[derive(Parser)]
#[command(name = "dopi", version = dop_cli::VERSION, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    pub global: cli::GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

pub const EXIT_CODES: &str = "Exit status: 0 success, 1 invalid plan or failed command or run, 3 \
                          plan locked by another process, 4 run stopped by a signal (run again \
                          to continue), 64 usage error.";

#[derive(Subcommand)]
pub enum Command {
    /// Check a plan file and report every problem at once (file, plan path, line), plugins
    /// and their parameters included.
    Validate(ValidateArgs),
    /// List the nodes that node-selection flags pick from a plan, without running anything.
    PlanNodes(PlanNodesArgs),
    #[command(flatten)]
    Plan(PlanCommand<crate::cli::UpdateStateArgs>),
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
    /// The Hiera data Puppet reads from the stored plans: write it, show a node's, print the
    /// hiera.yaml that reads it; issue a pre-provisioned node its autosign challenge.
    #[command(subcommand)]
    Hiera(dop_puppet::commands::HieraCommand),
    /// The execution logs of dopi and dopv runs: remove old ones (`logs prune`).
    #[command(subcommand)]
    Logs(dop_cli::logs::LogsCommand),
    /// Print the shell completion script (bash, zsh, fish, elvish, powershell).
    Completion(dop_cli::CompletionArgs),
}
