//! `/executions/{id}/log…`: an execution's log as text and as events.

use serde::{Deserialize, Serialize};

use dop_core::Event;

use super::Status;

/// The close code of a websocket stream (log or state) whose token was revoked while it was
/// open; the reason is `token revoked`.
pub const CLOSE_TOKEN_REVOKED: u16 = 4401;

/// The last message of a live stream: the execution ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamEnd {
    /// Always `"end"`.
    pub kind: String,
    /// How the execution ended; none when it was removed meanwhile.
    pub status: Option<Status>,
    /// The number of its last event.
    #[serde(default)]
    pub last_seq: u64,
}

/// `GET /executions/{id}/log`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogText {
    /// The execution.
    pub execution: u64,
    /// Where it stands.
    pub status: Status,
    /// The log's text (the whole run, a node's, or from a level up).
    pub log: String,
}

/// `GET /executions/{id}/log?since=SEQ`: the events after a sequence number.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogEvents {
    /// The execution.
    pub execution: u64,
    /// Where it stands.
    pub status: Status,
    /// The events after `since` (of the node, from the level, when asked), in order.
    pub events: Vec<Event>,
    /// The number of the last event returned (`since` when none): ask again from it.
    pub last_seq: u64,
}
