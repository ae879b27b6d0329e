//! The words of a run's log: the events every dopi and dopv run writes (`events.jsonl`, one a
//! line), that dopc adds to and serves as they are, and that clients read. One type for all of
//! them, so that a kind cannot be spelled two ways.

use serde::{Deserialize, Serialize};

use crate::Level;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// dopc started an execution (before its first tool runs).
    ExecutionStarted,
    /// dopc finished an execution (`fields.status`).
    ExecutionFinished,
    /// A dopi or dopv run started.
    RunStarted,
    /// dopv: what it will do to a node, and why.
    NodePlanned,
    /// dopv: an action that needs a flag the run does not have.
    HeldBack,
    /// dopv: an action on a node started.
    NodeActionStarted,
    /// dopv: an action on a node ended (`fields.result`).
    NodeActionFinished,
    /// dopi: a step started.
    StepStarted,
    /// dopi: a command started on a node.
    CommandStarted,
    /// dopi: a command ended on a node (`fields.state`).
    CommandFinished,
    /// dopi: a step ended.
    StepFinished,
    /// A dopi or dopv run ended.
    RunFinished,
    /// Anything else worth a line.
    Message,
    /// A kind this version does not know (written by a newer one).
    #[serde(other)]
    Other,
}

impl EventKind {
    /// The word in `events.jsonl` and the API.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::ExecutionStarted => "execution_started",
            EventKind::ExecutionFinished => "execution_finished",
            EventKind::RunStarted => "run_started",
            EventKind::NodePlanned => "node_planned",
            EventKind::HeldBack => "held_back",
            EventKind::NodeActionStarted => "node_action_started",
            EventKind::NodeActionFinished => "node_action_finished",
            EventKind::StepStarted => "step_started",
            EventKind::CommandStarted => "command_started",
            EventKind::CommandFinished => "command_finished",
            EventKind::StepFinished => "step_finished",
            EventKind::RunFinished => "run_finished",
            EventKind::Message => "message",
            EventKind::Other => "other",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One event of an execution (a line of `events.jsonl`, and a message of the live stream).
///
/// Its schema is published as `LogEvent` (the name the API has always used).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = LogEvent))]
pub struct Event {
    /// Its number in the execution, from 1, without gaps; a stream resumes after the last one
    /// seen.
    pub seq: u64,
    /// When, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// `error`, `warn`, `info` or `debug`.
    pub level: Level,
    /// What happened.
    pub kind: EventKind,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_keep_their_words_on_the_wire_and_unknown_kinds_are_read() {
        let line = r#"{"seq":3,"time_ms":1,"level":"warn","kind":"command_finished","node":"n1","message":"m","fields":{"state":"failed"}}"#;
        let event: Event = serde_json::from_str(line).unwrap();
        assert_eq!(event.level, Level::Warn);
        assert_eq!(event.kind, EventKind::CommandFinished);
        assert_eq!(serde_json::to_string(&event).unwrap(), line);
        let newer: Event = serde_json::from_str(
            r#"{"seq":1,"time_ms":1,"level":"info","kind":"from_the_future","message":""}"#,
        )
        .unwrap();
        assert_eq!(newer.kind, EventKind::Other);
        for kind in [
            EventKind::RunStarted,
            EventKind::HeldBack,
            EventKind::Message,
        ] {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::from(kind.name())
            );
        }
    }
}
