//! The `dopv` command line: its arguments (the binary parses them; `cargo xtask dist`
//! makes completions and man pages from them).
#![allow(missing_docs)]

use crate::cli::{RunArgs, ShowArgs, SyncArgs, UndeployArgs};
use clap::{Parser, Subcommand};
use dop_cli::store::PlanCommand;
use dop_cli::{self as cli, ValidateArgs};

/// Make the infrastructure match the plan: create, change and remove nodes on providers.
///
/// Every acting command takes --noop (show what would be done and why, change nothing),
/// --json, and the node-selection flags. Only `sync --destructive` removes nodes that left
/// the plan or redeploys changed ones; only `sync --interruptive` reboots.
#[derive(Parser)]
#[command(name = "dopv", version = dop_cli::VERSION, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    pub global: cli::GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

pub const EXIT_CODES: &str = "Exit status: 0 success, 1 invalid plan or failed command, 2 changes \
                          pending (only with --detailed-exitcode), 3 plan locked by another \
                          process, 4 stopped by a signal (run `sync` to finish), 64 usage error.";

#[derive(Subcommand)]
pub enum Command {
    /// Check a plan file and report every problem at once (file, plan path, line).
    Validate(ValidateArgs),
    #[command(flatten)]
    Plan(PlanCommand),
    /// Create the selected nodes that do not exist yet (changes to existing nodes: `sync`).
    Deploy(RunArgs),
    /// Destroy the selected nodes (data disks are kept unless --rmdisk).
    Undeploy(UndeployArgs),
    /// Ask the providers how the nodes are and record it; report drift. Changes no node.
    Refresh(RunArgs),
    /// Make the nodes match the newest plan iteration: create, change in place, and with
    /// --destructive / --interruptive also destroy, redeploy and reboot.
    Sync(SyncArgs),
    /// Show, per node, what was deployed, how it is, drift and pending plan changes.
    Show(ShowArgs),
    /// The execution logs of dopi and dopv runs: remove old ones (`logs prune`).
    #[command(subcommand)]
    Logs(dop_cli::logs::LogsCommand),
    /// Print the shell completion script (bash, zsh, fish, elvish, powershell).
    Completion(dop_cli::CompletionArgs),
}
