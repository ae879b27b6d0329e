//! What came of an execution: per tool that ran, its summary (the `result` of an execution).

use serde::{Deserialize, Deserializer, Serialize};

use crate::api::{NeededFlag, SyncReason};

/// What came of an execution, per tool that ran (none while it waits or runs, and for the
/// tools it did not get to).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExecutionResult {
    /// dopv's part (deploy, undeploy, sync, refresh, and the first half of setup/teardown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dopv: Option<DopvSummary>,
    /// dopi's part (run, reset, and the second half of setup/sync/teardown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dopi: Option<DopiSummary>,
}

impl ExecutionResult {
    /// Nothing came of it (yet).
    pub fn is_empty(&self) -> bool {
        self.dopv.is_none() && self.dopi.is_none()
    }
}

/// Reads an execution's `result`; executions stored by earlier versions hold `null` for "none".
pub(crate) fn result_or_empty<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<ExecutionResult, D::Error> {
    Ok(Option::<ExecutionResult>::deserialize(d)?.unwrap_or_default())
}

/// dopv's summary of its run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DopvSummary {
    /// The command (`deploy`, `undeploy`, `sync`, `refresh`).
    pub operation: String,
    /// The plan iteration it worked from.
    pub iteration: u64,
    /// The state serial the actions were computed against.
    pub serial: u64,
    /// Nothing was changed.
    pub noop: bool,
    /// What was (or would be) done, node by node, with held-back actions.
    pub actions: Vec<NodeAction>,
    /// Selected nodes that are as planned.
    pub in_sync: Vec<String>,
    /// What each action that ran came to.
    pub outcomes: Vec<ActionOutcome>,
    /// Nodes the provider could not be asked about.
    pub unreadable: Vec<ActionOutcome>,
}

/// What is done to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Create it.
    Create,
    /// Record an existing node dopv had no record of.
    Adopt,
    /// Change it in place (possibly with a reboot).
    Update,
    /// Destroy it and create it again.
    Redeploy,
    /// Destroy it.
    Destroy,
}

/// One node's action, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeAction {
    /// The node.
    pub node: String,
    /// What.
    pub action: ActionKind,
    /// Why.
    pub reason: SyncReason,
    /// The fields that change (updates and redeploys).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<NodeFieldChange>,
    /// Flags this action needs and the run did not have; empty: it runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_back: Vec<NeededFlag>,
    /// Not part of this command (`deploy` leaves changes of existing nodes to `sync`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub out_of_scope: bool,
}

/// What applying a change costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ChangeCost {
    /// Applied to the running node.
    InPlace,
    /// Applied, then the node is restarted (`--interruptive`).
    Reboot,
    /// The node is destroyed and created again (`--destructive`).
    Redeploy,
}

/// Where a change comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ChangeSource {
    /// The plan changed since the node was deployed.
    Plan,
    /// The node changed (drift).
    Drift,
}

/// One field of a node that changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeFieldChange {
    /// The plan key (`cores`, `disks`, …), or `power`.
    pub field: String,
    /// What it is now. Shaped as the plan key's value (a number of cores, a list of disks, …),
    /// so any JSON value.
    #[cfg_attr(feature = "openapi", schema(value_type = Value))]
    pub from: serde_json::Value,
    /// What it becomes, shaped as `from`.
    #[cfg_attr(feature = "openapi", schema(value_type = Value))]
    pub to: serde_json::Value,
    /// What applying it costs.
    pub kind: ChangeCost,
    /// Plan change or drift.
    pub source: ChangeSource,
    /// It loses data (a data disk removed from the plan).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub destructive: bool,
}

/// How an action that ran came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OutcomeResult {
    /// Done.
    Done,
    /// Failed (see `error`).
    Failed,
    /// Not started: an earlier node of its infrastructure failed.
    Skipped,
    /// Not started: the run was stopped first.
    Stopped,
}

/// What one action came to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ActionOutcome {
    /// The node.
    pub node: String,
    /// The action.
    pub action: ActionKind,
    /// How it came out.
    pub result: OutcomeResult,
    /// Why it failed or was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How a dopi run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DopiOutcome {
    /// Every selected step ran (or had run before).
    Done,
    /// A noop run: nothing ran; `would_run` says what would.
    Noop,
}

/// dopi's summary: of a run (`result`, and `recovered` or `would_run`) or of a reset
/// (`reset`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DopiSummary {
    /// How the run ended (runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<DopiOutcome>,
    /// Commands an earlier, interrupted run left running that this run found and marked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<usize>,
    /// What a noop run would run, one line per command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub would_run: Option<Vec<String>>,
    /// Node records a reset put back to ready (resets only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<usize>,
}
