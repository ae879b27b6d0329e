//! `ssh/puppet_agent_run`: `puppet agent --test` on the node, judged by Puppet's detailed exit
//! codes (0 no changes, 2 changes: success; 4 failures, 6 changes and failures, 1 a failed or
//! locked run: failure) and by error patterns, with reruns on change or error, and a wait while
//! another agent run holds the lock. Unlike the original, `expect_exit_codes` is honoured.
//!
//! With `apply: /path/site.pp` it runs Puppet without a server instead (`puppet apply
//! --detailed-exitcodes`, judged the same way), with the node's name as the certname, so that
//! its Hiera lookups find the node's data of the plan (see `dopi hiera`).

use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;

use super::checks::{self, Checks};
use super::custom::environment;
use super::ssh_custom::{exports, run_remote, shell_quote, ssh_problems, target, SSH_KEYS};
use super::ssh_more::{interrupted, pause};
use crate::plugin::{params, CommandContext, CommandOptions, CommandOutcome, ParamProblem, Plugin};
use crate::ssh::Target;

/// The `ssh/puppet_agent_run` plugin.
pub struct PuppetAgentRun;

/// Its own parameters (besides the judging and ssh ones).
const KEYS: [&str; 9] = [
    "arguments",
    "apply",
    "env",
    "rerun_on_change",
    "rerun_on_error",
    "max_rerun",
    "wait_if_already_running",
    "puppet_bin",
    "lock_check_interval",
];

/// Puppet runs can take long: the default `plugin_timeout` is 30 minutes, as in the original.
const DEFAULT_TIMEOUT: u64 = 1800;

/// The settings of one command, read once.
struct Settings {
    puppet: String,
    /// The manifest `puppet apply` runs; `None`: `puppet agent --test`.
    apply: Option<String>,
    arguments: String,
    rerun_on_change: bool,
    rerun_on_error: bool,
    max_rerun: u64,
    wait_if_running: bool,
    lock_interval: Duration,
}

fn flag(options: &CommandOptions, key: &str, default: bool) -> bool {
    options.get(key).and_then(Value::as_bool).unwrap_or(default)
}

fn puppet_bin(options: &CommandOptions) -> Result<String, ParamProblem> {
    match options.get("puppet_bin") {
        None => Ok("puppet".into()),
        Some(Value::String(p)) if p.starts_with('/') && !p.ends_with('/') => Ok(p.clone()),
        Some(v) => Err(ParamProblem::error(
            "puppet_bin",
            format!(
                "'puppet_bin' must be an absolute path to the puppet program on the node, not {v}"
            ),
        )),
    }
}

impl Settings {
    /// The settings, or the first problem with them.
    fn read(options: &CommandOptions) -> Result<Settings, ParamProblem> {
        let max_rerun = match options.get("max_rerun") {
            None => 1,
            Some(v) => v.as_u64().filter(|n| *n > 0).ok_or_else(|| {
                ParamProblem::error(
                    "max_rerun",
                    format!("'max_rerun' must be a number above 0, not {v}"),
                )
            })?,
        };
        let lock_interval = match options.get("lock_check_interval") {
            None => 10,
            Some(v) => v.as_u64().filter(|n| *n > 0).ok_or_else(|| {
                ParamProblem::error(
                    "lock_check_interval",
                    format!("'lock_check_interval' must be a number of seconds above 0, not {v}"),
                )
            })?,
        };
        for key in [
            "rerun_on_change",
            "rerun_on_error",
            "wait_if_already_running",
        ] {
            if options.get(key).is_some_and(|v| !v.is_boolean()) {
                return Err(ParamProblem::error(
                    key,
                    format!("'{key}' must be true or false"),
                ));
            }
        }
        let apply = match options.get("apply") {
            None => None,
            Some(Value::String(p)) if p.starts_with('/') && !p.ends_with('/') => Some(p.clone()),
            Some(v) => {
                return Err(ParamProblem::error(
                    "apply",
                    format!("'apply' must be the absolute path of a manifest on the node, not {v}"),
                ))
            }
        };
        Ok(Settings {
            puppet: puppet_bin(options)?,
            apply,
            arguments: params::arguments(options.get("arguments"))
                .map_err(|e| ParamProblem::error("arguments", e))?,
            rerun_on_change: flag(options, "rerun_on_change", false),
            rerun_on_error: flag(options, "rerun_on_error", false),
            max_rerun,
            wait_if_running: flag(options, "wait_if_already_running", true),
            lock_interval: Duration::from_secs(lock_interval),
        })
    }

