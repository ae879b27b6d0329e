//! `/ping` and `/plans…`: the answers about stored plans.

use dop_core::{PlanDiff, Severity};
use serde::{Deserialize, Serialize};

/// `GET /ping`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Pong {
    /// Always `"pong"`.
    pub pong: String,
}

/// One stored iteration of a plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IterationInfo {
    /// 1 for the first iteration, then counting up.
    pub number: u64,
    /// When it was stored, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// SHA-256 of the stored text, hex.
    pub hash: String,
    /// Nodes of this iteration.
    pub nodes: usize,
    /// Step sets.
    pub step_sets: usize,
    /// Steps.
    pub steps: usize,
    /// The file it was read from, as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// A plan in `GET /plans`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlanSummary {
    /// The plan's name.
    pub name: String,
    /// Its latest iteration.
    pub latest: u64,
    /// Its nodes (latest iteration).
    pub nodes: usize,
    /// When it was added (RFC 3339).
    pub created_at: String,
    /// When its latest iteration was stored (RFC 3339).
    pub updated_at: String,
}

/// `GET /plans`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlanList {
    /// The stored plans, by name.
    pub plans: Vec<PlanSummary>,
}

/// What storing a plan did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum StoredStatus {
    /// Its first iteration.
    Added,
    /// A new iteration.
    Updated,
    /// The same text as the latest iteration: nothing was stored.
    Unchanged,
}

impl StoredStatus {
    /// The word, as serialized.
    pub fn name(self) -> &'static str {
        match self {
            StoredStatus::Added => "added",
            StoredStatus::Updated => "updated",
            StoredStatus::Unchanged => "unchanged",
        }
    }
}

/// `POST /plans` and `PUT /plans/{name}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlanStored {
    /// The plan.
    pub name: String,
    /// What was done.
    pub status: StoredStatus,
    /// The iteration now latest.
    pub iteration: IterationInfo,
    /// For an update that stored a new iteration: what changed since the one before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<PlanDiffAnswer>,
    /// With `clear` or `ignore`: what was done to dopi's step state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// `GET /plans/{name}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlanText {
    /// The plan.
    pub name: String,
    /// The iteration shown.
    pub iteration: IterationInfo,
    /// The text, base64 (byte for byte as stored).
    pub content: String,
    /// The text, secrets masked.
    pub text: String,
}

/// `GET /plans/{name}/versions`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Versions {
    /// Oldest first.
    pub versions: Vec<IterationInfo>,
}

/// `GET /plans/{name}/diff`, and the `diff` of an update.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlanDiffAnswer {
    /// The older iteration.
    pub from: u64,
    /// The newer iteration.
    pub to: u64,
    /// What changed, by name.
    pub changes: PlanDiff,
    /// The same, for people (`dopc plan diff`); absent in an update's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// `DELETE /plans/{name}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlanRemoved {
    /// The plan.
    pub name: String,
    /// Always `"removed"`.
    pub status: String,
}

/// `PUT /plans/{name}/reset`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlanReset {
    /// The plan.
    pub name: String,
    /// Node records put back to ready.
    pub reset: u64,
}

/// One problem in a plan the server refused (`error.details` of a 422).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Finding {
    /// Where in the plan (`nodes.web01.interfaces`).
    pub path: String,
    /// The line, when known.
    #[serde(default)]
    pub line: Option<u32>,
    /// The column, when known.
    #[serde(default)]
    pub column: Option<u32>,
    /// What is wrong.
    pub message: String,
    /// `error` or `warning`.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub severity: Severity,
}

/// `POST /plans` and `PUT /plans[/{name}]`: a plan's text, includes already expanded. Exactly
/// one of `content` and `text`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PlanUpload {
    /// The text, base64 (the original's form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// The text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `POST`: store as the next iteration when the plan exists.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// The original's `PUT /plans` named the plan by `plan` alone, to update its state only:
    /// with `clear` or `ignore` that is done on the latest iteration; without, it is refused,
    /// since dop keeps state across iterations by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// `PUT`: remove dopi's step state with the update, so every step is ready again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clear: bool,
    /// `PUT`: steps whose definition changed keep their dopi state (done work is not run
    /// again) instead of being ready again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore: bool,
}

impl PlanUpload {
    /// An upload of `text`.
    pub fn text(text: &str, force: bool) -> PlanUpload {
        PlanUpload {
            text: Some(text.to_string()),
            force,
            ..PlanUpload::default()
        }
    }
}

/// `PUT /plans/{name}/reset` (the body is optional).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct ResetRequest {
    /// Done work too, not only failed and interrupted work.
    pub force: bool,
    /// Only this step set (absent: every step set, or `default` when `step` is given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_set: Option<String>,
    /// Only this step of the step set: its name, or its number from 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}
