//! Deciding: how the providers say the nodes are and what the planner makes of it, shown node
//! by node (a `--noop` stops there); then the providers' word is recorded, the run's first
//! write.

use dop_core::{EventKind, Level};
use dop_store::now_ms;
use serde_json::json;

use super::{word, ActionResult, DopvError, NodeOutcome, Operation, Run, Subject};
use crate::actual::Actual;
use crate::planner::{self, Action, ActionKind, NodeView, Permissions, Reason};
use crate::provider::NodeSpec;
use crate::state::node_change;

/// Per subject, in order: the provider's report, or why it could not be had.
pub(super) type Actuals = Vec<Result<Actual, String>>;

impl Run<'_> {
    /// Asks the providers how the nodes are; the nodes that cannot be read are failed
    /// outcomes of their own.
    pub(super) async fn read_nodes(&self) -> (Actuals, Vec<NodeOutcome>) {
        let mut actuals = Vec::new();
        let mut unreadable = Vec::new();
        for s in &self.subjects {
            let read_spec = match &s.record {
                Some(r) => NodeSpec {
                    node: r.desired.clone(),
                    ssh_port: r.ssh_port,
                    ..s.spec.clone()
                },
                None => s.spec.clone(),
            };
            let read = match self.unavailable.get(&s.infrastructure) {
                Some(problem) => Err(format!("the provider is unavailable: {problem}")),
                None => s.provider.read(&read_spec).await.map_err(|e| e.to_string()),
            };
            if let Err(e) = &read {
                self.ctx.event(
                    Level::Error,
                    EventKind::Message,
                    Some(&s.spec.node.name),
                    format!("cannot read the node from its provider: {e}"),
                    json!({}),
                );
                unreadable.push(NodeOutcome {
                    node: s.spec.node.name.clone(),
                    action: ActionKind::Update,
                    result: ActionResult::Failed,
                    error: Some(format!("cannot read the node: {e}")),
                });
            }
            actuals.push(read);
        }
        (actuals, unreadable)
    }

    /// The actions (split where part of a change interrupts the node) and the nodes that
    /// are as planned.
    pub(super) fn decide(&self, actuals: &Actuals) -> (Vec<Action>, Vec<String>) {
        let permissions = match self.opts.operation {
            Operation::Sync(p) => p,
            _ => Permissions::default(),
        };
        let mut actions = Vec::new();
        let mut in_sync = Vec::new();
        for (s, actual) in self.subjects.iter().zip(actuals) {
            let Ok(actual) = actual else { continue };
            match self.action_for(s, actual, permissions) {
                Some(a) => actions.extend(planner::split_interruptive(a)),
                None => in_sync.push(s.spec.node.name.clone()),
            }
        }
        self.announce(&actions);
        (actions, in_sync)
    }

    /// What the command does with one node; `None` when the node is as it should be.
    fn action_for(&self, s: &Subject, actual: &Actual, permissions: Permissions) -> Option<Action> {
        let name = s.spec.node.name.as_str();
        let operation = self.opts.operation;
        if let Operation::Undeploy { .. } = operation {
            return (actual.exists || s.record.is_some()).then(|| Action {
                node: name.to_string(),
                action: ActionKind::Destroy,
                reason: Reason::UndeployRequested,
                changes: Vec::new(),
                held_back: Vec::new(),
                out_of_scope: false,
            });
        }
        let provider = s.provider.clone();
        let kind_of = move |field: &str, from: &serde_json::Value, to: &serde_json::Value| {
            provider.change_kind_of(field, from, to)
        };
        let planned = s
            .in_plan
            .then(|| serde_json::to_value(&s.spec.node).unwrap_or_default());
        let view = NodeView {
            name,
            planned,
            record: s.record.as_ref(),
            actual,
            expected: s.in_plan.then(|| s.provider.expected(&s.spec)),
            kind_of: &kind_of,
        };
        planner::plan_node(&view, permissions).map(|mut a| {
            // `deploy` only creates (and finishes what an earlier run left half done); the
            // rest of what the planner found stays pending for `sync`.
            a.out_of_scope = match operation {
                Operation::Refresh => true,
                Operation::Deploy => {
                    !(matches!(a.action, ActionKind::Create | ActionKind::Adopt)
                        || matches!(a.reason, Reason::Interrupted | Reason::FailedBefore)
                            && s.in_plan)
                }
                _ => false,
            };
            if a.out_of_scope {
                a.held_back.clear();
            }
            a
        })
    }

    /// One `node_planned` event per action: what will (or would) be done, or why not.
    fn announce(&self, actions: &[Action]) {
        for a in actions {
            let level = if a.runs() { Level::Info } else { Level::Warn };
            let what = if self.opts.noop {
                "would"
            } else if a.runs() {
                "will"
            } else {
                "held back:"
            };
            let mut message = format!("{what} {} ({})", word(&a.action), word(&a.reason));
            if !a.held_back.is_empty() {
                message.push_str(&format!(
                    "; needs {}",
                    a.held_back
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" and ")
                ));
            }
            if a.out_of_scope {
                message.push_str(&format!(
                    "; pending, run `dopv sync {}`",
                    self.ctx.plan_name
                ));
            }
            self.ctx.event(level, EventKind::NodePlanned, Some(&a.node), message, json!({"action": a.action, "reason": a.reason, "changes": a.changes, "held_back": a.held_back}));
        }
    }

    /// Records what the providers said about the nodes dopv knows, or that they could not
    /// say; the actions then start from these records.
    pub(super) async fn record_reads(&mut self, actuals: &Actuals) -> Result<(), DopvError> {
        let mut refreshed = Vec::new();
        for (s, actual) in self.subjects.iter_mut().zip(actuals) {
            let Some(record) = s.record.as_mut() else {
                continue;
            };
            match actual {
                Ok(a) => {
                    record.actual = Some(a.clone());
                    record.read_error = None;
                }
                Err(e) => record.read_error = Some(e.clone()),
            }
            record.refreshed_ms = Some(now_ms());
            refreshed.push(node_change(&s.spec.node.name, Some(record)));
        }
        if !refreshed.is_empty() {
            if let Err(e) = self.ctx.write(refreshed).await {
                return Err(DopvError::State {
                    plan: self.ctx.plan_name.clone(),
                    reason: e,
                });
            }
        }
        Ok(())
    }
}
