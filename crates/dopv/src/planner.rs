//! The planner: what a run would do to each node, and why. It compares three things per node,
//! as the roadmap asks: the newest plan iteration, the entry the node was deployed from (the
//! state), and the node as the provider reports it (drift). It never acts; the driver does.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::actual::Actual;
use crate::provider::ChangeKind;
use crate::state::{NodeRecord, Status};

/// What is done to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Create it.
    Create,
    /// Record an existing node dopv had no record of.
    Adopt,
    /// Change it in place (possibly with a reboot).
    Update,
    /// Destroy it and create it again.
    Redeploy,
    /// Destroy it.
    Destroy,
}

/// Why. Machine-readable, stable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
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

/// Where a change comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The plan changed since the node was deployed.
    Plan,
    /// The node changed (drift).
    Drift,
}

/// One field to change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The plan key (`cores`, `disks`, …), or `power`.
    pub field: String,
    /// What it is now.
    pub from: serde_json::Value,
    /// What it becomes.
    pub to: serde_json::Value,
    /// What applying it costs.
    pub kind: ChangeKind,
    /// Plan change or drift.
    pub source: Source,
    /// It loses data (a data disk removed from the plan).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub destructive: bool,
}

/// A flag a held-back action needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Flag {
    /// `--destructive`.
    #[serde(rename = "--destructive")]
    Destructive,
    /// `--interruptive`.
    #[serde(rename = "--interruptive")]
    Interruptive,
}

impl std::fmt::Display for Flag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Flag::Destructive => "--destructive",
            Flag::Interruptive => "--interruptive",
        })
    }
}

/// One planned action on one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// The node.
    pub node: String,
    /// What.
    pub action: ActionKind,
    /// Why.
    pub reason: Reason,
    /// The fields that change (updates and redeploys).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<Change>,
    /// Flags this action needs and the run does not have; empty: it runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_back: Vec<Flag>,
    /// Not part of this command (e.g. `deploy` leaves changes of existing nodes to `sync`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub out_of_scope: bool,
}

impl Action {
    /// True when the run carries it out.
    pub fn runs(&self) -> bool {
        self.held_back.is_empty() && !self.out_of_scope
    }
}

/// What the run may do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Destroy nodes removed from the plan, redeploy, drop data disks.
    pub destructive: bool,
    /// Reboot nodes.
    pub interruptive: bool,
}

/// One node as the planner sees it.
pub struct NodeView<'a> {
    /// The node's name.
    pub name: &'a str,
    /// Its plan entry in the newest iteration (as JSON), when it is in the plan.
    pub planned: Option<serde_json::Value>,
    /// What dopv recorded.
    pub record: Option<&'a NodeRecord>,
    /// The provider's report.
    pub actual: &'a Actual,
    /// What the provider would report for the planned entry.
    pub expected: Option<Actual>,
    /// The change kind of a plan field on the node's provider, given its old and new value.
    pub kind_of: &'a dyn Fn(&str, &serde_json::Value, &serde_json::Value) -> ChangeKind,
}

/// Plan keys that dopv does not act on: how dopi reaches the node, what happens on a stop.
const IGNORED: [&str; 3] = ["name", "jump_hosts", "force_stop"];

/// The plan key whose settings are compared one by one (`infrastructure_properties.<key>`):
/// a provider may change some of them in place (OpenStack's security groups) and not others.
pub const PROPERTIES: &str = "infrastructure_properties";

/// The fields in which the planned entry differs from the deployed one.
fn plan_changes(
    deployed: &serde_json::Value,
    planned: &serde_json::Value,
    kind_of: &dyn Fn(&str, &serde_json::Value, &serde_json::Value) -> ChangeKind,
) -> Vec<Change> {
    let mut changes = Vec::new();
    for (field, from, to) in changed_fields(deployed, planned) {
        if IGNORED.contains(&field.as_str()) {
            continue;
        }
        changes.push(Change {
            destructive: field == "disks" && loses_disk(&from, &to),
            kind: if field == "infrastructure" {
                ChangeKind::Redeploy
            } else {
                kind_of(&field, &from, &to)
            },
            field,
            from,
            to,
            source: Source::Plan,
        });
    }
    changes
}

