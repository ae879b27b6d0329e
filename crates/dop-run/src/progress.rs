//! The status line of a run on a terminal: the step, `done/total` nodes, failed nodes, the
//! elapsed time, and the nodes still running once only a few are left (the ones an operator
//! waits for at night). Fed with the run's events; knows nothing about how they are written.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dop_core::{EventKind, Level};

/// When this many nodes or fewer are still running, the line names them.
const NAME_RUNNING_AT_MOST: usize = 3;

/// How far one node is in the current step.
#[derive(Debug, Default)]
struct NodeProgress {
    started: usize,
    finished: usize,
    failed: bool,
}

/// The progress of the step that runs now.
#[derive(Debug)]
pub struct StepProgress {
    step: String,
    total: usize,
    commands_per_node: usize,
    since: Instant,
    nodes: BTreeMap<String, NodeProgress>,
}

impl Default for StepProgress {
    fn default() -> StepProgress {
        StepProgress {
            step: String::new(),
            total: 0,
            commands_per_node: 1,
            since: Instant::now(),
            nodes: BTreeMap::new(),
        }
    }
}

impl StepProgress {
    /// Takes one event of the run into account; true when the status line should be redrawn.
    pub fn on_event(
        &mut self,
        kind: EventKind,
        level: Level,
        node: Option<&str>,
        step: Option<&str>,
        fields: &serde_json::Map<String, serde_json::Value>,
    ) -> bool {
        let count = |name: &str| {
            fields
                .get(name)
                .and_then(serde_json::Value::as_u64)
                .and_then(|n| usize::try_from(n).ok())
        };
        match (kind, node) {
            (EventKind::StepStarted, _) => {
                *self = StepProgress {
                    step: step.unwrap_or_default().to_string(),
                    total: count("nodes").unwrap_or(0),
                    commands_per_node: count("commands").unwrap_or(1).max(1),
                    ..StepProgress::default()
                };
                false
            }
            (EventKind::CommandStarted, Some(node)) => {
                self.nodes.entry(node.to_string()).or_default().started += 1;
                true
            }
            (EventKind::CommandFinished, Some(node)) => {
                let progress = self.nodes.entry(node.to_string()).or_default();
                progress.finished += 1;
                progress.failed |= level == Level::Error;
                true
            }
            _ => false,
        }
    }

    fn is_done(&self, node: &NodeProgress) -> bool {
        node.failed || node.finished >= self.commands_per_node
    }

    /// The status line: `step 'deploy': 12/50 nodes done, 1 failed, 2 running (web01,
    /// web02), 00:42`.
    pub fn line(&self) -> String {
        self.line_at(self.since.elapsed())
    }

    fn line_at(&self, elapsed: Duration) -> String {
        let done = self.nodes.values().filter(|n| self.is_done(n)).count();
        let failed = self.nodes.values().filter(|n| n.failed).count();
        let running: Vec<&str> = self
            .nodes
            .iter()
            .filter(|(_, n)| !self.is_done(n) && n.started > n.finished)
            .map(|(name, _)| name.as_str())
            .collect();
        let total = self.total.max(self.nodes.len());
        let mut line = format!("step '{}': {done}/{total} nodes done", self.step);
        if failed > 0 {
            line.push_str(&format!(", {failed} failed"));
        }
        line.push_str(&format!(", {} running", running.len()));
        if !running.is_empty() && total - done <= NAME_RUNNING_AT_MOST {
            line.push_str(&format!(" ({})", running.join(", ")));
        }
        let secs = elapsed.as_secs();
        line.push_str(&format!(", {:02}:{:02}", secs / 60, secs % 60));
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn counts_nodes_not_commands_and_names_the_last_ones_running() {
        let mut p = StepProgress::default();
        let none = fields(json!({}));
        p.on_event(
            EventKind::StepStarted,
            Level::Info,
            None,
            Some("deploy"),
            &fields(json!({"nodes": 5, "commands": 2})),
        );
        for node in ["a", "b", "c", "d", "e"] {
            p.on_event(
                EventKind::CommandStarted,
                Level::Info,
                Some(node),
                Some("deploy"),
                &none,
            );
        }
        // a's first command is done, its second not yet: a is not done.
        p.on_event(
            EventKind::CommandFinished,
            Level::Info,
            Some("a"),
            None,
            &none,
        );
        p.on_event(
            EventKind::CommandStarted,
            Level::Info,
            Some("a"),
            None,
            &none,
        );
        assert_eq!(
            p.line_at(Duration::from_secs(5)),
            "step 'deploy': 0/5 nodes done, 5 running, 00:05"
        );
        // b fails on its first command: done (failed), its second never runs.
        p.on_event(
            EventKind::CommandFinished,
            Level::Error,
            Some("b"),
            None,
            &none,
        );
        p.on_event(
            EventKind::CommandFinished,
            Level::Info,
            Some("a"),
            None,
            &none,
        );
        assert_eq!(
            p.line_at(Duration::from_secs(75)),
            "step 'deploy': 2/5 nodes done, 1 failed, 3 running (c, d, e), 01:15"
        );
    }

    #[test]
    fn a_new_step_starts_from_zero() {
        let mut p = StepProgress::default();
        let none = fields(json!({}));
        p.on_event(
            EventKind::StepStarted,
            Level::Info,
            None,
            Some("one"),
            &fields(json!({"nodes": 1})),
        );
        p.on_event(
            EventKind::CommandStarted,
            Level::Info,
            Some("a"),
            None,
            &none,
        );
        p.on_event(
            EventKind::CommandFinished,
            Level::Info,
            Some("a"),
            None,
            &none,
        );
        p.on_event(
            EventKind::StepStarted,
            Level::Info,
            None,
            Some("two"),
            &fields(json!({"nodes": 4})),
        );
        assert_eq!(
            p.line_at(Duration::ZERO),
            "step 'two': 0/4 nodes done, 0 running, 00:00"
        );
    }
}
