//! `dopi`: runs a plan's steps on its nodes.

use std::process::ExitCode;

use dop_cli as cli;
use dop_cli::store::{self as plans, Io};
use dop_puppet::commands as hiera;
use dopi::cli::{self as runs, plugin_check};

use dopi::app::*;

fn main() -> ExitCode {
    let cli: Cli = dop_cli::parse();
    cli::main_with(&cli.global, |config, out, err| {
        let mut io = Io { out, err };
        match &cli.command {
            Command::Validate(args) => {
                cli::validate_with(args, config, &plugin_check, io.out, io.err)
            }
            Command::PlanNodes(args) => cli::plan_nodes(args, config, io.out, io.err),
            Command::Plan(command) => plans::run(
                command,
                config,
                &plugin_check,
                &hiera::after_plans_changed,
                &mut io,
            ),
            Command::Run(args) => runs::run(args, config, &mut io),
            Command::Reset(args) => runs::reset(args, config, &mut io),
            Command::Show(args) => runs::show(args, config, &mut io),
            Command::ImportStore(args) => plans::import(args, config, &mut io),
            Command::ForgetHostKey(args) => runs::forget_host_key(args, config, &mut io),
            Command::Hiera(command) => hiera::hiera(command, config, &mut io),
            Command::Logs(command) => cli::logs::run(command, config, &mut io),
            Command::Completion(args) => cli::completion::<Cli>(args, io.out),
        }
    })
}
