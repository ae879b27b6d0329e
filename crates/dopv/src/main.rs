//! `dopv`: makes the infrastructure match the plan.

use std::process::ExitCode;

use dop_cli as cli;
use dop_cli::store::{self as plans, Io};
use dopv::cli as runs;
use dopv::Operation;

use dopv::app::*;

fn main() -> ExitCode {
    let cli: Cli = dop_cli::parse();
    cli::main_with(&cli.global, |config, out, err| {
        let mut io = Io { out, err };
        match &cli.command {
            Command::Validate(args) => cli::validate(args, config, io.out, io.err),
            Command::Plan(command) => plans::run(
                command,
                config,
                &|_| Vec::new(),
                &dop_puppet::commands::after_plans_changed,
                &mut io,
            ),
            Command::Deploy(args) => runs::run(Operation::Deploy, args, config, &mut io),
            Command::Undeploy(args) => runs::undeploy(args, config, &mut io),
            Command::Refresh(args) => runs::run(Operation::Refresh, args, config, &mut io),
            Command::Sync(args) => runs::sync(args, config, &mut io),
            Command::Show(args) => runs::show(args, config, &mut io),
            Command::Logs(command) => cli::logs::run(command, config, &mut io),
            Command::Completion(args) => cli::completion::<Cli>(args, io.out),
        }
    })
}
