//! `dopc`: the server that queues dopv and dopi executions and serves their logs and state.

use std::process::ExitCode;

use dop_cli as cli;
use dopc::app::*;
use dopc::commands;

fn main() -> ExitCode {
    let cli: Cli = dop_cli::parse();
    cli::main_with(&cli.global, |config, out, err| match &cli.command {
        Command::Validate(args) => cli::validate(args, config, out, err),
        Command::Serve(args) => commands::serve(args, config, out, err),
        Command::Token(command) => commands::token(command, cli.client.json, config, out, err),
        Command::Openapi => commands::openapi(out),
        Command::Client(command) => dopc_client::cli::run(&cli.client, command, out, err),
        Command::Completion(args) => cli::completion::<Cli>(args, out),
    })
}