    /// The command line for `node`.
    fn command(&self, node: &str) -> String {
        let puppet = shell_quote(&self.puppet);
        let mut line = match &self.apply {
            None => format!("{puppet} agent --test --color false"),
            Some(_) => format!(
                "{puppet} apply --detailed-exitcodes --color false --certname {}",
                shell_quote(node)
            ),
        };
        if !self.arguments.is_empty() {
            line.push(' ');
            line.push_str(&self.arguments);
        }
        if let Some(manifest) = &self.apply {
            line.push(' ');
            line.push_str(&shell_quote(manifest));
        }
        line
    }
}

/// The judging options with Puppet's defaults: exit codes 0 and 2, `^Error:` and `^Warning:`.
fn judging(options: &CommandOptions) -> CommandOptions {
    let mut o = options.clone();
    o.entry("expect_exit_codes")
        .or_insert_with(|| serde_json::json!([0, 2]));
    o.entry("parse_output")
        .or_insert_with(|| serde_json::json!({"error": ["^Error:"], "warning": ["^Warning:"]}));
    o
}

/// What an exit status of `puppet agent --test --detailed-exitcodes` means.
fn meaning(code: i32) -> Option<&'static str> {
    match code {
        0 => Some("no changes"),
        1 => Some("the run failed, or another run held the lock"),
        2 => Some("changes applied"),
        4 => Some("the run had failures"),
        6 => Some("changes applied, and the run had failures"),
        _ => None,
    }
}

#[async_trait]
impl Plugin for PuppetAgentRun {
    fn name(&self) -> &'static str {
        "ssh/puppet_agent_run"
    }

    fn check(&self, options: &CommandOptions) -> Vec<ParamProblem> {
        let known: Vec<&str> = KEYS
            .into_iter()
            .chain(checks::KEYS)
            .chain(SSH_KEYS)
            .collect();
        let mut problems = params::unknown_keys(options, &known);
        problems.extend(Checks::problems(options));
        problems.extend(ssh_problems(options));
        if let Err(e) = params::env(options.get("env")) {
            problems.push(ParamProblem::error("env", e));
        }
        if let Err(problem) = Settings::read(options) {
            problems.push(problem);
        }
        problems
    }

    fn default_timeout(&self) -> u64 {
        DEFAULT_TIMEOUT
    }

    fn describe(&self, options: &CommandOptions) -> String {
        match Settings::read(options) {
            Ok(s) => format!("run `{}` on the node over ssh", s.command("NODE")),
            Err(problem) => problem.message,
        }
    }

    async fn run(&self, ctx: &CommandContext<'_>) -> CommandOutcome {
        let (settings, env, target) = match (
            Settings::read(ctx.options).map_err(|p| p.message),
            environment(ctx),
            target(ctx),
        ) {
            (Ok(s), Ok(e), Ok(t)) => (s, e, t),
            (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => return CommandOutcome::failed(e),
        };
        let exports = exports(&env);
        let judging = judging(ctx.options);
        let start = Instant::now();
        let runs_allowed = 1 + settings.max_rerun;
        let mut runs = 0;
        loop {
            if let Some(outcome) = wait_for_lock(ctx, &target, &settings, &exports, start).await {
                return outcome;
            }
            runs += 1;
            ctx.log.line(&match runs {
                1 => "Starting Puppet Run".to_string(),
                n => format!("Starting Puppet Rerun {} of {}", n - 1, settings.max_rerun),
            });
            let mut checks = match Checks::from_options(&judging) {
                Ok(c) => c,
                Err(e) => return CommandOutcome::failed(e),
            };
            let line = settings.command(&ctx.node.name);
            // Every run gets what is left of plugin_timeout, not all of it.
            let left = ctx.with_timeout(ctx.timeout.saturating_sub(start.elapsed()));
            let mut outcome = run_remote(
                &left,
                &target,
                &format!("{exports}{line}"),
                &line,
                None,
                &mut checks,
            )
            .await;
            if outcome.interrupted || ctx.timeout.saturating_sub(start.elapsed()).is_zero() {
                return outcome;
            }
            let code = outcome.exit_status;
            if let (Some(code), Some(message)) = (code, outcome.message.as_mut()) {
                if let Some(what) = meaning(code) {
                    message.push_str(&format!(" (Puppet: {what})"));
                }
            }
            let changed = outcome.success && code == Some(2);
            if outcome.success && !changed {
                return outcome;
            }
            if changed {
                if !settings.rerun_on_change {
                    return outcome;
                }
                if runs >= runs_allowed {
                    ctx.log
                        .line("warning: Puppet had still changes after multiple reruns");
                    outcome.message = Some("Puppet had still changes after multiple reruns".into());
                    return outcome;
                }
                ctx.log.line("Puppet applied changes; running it again");
                continue;
            }
            // An error.
            if !settings.rerun_on_error {
                return outcome;
            }
            if runs >= runs_allowed {
                let why = outcome.message.unwrap_or_default();
                outcome.message = Some(format!(
                    "Puppet had ERRORS during the run! max_reruns ({}) reached! Last run: {why}",
                    settings.max_rerun
                ));
                return outcome;
            }
            ctx.log.line(&format!(
                "Puppet had errors ({}); running it again",
                outcome.message.as_deref().unwrap_or("")
            ));
        }
    }
}

