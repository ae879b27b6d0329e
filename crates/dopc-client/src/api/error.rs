//! The body of every error answer.

use serde::{Deserialize, Serialize};

use super::Finding;

/// Every error answer: `{"error": {"code", "message", "details"?}}`, with the HTTP status that
/// says what went wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable, machine-readable: `not_found`, `unauthorized`, `invalid_plan`, `invalid_body`,
    /// `conflict`, `locked`, …
    pub code: String,
    /// What was wrong, and what to do.
    pub message: String,
    /// An invalid plan's findings (absent for other errors).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<Finding>,
}
