//! Executions: what was asked (plan, task, options), where it stands, and what came of it.

use serde::{Deserialize, Serialize};

/// What an execution does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// dopv deploy.
    Deploy,
    /// dopv undeploy.
    Undeploy,
    /// dopi run.
    Run,
    /// dopv deploy, then dopi run.
    Setup,
    /// dopv undeploy, then dopi reset (force).
    Teardown,
    /// dopv sync, then dopi run (unless `run: false`).
    Sync,
    /// dopi reset.
    Reset,
    /// dopv refresh: ask the providers how the nodes are and record it; change nothing.
    Refresh,
}

impl Task {
    /// The name.
    pub fn name(self) -> &'static str {
        match self {
            Task::Deploy => "deploy",
            Task::Undeploy => "undeploy",
            Task::Run => "run",
            Task::Setup => "setup",
            Task::Teardown => "teardown",
            Task::Sync => "sync",
            Task::Reset => "reset",
            Task::Refresh => "refresh",
        }
    }

    /// Whether the task runs dopi's steps (and so needs the step set).
    pub fn runs_steps(self) -> bool {
        matches!(self, Task::Run | Task::Setup | Task::Sync)
    }
}

/// Where an execution stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Just made.
    New,
    /// Waiting for its plan's running execution.
    Queued,
    /// Running.
    Running,
    /// Finished successfully.
    Done,
    /// Finished unsuccessfully (or the server stopped while it ran).
    Failed,
    /// Cancelled before or while it ran.
    Cancelled,
}

impl Status {
    /// The name (as in JSON).
    pub fn name(self) -> &'static str {
        match self {
            Status::New => "new",
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Done => "done",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// True once it cannot change any more.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Done | Status::Failed | Status::Cancelled)
    }
}

/// The options of an execution. Unknown keys are refused.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct ExecOptions {
    /// dopi's step set (default `default`).
    #[serde(skip_serializing_if = "Option::is_none", alias = "stepset")]
    pub step_set: Option<String>,
    /// Node selection, as the command-line flags: names or /regex/, comma-separated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<String>,
    /// Roles to include.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roles: Option<String>,
    /// Nodes to leave out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exclude_nodes: Option<String>,
    /// Roles to leave out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exclude_roles: Option<String>,
    /// Include by configuration value (JSON text, as `--nodes-by-config`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes_by_config: Option<String>,
    /// Leave out by configuration value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exclude_nodes_by_config: Option<String>,
    /// Show what would be done; change nothing.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub noop: bool,
    /// `sync`: destroy and redeploy.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub destructive: bool,
    /// `sync`: reboot.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub interruptive: bool,
    /// `undeploy`, `teardown`: delete data disks.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub rmdisk: bool,
    /// `reset`: done work too.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// `reset`: only this step of the step set (`step_set`, else `default`): its name, or its
    /// number from 1. Without `step_set` and `step`, `reset` resets every step set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// `sync`: run dopi afterwards (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<bool>,
}

impl ExecOptions {
    /// The node filter the options describe.
    pub fn filter(&self) -> Result<dop_core::NodeFilter, dop_core::FilterError> {
        dop_core::NodeFilter::from_flags(&dop_core::FilterFlags {
            nodes: self.nodes.as_deref(),
            roles: self.roles.as_deref(),
            exclude_nodes: self.exclude_nodes.as_deref(),
            exclude_roles: self.exclude_roles.as_deref(),
            nodes_by_config: self.nodes_by_config.as_deref(),
            exclude_nodes_by_config: self.exclude_nodes_by_config.as_deref(),
        })
    }

    /// The step set.
    pub fn step_set(&self) -> &str {
        self.step_set.as_deref().unwrap_or("default")
    }
}

/// An execution as stored and served.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Execution {
    /// Its number.
    pub id: u64,
    /// The plan.
    pub plan: String,
    /// The task.
    pub task: Task,
    /// Where it stands.
    pub status: Status,
    /// Its options.
    pub options: ExecOptions,
    /// Who asked for it: the token's name, or `monitor` for executions dopc's monitor
    /// scheduled.
    pub created_by: String,
    /// Why it was made, when something other than a person made it (the monitor says which
    /// schedule or finding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it was made (RFC 3339).
    pub created_at: String,
    /// When it started running.
    pub started_at: Option<String>,
    /// When it finished.
    pub finished_at: Option<String>,
    /// The id of its log directory (`<log_dir>/<plan>/<log_id>/`).
    pub log_id: String,
    /// Stop requests so far (1: graceful, 2: terminate, 3: kill).
    #[serde(default)]
    pub cancel_requests: u8,
    /// What came of it: per tool that ran, its summary.
    #[serde(default, deserialize_with = "crate::api::result::result_or_empty")]
    pub result: crate::api::ExecutionResult,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
}

