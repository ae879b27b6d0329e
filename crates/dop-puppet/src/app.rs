//! The `dop-puppet-autosign` command line (the binary parses it; `cargo xtask dist` makes its
//! completions and man page).
#![allow(missing_docs)]

use std::path::PathBuf;

use clap::Parser;

/// Puppet's policy-based autosign for the nodes of stored dop plans. Puppet runs it with the
/// certname as argument and the certificate request (PEM) on standard input; it exits 0 to
/// sign and 1 to refuse, and logs every decision with its reason. Set it in puppet.conf:
/// `autosign = /usr/bin/dop-puppet-autosign`.
#[derive(Parser)]
#[command(name = "dop-puppet-autosign", version = dop_cli::VERSION, after_help = AFTER_HELP)]
pub struct Cli {
    /// The certname Puppet asks about.
    pub certname: String,
    /// dop's settings (for hiera_dir and log_dir) [default: /etc/dop/dop.conf when it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The Hiera data directory dop writes [default: hiera_dir of dop.conf, else
    /// /var/lib/dop/hiera].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Refuse nodes of plans that have no `autosign` credential (no challenge password).
    #[arg(long)]
    pub require_challenge: bool,
    /// Append each decision (JSON, one line) here [default: <log_dir>/autosign.log; `-`: none].
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
}

pub const AFTER_HELP: &str = "It signs only a well-formed request whose subject CN is the \
certname, for a node of a stored plan, carrying the plan's `autosign` credential password as its \
challengePassword when the plan has one. Exit status: 0 signed, 1 refused, 64 usage error.";
