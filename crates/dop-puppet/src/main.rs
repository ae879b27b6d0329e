//! `dop-puppet-autosign`: see [`dop_puppet::autosign`].

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli: dop_puppet::app::Cli = dop_cli::parse();
    let status =
        dop_puppet::commands::autosign(&cli, &mut std::io::stdin(), &mut std::io::stderr());
    ExitCode::from(status)
}
