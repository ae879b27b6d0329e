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
    /// Decide as the original did: sign any node name of a stored plan (with its plan's
    /// `autosign` credential password when it has one), deployed or not, any number of times.
    /// Unsafe: any machine that knows a node name gets its certificate. Warned on every run.
    #[arg(long)]
    pub compat_original: bool,
    /// With --compat-original: refuse nodes of plans that have no `autosign` credential.
    #[arg(long, requires = "compat_original")]
    pub require_challenge: bool,
    /// Append each decision (JSON, one line) here [default: <log_dir>/autosign.log; `-`: none].
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
}

pub const AFTER_HELP: &str = "It signs only a well-formed request whose subject CN is the \
certname, for a node of a stored plan that dopv deployed (or that was issued a challenge as a \
pre-provisioned machine: `dopi hiera challenge NODE`), carrying the node's challenge as its \
challengePassword; a challenge signs one request, until dopv redeploys the node. Exit status: 0 \
signed, 1 refused, 64 usage error.";
