//! The simpler ssh plugins: `ssh/file_exists`, `ssh/file_contains` and `ssh/wait_for_login`.
//! Paths and patterns are single-quoted on the remote side (the original left them unquoted).

use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::checks::{self, Checks};
use super::ssh_custom::{run_remote, shell_quote, ssh_problems, target, SSH_KEYS};
use crate::exec::Stop;
use crate::plugin::{params, CommandContext, Options, Outcome, ParamProblem, Plugin};

fn absolute_file(options: &Options) -> Result<&str, String> {
    match options.get("file").and_then(|f| f.as_str()) {
        Some(f) if f.starts_with('/') => Ok(f),
        Some(f) => Err(format!("'file' must be an absolute path, not '{f}'")),
        None => Err("'file' (an absolute path on the node) is required".into()),
    }
}

fn problems(options: &Options, own: &[&str]) -> Vec<ParamProblem> {
    let known: Vec<&str> = own
        .iter()
        .copied()
        .chain(checks::KEYS)
        .chain(SSH_KEYS)
        .collect();
    let mut p = params::unknown_keys(options, &known);
    p.extend(Checks::problems(options));
    p.extend(ssh_problems(options));
    if options.contains_key("file") {
        if let Err(e) = absolute_file(options) {
            p.push(ParamProblem::error("file", e));
        }
    }
    p
}

async fn run_check(ctx: &CommandContext<'_>, remote: Result<String, String>) -> Outcome {
    let (remote, mut checks, target) =
        match (remote, Checks::from_options(ctx.options), target(ctx)) {
            (Ok(r), Ok(c), Ok(t)) => (r, c, t),
            (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => return Outcome::failed(e),
        };
    run_remote(ctx, &target, &remote, &remote, &mut checks).await
}

/// `ssh/file_exists`: succeeds when `file` exists on the node.
pub struct FileExists;

#[async_trait]
impl Plugin for FileExists {
    fn name(&self) -> &'static str {
        "ssh/file_exists"
    }
    fn check(&self, options: &Options) -> Vec<ParamProblem> {
        problems(options, &["file"])
    }
    fn required(&self) -> &'static [&'static str] {
        &["file"]
    }
    fn describe(&self, options: &Options) -> String {
        format!(
            "check that {} exists on the node",
            options.get("file").and_then(|f| f.as_str()).unwrap_or("?")
        )
    }
    async fn run(&self, ctx: &CommandContext<'_>) -> Outcome {
        run_check(
            ctx,
            absolute_file(ctx.options).map(|f| format!("test -e {}", shell_quote(f))),
        )
        .await
    }
}

/// `ssh/file_contains`: succeeds when a line of `file` matches `pattern` (grep's basic regex).
pub struct FileContains;

fn contains_command(options: &Options) -> Result<String, String> {
    let file = absolute_file(options)?;
    let pattern = options
        .get("pattern")
        .and_then(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .ok_or("'pattern' (what to look for) is required")?;
    Ok(format!(
        "grep -q -e {} -- {}",
        shell_quote(pattern),
        shell_quote(file)
    ))
}

#[async_trait]
impl Plugin for FileContains {
    fn name(&self) -> &'static str {
        "ssh/file_contains"
    }
    fn check(&self, options: &Options) -> Vec<ParamProblem> {
        let mut p = problems(options, &["file", "pattern"]);
        if options
            .get("pattern")
            .is_some_and(|v| v.as_str().is_none_or(str::is_empty))
        {
            p.push(ParamProblem::error(
                "pattern",
                "'pattern' must be a non-empty string",
            ));
        }
        p
    }
    fn required(&self) -> &'static [&'static str] {
        &["file", "pattern"]
    }
    fn describe(&self, options: &Options) -> String {
        contains_command(options).map_or_else(|e| e, |c| format!("run `{c}` on the node"))
    }
    async fn run(&self, ctx: &CommandContext<'_>) -> Outcome {
        run_check(ctx, contains_command(ctx.options)).await
    }
}

/// `ssh/wait_for_login`: tries to log in every `interval` seconds until it works, the
/// `plugin_timeout` passes, or the run is stopped.
pub struct WaitForLogin;

#[async_trait]
impl Plugin for WaitForLogin {
    fn name(&self) -> &'static str {
        "ssh/wait_for_login"
    }
    fn check(&self, options: &Options) -> Vec<ParamProblem> {
        let mut p = problems(options, &["interval", "connection_timeout"]);
        for key in ["interval", "connection_timeout"] {
            if options.get(key).is_some_and(|v| v.as_u64().is_none()) {
                p.push(ParamProblem::error(
                    key,
                    format!("'{key}' must be a number of seconds"),
                ));
            }
        }
        p
    }
    fn describe(&self, _: &Options) -> String {
        "wait until the node accepts an ssh login".into()
    }
    async fn run(&self, ctx: &CommandContext<'_>) -> Outcome {
        let target = match target(ctx) {
            Ok(t) => t,
            Err(e) => return Outcome::failed(e),
        };
        let interval = Duration::from_secs(
            ctx.options
                .get("interval")
                .and_then(|v| v.as_u64())
                .unwrap_or(10)
                .max(1),
        );
        let start = Instant::now();
        let mut stop = ctx.stop.clone();
        loop {
            let mut ignore = |_: crate::exec::Stream, _: &str| {};
            match ctx
                .ssh
                .exec(&target, "exit 0", interval, stop.clone(), &mut ignore)
                .await
            {
                Ok(f) if f.exit_status == Some(0) => {
                    ctx.log.line("login works");
                    return Outcome {
                        success: true,
                        exit_status: Some(0),
                        ..Outcome::default()
                    };
                }
                Ok(f) => ctx.log.line(&format!(
                    "login test ended with {:?}; retrying",
                    f.exit_status
                )),
                Err(e) => ctx.log.line(&format!("cannot log in yet ({e}); retrying")),
            }
            if start.elapsed() >= ctx.timeout {
                return Outcome::failed(format!(
                    "the node did not accept a login within {} s",
                    ctx.timeout.as_secs()
                ));
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() != Stop::No {
                return Outcome {
                    message: Some("stopped while waiting for a login".into()),
                    interrupted: true,
                    ..Outcome::default()
                };
            }
        }
    }
}
