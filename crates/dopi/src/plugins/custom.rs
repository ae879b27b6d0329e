//! `custom`: a program on the dopi host, once per node (`exec` + `arguments`, run by
//! `/bin/sh -c`), judged by its exit code and by error/warning patterns on its output.

use async_trait::async_trait;

use super::checks::{self, Checks};
use crate::exec::{self, Program, Stream};
use crate::plugin::{params, CommandContext, CommandOptions, CommandOutcome, ParamProblem, Plugin};

/// The `custom` plugin.
pub struct Custom;

/// The command line: `exec arguments`.
pub fn command_line(options: &CommandOptions) -> Result<String, String> {
    let exec = options
        .get("exec")
        .and_then(|e| e.as_str())
        .filter(|e| !e.is_empty())
        .ok_or("'exec' (the program to run) is required and must be a non-empty string")?;
    let args = params::arguments(options.get("arguments"))?;
    Ok(if args.is_empty() {
        exec.to_string()
    } else {
        format!("{exec} {args}")
    })
}

/// Problems of `exec`, `arguments` and `env`, shared with `ssh/custom`.
pub fn command_problems(options: &CommandOptions) -> Vec<ParamProblem> {
    let mut problems = Vec::new();
    if options
        .get("exec")
        .is_some_and(|e| e.as_str().is_none_or(str::is_empty))
    {
        problems.push(ParamProblem::error(
            "exec",
            "'exec' must be a non-empty string",
        ));
    }
    if let Err(e) = params::arguments(options.get("arguments")) {
        problems.push(ParamProblem::error("arguments", e));
    }
    if let Err(e) = params::env(options.get("env")) {
        problems.push(ParamProblem::error("env", e));
    }
    problems.extend(Checks::problems(options));
    problems
}

/// The variables every command gets (`DOP_NODE_FQDN` holds the node name, as in the original),
/// under the command's own `env`.
pub fn environment(ctx: &CommandContext<'_>) -> Result<Vec<(String, String)>, String> {
    let mut env = params::env(ctx.options.get("env"))?;
    let base = [
        ("DOP_NODE_FQDN", ctx.node.name.as_str()),
        ("DOP_NODE_NAME", ctx.node.name.as_str()),
        ("DOP_NODE_HOSTNAME", ctx.node.fqdn.as_str()),
        ("DOP_PLAN", ctx.plan),
        ("DOP_STEP", ctx.step),
    ];
    for (k, v) in base.iter().rev() {
        if !env.iter().any(|(e, _)| e == k) {
            env.insert(0, ((*k).to_string(), (*v).to_string()));
        }
    }
    Ok(env)
}

#[async_trait]
impl Plugin for Custom {
    fn name(&self) -> &'static str {
        "custom"
    }

    fn check(&self, options: &CommandOptions) -> Vec<ParamProblem> {
        let known: Vec<&str> = ["exec", "arguments", "env"]
            .into_iter()
            .chain(checks::KEYS)
            .collect();
        let mut problems = params::unknown_keys(options, &known);
        problems.extend(command_problems(options));
        problems
    }

    fn required(&self) -> &'static [&'static str] {
        &["exec"]
    }

    fn describe(&self, options: &CommandOptions) -> String {
        match command_line(options) {
            Ok(line) => format!("run `{line}` on the dopi host"),
            Err(e) => e,
        }
    }

    async fn run(&self, ctx: &CommandContext<'_>) -> CommandOutcome {
        let (line, mut checks, env) = match (
            command_line(ctx.options),
            Checks::from_options(ctx.options),
            environment(ctx),
        ) {
            (Ok(l), Ok(c), Ok(e)) => (l, c, e),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return CommandOutcome::failed(e),
        };
        ctx.log.line(&format!("running `{line}`"));
        let log = ctx.log.clone();
        let program = Program {
            shell_command: &line,
            env: &env,
            timeout: ctx.timeout,
            max_output: ctx.limits.max_output,
            masker: ctx.log.masker(),
        };
        let finished = exec::run(&program, ctx.stop.clone(), |stream, text| {
            let tag = match stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            };
            log.line(&format!("{tag}: {text}"));
            if let Some(note) = checks.line(stream, text) {
                log.line(&note);
            }
        })
        .await;
        match finished {
            Ok(f) => checks.outcome(f, ctx.timeout.as_secs()),
            Err(e) => CommandOutcome::failed(format!("cannot start `{line}`: {e}")),
        }
    }
}
