//! `dopc-client`: see [`dopc_client`].

use std::process::ExitCode;

use dop_cli as cli;
use dopc_client::app::{Cli, Command};

fn main() -> ExitCode {
    let cli: Cli = cli::parse();
    // The client reads no dop.conf and no store: its settings are its flags, the environment
    // and its own file (see `--client-config`).
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let status = match &cli.command {
        Command::Client(command) => dopc_client::cli::run(&cli.client, command, &mut out, &mut err),
        Command::Completion(args) => cli::completion::<Cli>(args, &mut out),
    };
    ExitCode::from(status)
}
