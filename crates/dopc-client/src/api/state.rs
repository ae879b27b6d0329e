//! `/plans/{name}/state`: a plan's combined dopv and dopi state, one document.
//!
//! dopv and dopi own the types these mirror (the client depends on neither); the server maps
//! theirs onto these with exhaustive matches, so that a new variant or field over there fails
//! the server's build instead of changing the wire format unnoticed.

use std::collections::BTreeMap;

use dop_core::plan::Dns;
use dop_core::DataSize;
use serde::{Deserialize, Serialize};

/// `GET /plans/{name}/state`, and each message of its stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlanState {
    /// The plan.
    pub plan: String,
    /// Its latest iteration.
    pub iteration: u64,
    /// The higher of dopv's and dopi's state serials: it changes on every state write.
    pub serial: u64,
    /// How many nodes stand where.
    pub sync: SyncCounts,
    /// dopv's nodes: the plan's, in plan order, then those only the state still knows.
    pub nodes: Vec<NodeState>,
    /// dopi's step sets, in plan order.
    pub step_sets: Vec<StepSetState>,
}

impl PlanState {
    /// True when every node is in sync.
    pub fn all_in_sync(&self) -> bool {
        self.sync.in_sync == self.nodes.len()
    }
}

/// Nodes per [`SyncState`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SyncCounts {
    /// As planned.
    pub in_sync: usize,
    /// The plan changed and no sync applied it yet.
    pub pending: usize,
    /// Changed behind dopv's back.
    pub drifted: usize,
    /// The provider could not be asked.
    pub unknown: usize,
}

/// A node's standing, in one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SyncState {
    /// As planned, as far as the last look showed.
    InSync,
    /// The plan changed (or a node was added or removed) and no sync applied it yet.
    Pending,
    /// The node differs from what dopv deployed, behind dopv's back (or it is gone).
    Drifted,
    /// The provider could not be asked at the last look; never read as "gone".
    Unknown,
}

impl SyncState {
    /// The name (as in JSON).
    pub fn name(self) -> &'static str {
        match self {
            SyncState::InSync => "in_sync",
            SyncState::Pending => "pending",
            SyncState::Drifted => "drifted",
            SyncState::Unknown => "unknown",
        }
    }
}

/// Why a sync would act on a node (dopv's reasons; machine-readable, stable).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SyncReason {
    /// In the plan, never deployed.
    NewInPlan,
    /// Deployed, no longer in the plan.
    RemovedFromPlan,
    /// The plan changed fields that are changed in place.
    ChangedInPlace,
    /// The plan changed fields that need a reboot.
    ChangedRequiresReboot,
    /// The plan changed fields that need a redeploy.
    ChangedRequiresRedeploy,
    /// The node differs from its plan entry behind dopv's back.
    Drifted,
    /// dopv deployed the node, and it is gone.
    Missing,
    /// An earlier run stopped half-way through this node.
    Interrupted,
    /// The last create of the node failed.
    FailedBefore,
    /// The node exists but dopv had no record of it.
    FoundExisting,
    /// `undeploy` asked for it.
    UndeployRequested,
}

impl SyncReason {
    /// The word (as in JSON).
    pub fn name(self) -> &'static str {
        match self {
            SyncReason::NewInPlan => "new_in_plan",
            SyncReason::RemovedFromPlan => "removed_from_plan",
            SyncReason::ChangedInPlace => "changed_in_place",
            SyncReason::ChangedRequiresReboot => "changed_requires_reboot",
            SyncReason::ChangedRequiresRedeploy => "changed_requires_redeploy",
            SyncReason::Drifted => "drifted",
            SyncReason::Missing => "missing",
            SyncReason::Interrupted => "interrupted",
            SyncReason::FailedBefore => "failed_before",
            SyncReason::FoundExisting => "found_existing",
            SyncReason::UndeployRequested => "undeploy_requested",
        }
    }
}

/// A flag a sync would need for a node and was not given (its action is held back).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum NeededFlag {
    /// `--destructive`: destroy and redeploy.
    #[serde(rename = "--destructive")]
    Destructive,
    /// `--interruptive`: reboot.
    #[serde(rename = "--interruptive")]
    Interruptive,
}

impl std::fmt::Display for NeededFlag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NeededFlag::Destructive => "--destructive",
            NeededFlag::Interruptive => "--interruptive",
        })
    }
}

/// One field in which a node differs from what dopv deployed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Drift {
    /// The plan key (`cores`, `disks`, …) or `power` / `exists`.
    pub field: String,
    /// What it is. Any JSON value: its shape is the field's (a number of cores, a list of
    /// interfaces, …).
    #[cfg_attr(feature = "openapi", schema(value_type = Value))]
    pub actual: serde_json::Value,
    /// What it should be, shaped as `actual`.
    #[cfg_attr(feature = "openapi", schema(value_type = Value))]
    pub expected: serde_json::Value,
}