/// Waits while another agent run holds Puppet's lock file; `Some` when the command must end
/// here (the lock is held and waiting is off, the timeout passed, the run was stopped).
async fn wait_for_lock(
    ctx: &CommandContext<'_>,
    target: &Target,
    settings: &Settings,
    exports: &str,
    start: Instant,
) -> Option<CommandOutcome> {
    let puppet = shell_quote(&settings.puppet);
    let test =
        format!("{exports}test -f \"$({puppet} config print statedir)/agent_catalog_run.lock\"");
    loop {
        let mut ignore = |_: crate::exec::Stream, _: &str| {};
        let locked = match ctx
            .ssh
            .exec(
                target,
                &test,
                None,
                Duration::from_secs(60).min(ctx.timeout),
                ctx.stop.clone(),
                &mut ignore,
            )
            .await
        {
            Ok(f) if f.stopped => return Some(interrupted("stopped before the Puppet run")),
            Ok(f) => f.exit_status == Some(0),
            Err(e) => return Some(CommandOutcome::failed(e.to_string())),
        };
        if !locked {
            return None;
        }
        if !settings.wait_if_running {
            return Some(CommandOutcome::failed(
                "a Puppet run is already in progress on the node and wait_if_already_running is false",
            ));
        }
        let waited = start.elapsed();
        if waited + settings.lock_interval > ctx.timeout {
            return Some(CommandOutcome::failed(format!(
                "a Puppet run was still in progress on the node after {} s (plugin_timeout)",
                waited.as_secs()
            )));
        }
        ctx.log.line(&format!(
            "Puppet run already in progress, waiting {}s to check again if finished",
            settings.lock_interval.as_secs()
        ));
        if pause(ctx, settings.lock_interval).await {
            return Some(interrupted(
                "stopped while waiting for another Puppet run to finish",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(json: serde_json::Value) -> CommandOptions {
        json.as_object().unwrap().clone()
    }

    #[test]
    fn the_command_line_quotes_the_program_and_keeps_the_arguments() {
        let s = Settings::read(&options(serde_json::json!({
            "puppet_bin": "/opt/puppet labs/bin/puppet",
            "arguments": "--environment prod --tags 'a b'"
        })))
        .unwrap();
        assert_eq!(
            s.command("web01"),
            "'/opt/puppet labs/bin/puppet' agent --test --color false --environment prod --tags 'a b'"
        );
        assert_eq!((s.max_rerun, s.wait_if_running), (1, true));
        let apply = Settings::read(&options(serde_json::json!({
            "apply": "/etc/puppet/code/site.pp", "arguments": "--noop"
        })))
        .unwrap();
        assert_eq!(
            apply.command("web01.example.com"),
            "'puppet' apply --detailed-exitcodes --color false --certname 'web01.example.com' --noop '/etc/puppet/code/site.pp'"
        );
        let problems = PuppetAgentRun.check(&options(serde_json::json!({"apply": "site.pp"})));
        assert_eq!(problems[0].key, "apply", "{problems:?}");
    }

    #[test]
    fn bad_parameters_are_named() {
        let problems = PuppetAgentRun.check(&options(serde_json::json!({
            "max_rerun": 0, "credentials": "x"
        })));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "max_rerun");
        let problems = PuppetAgentRun.check(&options(serde_json::json!({
            "puppet_bin": "bin/puppet"
        })));
        assert_eq!(problems[0].key, "puppet_bin");
        let problems = PuppetAgentRun.check(&options(serde_json::json!({
            "rerun_on_error": "yes"
        })));
        assert_eq!(problems[0].key, "rerun_on_error");
    }
}