/// `POST /executions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExecutionRequest {
    /// The plan.
    pub plan: String,
    /// What to do.
    pub task: Task,
    /// How (`run_options` is the original's name).
    #[serde(default, alias = "run_options")]
    pub options: ExecOptions,
}

/// `POST /executions/{id}/cancel` (the body is optional).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct CancelRequest {
    /// Terminate running commands now instead of asking gracefully first.
    pub force: bool,
}

/// `DELETE /executions`: which finished executions to remove.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ClearRequest {
    /// Final statuses (done, failed, cancelled); at least one.
    pub statuses: Vec<Status>,
    /// Only this plan's.
    #[serde(default)]
    pub plan: Option<String>,
    /// Only those finished at least this many seconds ago.
    #[serde(default)]
    pub age: Option<u64>,
}

/// A page of `GET /executions` (`?limit=&before=&since=`): without a limit, every execution
/// (the original's answer); with one, at most `limit` of them, oldest first: the newest ones
/// (before `before`, when given), or with `since` the oldest ones after it. To page back, ask
/// again with `before` = the first id of the page; to follow new ones, `since` = the last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[serde(deny_unknown_fields)]
pub struct ExecutionPage {
    /// At most this many (1 to 1000).
    pub limit: Option<usize>,
    /// Only executions with a smaller id.
    pub before: Option<u64>,
    /// Only executions with a larger id.
    pub since: Option<u64>,
}

impl ExecutionPage {
    /// The largest page.
    pub const MAX_LIMIT: usize = 1000;

    /// Why the page cannot be served, if it cannot.
    pub fn problem(&self) -> Option<String> {
        match self.limit {
            Some(n) if n == 0 || n > Self::MAX_LIMIT => Some(format!(
                "limit must be between 1 and {}, not {n}",
                Self::MAX_LIMIT
            )),
            _ => None,
        }
    }

    /// The page of `executions` (oldest first, as stored), oldest first. Only what the page
    /// holds is taken from the iterator's far end: with a limit, a long history is not walked
    /// (or cloned, by a caller that maps references) beyond the page.
    pub fn select<T, I>(&self, executions: I, id: impl Fn(&T) -> u64) -> Vec<T>
    where
        I: DoubleEndedIterator<Item = T>,
    {
        let (before, since) = (self.before, self.since);
        let inside = executions
            .filter(|e| before.is_none_or(|b| id(e) < b))
            .filter(|e| since.is_none_or(|s| id(e) > s));
        match self.limit {
            None => inside.collect(),
            // Forward from `since`: the oldest ones after it.
            Some(n) if since.is_some() && before.is_none() => inside.take(n).collect(),
            // Otherwise the newest ones, still oldest first.
            Some(n) => {
                let mut newest: Vec<T> = inside.rev().take(n).collect();
                newest.reverse();
                newest
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ExecutionPage;

    #[test]
    fn pages_go_back_with_before_and_forward_with_since() {
        let ids: Vec<u64> = (1..=10).collect();
        let page = |limit, before, since| {
            ExecutionPage {
                limit,
                before,
                since,
            }
            .select(ids.iter().copied(), |i| *i)
        };
        assert_eq!(
            page(None, None, None),
            ids,
            "no limit: everything, as before"
        );
        assert_eq!(page(Some(3), None, None), vec![8, 9, 10]);
        assert_eq!(page(Some(3), Some(8), None), vec![5, 6, 7]);
        assert_eq!(page(Some(3), None, Some(7)), vec![8, 9, 10]);
        assert_eq!(page(Some(2), None, Some(2)), vec![3, 4]);
        assert_eq!(page(Some(5), Some(6), Some(2)), vec![3, 4, 5]);
        assert_eq!(page(None, Some(3), None), vec![1, 2]);
        assert!(ExecutionPage {
            limit: Some(0),
            ..Default::default()
        }
        .problem()
        .is_some());
        assert!(ExecutionPage {
            limit: Some(1001),
            ..Default::default()
        }
        .problem()
        .is_some());
        assert!(ExecutionPage::default().problem().is_none());
    }
}