/// A node's standing as of the last time dopv looked (a `refresh`, `sync` or `deploy`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeSync {
    /// Where it stands.
    pub state: SyncState,
    /// What a sync would do about it, and why; none when in sync or not known.
    pub reason: Option<SyncReason>,
    /// The flags that sync would need.
    pub held_back: Vec<NeededFlag>,
    /// How it differs from what was deployed.
    pub drift: Vec<Drift>,
    /// Plan keys that changed since it was deployed.
    pub pending: Vec<String>,
    /// When the provider was last asked (RFC 3339).
    pub refreshed_at: Option<String>,
    /// Why the provider could not be asked at the last look.
    pub read_error: Option<String>,
}

/// Where a node's deployment stands (dopv). Every status but `deployed` is one a run leaves
/// only when it fails or is killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeployStatus {
    /// A create started and did not finish.
    Creating,
    /// Deployed as planned.
    Deployed,
    /// An in-place change started and did not finish.
    Updating,
    /// A destroy started and did not finish.
    Destroying,
    /// The last create failed; what it had built was rolled back.
    Failed,
}

impl DeployStatus {
    /// The word (as in JSON).
    pub fn name(self) -> &'static str {
        match self {
            DeployStatus::Creating => "creating",
            DeployStatus::Deployed => "deployed",
            DeployStatus::Updating => "updating",
            DeployStatus::Destroying => "destroying",
            DeployStatus::Failed => "failed",
        }
    }
}

/// Whether a node runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Power {
    /// Running.
    On,
    /// Stopped.
    Off,
}

impl Power {
    /// The word (as in JSON).
    pub fn name(self) -> &'static str {
        match self {
            Power::On => "on",
            Power::Off => "off",
        }
    }
}

/// An interface as the provider reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ActualInterface {
    /// The interface name (`eth0`).
    pub name: String,
    /// Its address (`dhcp` / `none` when it has no fixed one).
    pub ip: String,
    /// The network its floating IP comes from (OpenStack), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floating_network: Option<String>,
}

/// A data disk as the provider reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ActualDisk {
    /// The disk's plan name.
    pub name: String,
    /// Its size in bytes.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub size: DataSize,
}

/// Where dopi reaches a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SshEndpoint {
    /// The address sshd listens on.
    pub address: String,
    /// Its port.
    pub port: u16,
}

/// A node as its provider last reported it. A field is absent when the provider cannot tell.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ActualNode {
    /// Whether the node exists at all.
    pub exists: bool,
    /// On or off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<Power>,
    /// Its host name, fully qualified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fqdn: Option<String>,
    /// The image it was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The cloud's flavor (OpenStack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flavor: Option<String>,
    /// CPU cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<u32>,
    /// Memory in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub memory: Option<DataSize>,
    /// Root disk size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub storage: Option<DataSize>,
    /// Interfaces, in plan order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<ActualInterface>>,
    /// Data disks, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<ActualDisk>>,
    /// Users that can log in with a plan credential, sorted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Vec<String>>,
    /// DNS settings: `{name_servers, search_domains}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub dns: Option<Dns>,
    /// Tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Security groups, sorted (OpenStack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_groups: Option<Vec<String>>,
    /// The SSH port of the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
    /// Where dopi reaches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshEndpoint>,
}

/// A data disk dopv made for a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeDisk {
    /// The disk's plan name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

/// One node in a plan's state: its standing, and what dopv recorded (all `null` for a node
/// dopv never deployed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeState {
    /// The node.
    pub name: String,
    /// In the newest plan iteration.
    pub in_plan: bool,
    /// Where it stands.
    pub sync: NodeSync,
    /// Where its deployment stands.
    pub status: Option<DeployStatus>,
    /// Changes on every (re)deploy.
    pub generation: Option<u64>,
    /// The plan iteration it was deployed from.
    pub iteration: Option<u64>,
    /// What the provider last reported.
    pub actual: Option<ActualNode>,
    /// When the provider was last asked, in milliseconds since the Unix epoch.
    pub refreshed_ms: Option<u64>,
    /// Why the last action on it failed.
    pub error: Option<String>,
    /// Its data disks.
    pub disks: Option<Vec<NodeDisk>>,
}

/// Where a step (or step set, or a node's part of a step) stands (dopi).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Not run yet, or reset.
    Ready,
    /// Running now (or interrupted, when no run holds the plan).
    Running,
    /// Finished successfully.
    Done,
    /// Finished unsuccessfully.
    Failed,
}

impl RunState {
    /// The word (as in JSON).
    pub fn name(self) -> &'static str {
        match self {
            RunState::Ready => "ready",
            RunState::Running => "running",
            RunState::Done => "done",
            RunState::Failed => "failed",
        }
    }
}

/// A node's part of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeStepState {
    /// Where it stands.
    pub state: RunState,
    /// The most attempts any of its commands took.
    pub attempts: u32,
}

/// A step of a step set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StepState {
    /// The step.
    pub name: String,
    /// Where it stands over its nodes.
    pub state: RunState,
    /// Per node.
    pub nodes: BTreeMap<String, NodeStepState>,
}

/// A step set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StepSetState {
    /// The step set.
    pub name: String,
    /// Where it stands over its steps.
    pub state: RunState,
    /// Its steps, in order.
    pub steps: Vec<StepState>,
}

/// The last message of a state stream: the plan is gone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StateStreamEnd {
    /// Always `"end"`.
    pub kind: String,
    /// Why the stream ends.
    pub reason: String,
}