/// The plan fields that differ between two node entries (as JSON), with both values (`null`
/// where a side lacks it). `infrastructure_properties` is split into its settings.
pub fn changed_fields(
    deployed: &serde_json::Value,
    planned: &serde_json::Value,
) -> Vec<(String, serde_json::Value, serde_json::Value)> {
    let empty = serde_json::Map::new();
    let old = deployed.as_object().unwrap_or(&empty);
    let new = planned.as_object().unwrap_or(&empty);
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let mut out = Vec::new();
    for key in keys {
        let (from, to) = (
            old.get(key).cloned().unwrap_or_default(),
            new.get(key).cloned().unwrap_or_default(),
        );
        if from == to {
            continue;
        }
        if key == PROPERTIES {
            for (sub, from, to) in changed_fields(&from, &to) {
                out.push((format!("{PROPERTIES}.{sub}"), from, to));
            }
        } else {
            out.push((key.clone(), from, to));
        }
    }
    out
}

/// True when a disk of `from` is missing from `to` or smaller there.
fn loses_disk(from: &serde_json::Value, to: &serde_json::Value) -> bool {
    let sizes = |v: &serde_json::Value| -> BTreeMap<String, u64> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| {
                Some((
                    d.get("name")?.as_str()?.to_string(),
                    d.get("size")?.as_u64()?,
                ))
            })
            .collect()
    };
    let (old, new) = (sizes(from), sizes(to));
    old.iter()
        .any(|(name, size)| new.get(name).is_none_or(|n| n < size))
}

/// What to do with one node for `sync`; `None` when it is as planned.
pub fn plan_node(view: &NodeView<'_>, permissions: Permissions) -> Option<Action> {
    let action = |action, reason, changes: Vec<Change>| {
        let mut held_back = Vec::new();
        let destructive = matches!(action, ActionKind::Destroy | ActionKind::Redeploy)
            && !matches!(
                reason,
                Reason::Interrupted | Reason::FailedBefore | Reason::Missing
            )
            || changes.iter().any(|c| c.destructive);
        if destructive && !permissions.destructive {
            held_back.push(Flag::Destructive);
        }
        let reboots =
            action == ActionKind::Update && changes.iter().any(|c| c.kind == ChangeKind::Reboot);
        if reboots && !permissions.interruptive {
            held_back.push(Flag::Interruptive);
        }
        Some(Action {
            node: view.name.to_string(),
            action,
            reason,
            changes,
            held_back,
            out_of_scope: false,
        })
    };
    let exists = view.actual.exists;
    let Some(planned) = &view.planned else {
        // Not in the plan (any more).
        // Gone already, the destroy only forgets it, unless an earlier run stopped half-way
        // through it: then the provider cleans up what may be left.
        let record = view.record?;
        let reason = if matches!(record.status, Status::Creating | Status::Destroying) {
            Reason::Interrupted
        } else {
            Reason::RemovedFromPlan
        };
        return action(ActionKind::Destroy, reason, Vec::new());
    };
    let Some(record) = view.record else {
        return if exists {
            action(ActionKind::Adopt, Reason::FoundExisting, Vec::new())
        } else {
            action(ActionKind::Create, Reason::NewInPlan, Vec::new())
        };
    };
    match record.status {
        Status::Creating | Status::Destroying => {
            return action(
                if exists {
                    ActionKind::Redeploy
                } else {
                    ActionKind::Create
                },
                Reason::Interrupted,
                Vec::new(),
            )
        }
        Status::Failed => {
            return action(
                if exists {
                    ActionKind::Redeploy
                } else {
                    ActionKind::Create
                },
                Reason::FailedBefore,
                Vec::new(),
            )
        }
        Status::Deployed | Status::Updating => {}
    }
    if !exists {
        return action(ActionKind::Create, Reason::Missing, Vec::new());
    }
    let deployed = serde_json::to_value(&record.desired).unwrap_or_default();
    let mut changes = plan_changes(&deployed, planned, view.kind_of);
    let changed_fields: Vec<String> = changes.iter().map(|c| c.field.clone()).collect();
    if let Some(expected) = &view.expected {
        for d in view.actual.drift(expected) {
            // A field the plan changes is applied anyway; its drift adds nothing.
            if changed_fields.contains(&d.field) {
                continue;
            }
            let kind = if d.field == "power" {
                ChangeKind::InPlace
            } else {
                (view.kind_of)(&d.field, &d.actual, &d.expected)
            };
            changes.push(Change {
                field: d.field,
                from: d.actual,
                to: d.expected,
                kind,
                source: Source::Drift,
                destructive: false,
            });
        }
    }
    if changes.is_empty() {
        return None;
    }
    let worst = changes
        .iter()
        .map(|c| c.kind)
        .max()
        .unwrap_or(ChangeKind::InPlace);
    let drift_only = changes.iter().all(|c| c.source == Source::Drift);
    let reason = match (drift_only, worst) {
        (true, _) => Reason::Drifted,
        (false, ChangeKind::InPlace) => Reason::ChangedInPlace,
        (false, ChangeKind::Reboot) => Reason::ChangedRequiresReboot,
        (false, ChangeKind::Redeploy) => Reason::ChangedRequiresRedeploy,
    };
    if worst == ChangeKind::Redeploy {
        return action(ActionKind::Redeploy, reason, changes);
    }
    action(ActionKind::Update, reason, changes)
}

