//! The plan's hooks: programs run around creating, updating and destroying a node.
//!
//! As in the original, each program gets two arguments, the node name and `1` when the node
//! was (or is about to be) really created, changed or destroyed, `0` when nothing was to do;
//! the environment is wiped to `HOME`, `PATH` and, new in dop, `DOP_PLAN`, `DOP_NODE_NAME`,
//! `DOP_NODE_FQDN` and `DOP_HOOK`. A hook that exits non-zero is logged as a warning and does
//! not stop the run (as in the original); one that cannot be started fails the node's action
//! before anything changes when it is a `pre_` hook.

use dop_run::process::GroupGuard;
use std::process::Stdio;

use dop_core::plan::{Hooks, Node};
use dop_run::logs::NodeLog;

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
/// ended non-zero). An error means a program could not be started.
pub async fn run(
    hooks: &Hooks,
    hook: Hook,
    plan: &str,
    node: &Node,
    changed: bool,
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
            .env("DOP_HOOK", hook.key())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a run stopped at once takes the hook's children along.
            .process_group(0)
            .kill_on_drop(true);
        if let Some(home) = std::env::var_os("HOME") {
            command.env("HOME", home);
        }
        let cannot_run =
            |e: std::io::Error| format!("the {} hook {program} cannot run: {e}", hook.key());
        let child = command.spawn().map_err(cannot_run)?;
        let mut group = GroupGuard::new(child.id());
        let output = child.wait_with_output().await.map_err(cannot_run)?;
        // It ended: what it left running on purpose (`nohup … &`) is its business.
        group.disarm();
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            log.line(&format!("{} {program}: {line}", hook.key()));
        }
        for line in String::from_utf8_lossy(&output.stderr).lines() {
            log.line(&format!("{} {program} (stderr): {line}", hook.key()));
        }
        if !output.status.success() {
            warnings.push(format!(
                "the {} hook {program} ended with {}; the run goes on",
                hook.key(),
                output.status
            ));
        }
    }
    Ok(warnings)
}
