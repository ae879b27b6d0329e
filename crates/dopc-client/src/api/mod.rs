//! The wire types of dopc's REST API (`/api/v1`): what the client sends and what the server
//! answers. The server builds its answers from the same types where it can, so that the two
//! cannot drift apart; the `openapi` feature derives their schemas for the server's OpenAPI
//! document.

mod execution;
mod logs;
mod monitor;
mod plans;

pub use execution::{ExecOptions, Execution, Status, Task};
pub use logs::{LogEvent, LogText, StreamEnd};
pub use monitor::{AutoSync, MonitorSettings};
pub use plans::{
    Finding, IterationInfo, PlanDiffAnswer, PlanList, PlanRemoved, PlanReset, PlanStored,
    PlanSummary, PlanText, Pong, StoredStatus, Versions,
};