/// Splits an update that is held back only for `--interruptive` into the part that can run
/// now (in-place changes) and the held-back rest, so that a missing flag holds back no more
/// than it must.
pub fn split_interruptive(action: Action) -> Vec<Action> {
    let only_interruptive = action.held_back == [Flag::Interruptive];
    if action.action != ActionKind::Update || !only_interruptive {
        return vec![action];
    }
    let (now, later): (Vec<Change>, Vec<Change>) = action
        .changes
        .iter()
        .cloned()
        .partition(|c| c.kind == ChangeKind::InPlace);
    if now.is_empty() {
        return vec![action];
    }
    let reason_now = if now.iter().all(|c| c.source == Source::Drift) {
        Reason::Drifted
    } else {
        Reason::ChangedInPlace
    };
    vec![
        Action {
            reason: reason_now,
            changes: now,
            held_back: Vec::new(),
            ..action.clone()
        },
        Action {
            changes: later,
            ..action
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change(field: &str, kind: ChangeKind) -> Change {
        Change {
            field: field.into(),
            from: json!(1),
            to: json!(2),
            kind,
            source: Source::Plan,
            destructive: false,
        }
    }

    #[test]
    fn a_removed_or_shrunk_disk_loses_data_and_an_added_one_does_not() {
        let a = json!([{"name": "a", "size": 10}]);
        let ab = json!([{"name": "a", "size": 10}, {"name": "b", "size": 5}]);
        let small = json!([{"name": "a", "size": 5}]);
        assert!(!loses_disk(&a, &ab));
        assert!(loses_disk(&ab, &a));
        assert!(loses_disk(&a, &small));
        assert!(!loses_disk(&small, &a));
    }

    #[test]
    fn a_missing_interruptive_flag_holds_back_only_the_reboot() {
        let action = Action {
            node: "n".into(),
            action: ActionKind::Update,
            reason: Reason::ChangedRequiresReboot,
            changes: vec![
                change("dns", ChangeKind::InPlace),
                change("cores", ChangeKind::Reboot),
            ],
            held_back: vec![Flag::Interruptive],
            out_of_scope: false,
        };
        let parts = split_interruptive(action);
        assert_eq!(parts.len(), 2);
        assert!(parts[0].runs());
        assert_eq!(parts[0].changes[0].field, "dns");
        assert_eq!(parts[0].reason, Reason::ChangedInPlace);
        assert_eq!(parts[1].held_back, vec![Flag::Interruptive]);
        assert_eq!(parts[1].changes[0].field, "cores");
    }
}
