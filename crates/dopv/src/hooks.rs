//! The plan's hooks: programs run around creating, updating and destroying a node.
//!
//! As in the original, each program gets two arguments, the node name and `1` when the node
//! was (or is about to be) really created, changed or destroyed, `0` when nothing was to do;
//! the environment is wiped to `HOME`, `PATH` and, new in dop, `DOP_PLAN`, `DOP_NODE_NAME`,
//! `DOP_NODE_FQDN` and `DOP_HOOK`. A hook that exits non-zero is logged as a warning and does
//! not stop the run (as in the original); one that cannot be started fails the node's action
//! before anything changes when it is a `pre_` hook.
//!
//! Each program runs within limits (`dop.conf`): after `hook_timeout` it is stopped with its
//! whole process group (TERM, then KILL), and only the first `max_program_output` bytes of its
//! output are logged, then a marker line; either is a warning like a non-zero exit.

use dop_core::plan::{Hooks, Node};
use dop_core::ProgramLimits;
use dop_run::logs::NodeLog;
use dop_run::process::{run_limited, truncation_marker, Limits, Overflow, Stream};

/// The six hook points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Hook {
    PreCreate,
    PostCreate,
    PreUpdate,
    PostUpdate,
    PreDestroy,
    PostDestroy,
}

impl Hook {
    /// The plan key.
    pub fn key(self) -> &'static str {
        match self {
            Hook::PreCreate => "pre_create_vm",
            Hook::PostCreate => "post_create_vm",
            Hook::PreUpdate => "pre_update_vm",
            Hook::PostUpdate => "post_update_vm",
            Hook::PreDestroy => "pre_destroy_vm",
            Hook::PostDestroy => "post_destroy_vm",
        }
    }

    fn programs(self, hooks: &Hooks) -> &[String] {
        match self {
            Hook::PreCreate => &hooks.pre_create_vm,
            Hook::PostCreate => &hooks.post_create_vm,
            Hook::PreUpdate => &hooks.pre_update_vm,
            Hook::PostUpdate => &hooks.post_update_vm,
            Hook::PreDestroy => &hooks.pre_destroy_vm,
            Hook::PostDestroy => &hooks.post_destroy_vm,
        }
    }
}

/// Runs the programs of one hook point, in order, and returns the warnings (programs that
/// ended non-zero, ran past their time or said too much). An error means a program could not
/// be started.
pub async fn run(
    hooks: &Hooks,
    hook: Hook,
    plan: &str,
    node: &Node,
    changed: bool,
    limits: ProgramLimits,
    log: &NodeLog,
) -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    for program in hook.programs(hooks) {
        let mut command = tokio::process::Command::new(program);
        command
            .arg(&node.name)
            .arg(if changed { "1" } else { "0" })
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("DOP_PLAN", plan)
            .env("DOP_NODE_NAME", &node.name)
            .env("DOP_NODE_FQDN", &node.fqdn)
            .env("DOP_HOOK", hook.key());
        if let Some(home) = std::env::var_os("HOME") {
            command.env("HOME", home);
        }
        let program_limits = Limits {
            timeout: limits.hook_timeout(),
            max_output: limits.max_output,
        };
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        // A run stopped at once drops this future: the hook's group goes with it.
        let ended = run_limited(
            &mut command,
            program_limits,
            Overflow::Discard,
            None,
            |stream, data| match stream {
                Stream::Stdout => stdout.extend_from_slice(data),
                Stream::Stderr => stderr.extend_from_slice(data),
            },
        )
        .await
        .map_err(|e| format!("the {} hook {program} cannot run: {e}", hook.key()))?;
        for line in String::from_utf8_lossy(&stdout).lines() {
            log.line(&format!("{} {program}: {line}", hook.key()));
        }
        for line in String::from_utf8_lossy(&stderr).lines() {
            log.line(&format!("{} {program} (stderr): {line}", hook.key()));
        }
        let which = format!("the {} hook {program} for {}", hook.key(), node.name);
        if ended.truncated {
            log.line(&format!(
                "{} {program}: {}",
                hook.key(),
                truncation_marker(limits.max_output)
            ));
            warnings.push(format!(
                "{which} wrote more than {} bytes (max_program_output in dop.conf); the rest was \
                 not logged",
                limits.max_output
            ));
        }
        if ended.timed_out {
            warnings.push(format!(
                "{which} did not end within {} s (hook_timeout in dop.conf) and was stopped with \
                 its process group; the run goes on",
                limits.hook_timeout
            ));
        } else if !ended.status.success() {
            warnings.push(format!(
                "the {} hook {program} ended with {}; the run goes on",
                hook.key(),
                ended.status
            ));
        }
    }
    Ok(warnings)
}
