//! `/executions/{id}/log…`: an execution's log as text and as events.

use serde::{Deserialize, Serialize};

use super::Status;

/// One event of an execution's log (a line of `events.jsonl`, and a message of the live
/// stream).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogEvent {
    /// Its number in the execution, from 1; a stream resumes after the last one seen.
    pub seq: u64,
    /// When, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// `error`, `warn`, `info` or `debug`.
    pub level: String,
    /// What happened (`run_started`, `command_finished`, `node_action_finished`, `message`, …).
    pub kind: String,
    /// The node it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The step it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The text, secrets masked.
    pub message: String,
    /// Details of the kind (counts, states, durations), as the run wrote them.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = HashMap<String, Value>))]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

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
    pub events: Vec<LogEvent>,
    /// The number of the last event returned (`since` when none): ask again from it.
    pub last_seq: u64,
}
