//! `custom`: a program on the dopi host, once per node (`exec` + `arguments`, run by
//! `/bin/sh -c`), judged by its exit code and by error/warning patterns on its output.

use async_trait::async_trait;

use crate::exec::{self, Program, Stream};
use crate::plugin::{params, CommandContext, Options, Outcome, ParamProblem, Plugin};

/// The `custom` plugin.
pub struct Custom;

const KNOWN: [&str; 6] = [
    "exec",
    "arguments",
    "env",
    "expect_exit_codes",
    "parse_output",
    "fail_on_warning",
];

/// The command line: `exec arguments`.
fn command_line(options: &Options) -> Result<String, String> {
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

#[async_trait]
impl Plugin for Custom {
    fn name(&self) -> &'static str {
        "custom"
    }

    fn check(&self, options: &Options) -> Vec<ParamProblem> {
        let mut problems = params::unknown_keys(options, &KNOWN);
        if let Some(e) = options.get("exec") {
            if e.as_str().is_none_or(str::is_empty) {
                problems.push(ParamProblem::error(
                    "exec",
                    "'exec' must be a non-empty string",
                ));
            }
        }
        if let Err(e) = params::arguments(options.get("arguments")) {
            problems.push(ParamProblem::error("arguments", e));
        }
        if let Err(e) = params::env(options.get("env")) {
            problems.push(ParamProblem::error("env", e));
        }
        if let Err(e) = params::exit_codes(options.get("expect_exit_codes"), &[0]) {
            problems.push(ParamProblem::error("expect_exit_codes", e));
        }
        if let Err(e) = params::output_patterns(options.get("parse_output")) {
            problems.push(ParamProblem::error("parse_output", e));
        }
        if let Some(f) = options.get("fail_on_warning") {
            if !f.is_boolean() {
                problems.push(ParamProblem::error(
                    "fail_on_warning",
                    "'fail_on_warning' must be true or false",
                ));
            }
        }
        problems
    }

    fn required(&self) -> &'static [&'static str] {
        &["exec"]
    }

    fn describe(&self, options: &Options) -> String {
        match command_line(options) {
            Ok(line) => format!("run `{line}` on the dopi host"),
            Err(e) => e,
        }
    }

    async fn run(&self, ctx: &CommandContext<'_>) -> Outcome {
        let failed = |message: String| Outcome {
            message: Some(message),
            ..Outcome::default()
        };
        let line = match command_line(ctx.options) {
            Ok(l) => l,
            Err(e) => return failed(e),
        };
        let (errors, warnings) = match params::output_patterns(ctx.options.get("parse_output")) {
            Ok(p) => p,
            Err(e) => return failed(e),
        };
        let codes = match params::exit_codes(ctx.options.get("expect_exit_codes"), &[0]) {
            Ok(c) => c,
            Err(e) => return failed(e),
        };
        let fail_on_warning = ctx
            .options
            .get("fail_on_warning")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let mut env = match params::env(ctx.options.get("env")) {
            Ok(e) => e,
            Err(e) => return failed(e),
        };
        // DOP_NODE_FQDN holds the node name, as in the original; the others are new.
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
        ctx.log.line(&format!("running `{line}`"));
        let (mut error_lines, mut warning_lines) = (0usize, 0usize);
        let log = ctx.log.clone();
        let program = Program {
            shell_command: &line,
            env: &env,
            timeout: ctx.timeout,
        };
        let finished = exec::run(&program, ctx.stop.clone(), |stream, text| {
            let tag = match stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            };
            log.line(&format!("{tag}: {text}"));
            if errors.iter().any(|re| re.is_match(text)) {
                error_lines += 1;
                log.line(&format!("error pattern matched: {text}"));
            } else if warnings.iter().any(|re| re.is_match(text)) {
                warning_lines += 1;
                log.line(&format!("warning pattern matched: {text}"));
            }
        })
        .await;
        let finished = match finished {
            Ok(f) => f,
            Err(e) => return failed(format!("cannot start `{line}`: {e}")),
        };
        let mut problems = Vec::new();
        if finished.timed_out {
            problems.push(format!(
                "timed out after {} s (plugin_timeout)",
                ctx.timeout.as_secs()
            ));
        }
        match (finished.exit_status, &codes) {
            (None, _) => problems.push("ended by a signal, without an exit status".to_string()),
            (Some(code), Some(codes)) if !codes.contains(&code) => problems.push(format!(
                "exit status {code}, expected {}",
                codes
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" or ")
            )),
            _ => {}
        }
        if error_lines > 0 {
            problems.push(format!(
                "{error_lines} output line(s) matched an error pattern"
            ));
        }
        if warning_lines > 0 && fail_on_warning {
            problems.push(format!(
                "{warning_lines} output line(s) matched a warning pattern (fail_on_warning)"
            ));
        }
        Outcome {
            success: problems.is_empty(),
            exit_status: finished.exit_status,
            output_tail: finished.tail,
            message: (!problems.is_empty()).then(|| problems.join("; ")),
            interrupted: finished.stopped,
        }
    }
}
