//! The wire types of dopc's REST API (`/api/v1`): what the client sends and what the server
//! answers. The server builds its answers from the same types, so that the two cannot drift
//! apart; the `openapi` feature derives their schemas for the server's OpenAPI document.

mod error;
mod execution;
mod logs;
mod monitor;
mod plans;
mod result;
mod state;

pub use dop_core::{Event, EventKind, Level};
pub use error::{ErrorBody, ErrorDetail};
pub use execution::{
    CancelRequest, ClearRequest, ExecOptions, Execution, ExecutionPage, ExecutionRequest, Status,
    Task,
};
pub use logs::{LogEvents, LogText, StreamEnd, CLOSE_TOKEN_REVOKED};
pub use monitor::{
    AutoSync, MonitorDocument, MonitorFinding, MonitorSettings, MonitorSource, MonitorStatus,
};
pub use plans::{
    Finding, IterationInfo, PlanDiffAnswer, PlanList, PlanRemoved, PlanReset, PlanStored,
    PlanSummary, PlanText, PlanUpload, Pong, ResetRequest, StoredStatus, Versions,
};
pub use result::{
    ActionKind, ActionOutcome, ChangeCost, ChangeSource, DopiOutcome, DopiSummary, DopvSummary,
    ExecutionResult, NodeAction, NodeFieldChange, OutcomeResult,
};
pub use state::{
    ActualDisk, ActualInterface, ActualNode, DeployStatus, Drift, NeededFlag, NodeDisk, NodeState,
    NodeStepState, NodeSync, PlanState, Power, RunState, SshEndpoint, StateStreamEnd, StepSetState,
    StepState, SyncCounts, SyncReason, SyncState,
};
