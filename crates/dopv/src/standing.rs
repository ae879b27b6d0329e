//! Where each node stands against the newest plan iteration, from dopv's state alone (no
//! provider is asked): in sync, drifted, pending or unknown, as of the last time dopv looked
//! at it (`refresh`, `sync`, `deploy`). `dopv show`, dopc's state document and dopc's monitor
//! all read it from here, so they never disagree.

use dop_core::plan::ProviderKind;
use dop_core::Plan;
use serde::Serialize;

use crate::actual::{Actual, Difference};
use crate::planner::{self, Action, NodeView, Permissions, Reason};
use crate::provider::{self, NodeSpec, ProviderOptions};
use crate::state::{DopvState, NodeRecord, Status};

/// A node's standing, in one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncState {
    /// As planned, as far as the last look showed.
    InSync,
    /// The plan changed (or a node was added or removed) and no sync applied it yet.
    Pending,
    /// The node differs from what dopv deployed, behind dopv's back (or it is gone).
    Drifted,
    /// The provider could not be asked at the last look: what the node is, is not known.
    /// Never read as "gone".
    Unknown,
}

impl SyncState {
    /// The name (as in JSON).
    pub fn name(self) -> &'static str {
        match self {
            SyncState::InSync => "in_sync",
            SyncState::Pending => "pending",
            SyncState::Drifted => "drifted",
            SyncState::Unknown => "unknown",
        }
    }

    /// Every state, in order.
    pub const ALL: [SyncState; 4] = [
        SyncState::InSync,
        SyncState::Pending,
        SyncState::Drifted,
        SyncState::Unknown,
    ];
}

/// One node's standing.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Standing {
    /// The node.
    pub node: String,
    /// In the newest plan iteration.
    pub in_plan: bool,
    /// Where it stands.
    pub state: SyncState,
    /// What `sync` (with the permissions asked about) would do, as of the last look; `None`
    /// when nothing (in sync) or not known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// How the node differs from the entry it was deployed from (as of `refreshed_ms`).
    pub drift: Vec<Difference>,
    /// Plan keys that changed since the node was deployed.
    pub pending: Vec<String>,
    /// When the provider was last asked (milliseconds since the epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refreshed_ms: Option<u64>,
    /// Why the provider could not be asked at the last look.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_error: Option<String>,
}

impl Standing {
    /// True when a sync with the permissions asked about would change this node.
    pub fn actionable(&self) -> bool {
        self.state != SyncState::Unknown && self.action.as_ref().is_some_and(Action::runs)
    }
}

/// Plan keys that are not the infrastructure's business (dopi's, or how a stop works).
const NOT_DEPLOYED: [&str; 2] = ["jump_hosts", "force_stop"];

/// The standing of every node of the plan and every node only the state still knows, in
/// plan order, then by name.
pub fn standings(
    plan_name: &str,
    plan: &Plan,
    state: &DopvState,
    options: &ProviderOptions,
    permissions: Permissions,
) -> Vec<Standing> {
    let mut names: Vec<&str> = plan.nodes.iter().map(|n| n.name.as_str()).collect();
    names.extend(
        state
            .nodes
            .keys()
            .map(String::as_str)
            .filter(|n| plan.node(n).is_none()),
    );
    names
        .into_iter()
        .map(|name| {
            standing(
                plan_name,
                plan,
                name,
                state.nodes.get(name),
                options,
                permissions,
            )
        })
        .collect()
}

/// The standings of a stored plan's nodes: its newest iteration against dopv's state in the
/// store. Also returns that iteration's plan.
pub fn of_stored_plan(
    store: &dop_store::Store,
    plan_name: &str,
    options: &ProviderOptions,
    permissions: Permissions,
) -> Result<(Plan, Vec<Standing>), String> {
    let plan = store
        .iteration(plan_name, None)
        .map_err(|e| e.to_string())?
        .plan;
    let records = store
        .state(plan_name, dop_store::App::Dopv)
        .map_err(|e| e.to_string())?;
    let state = DopvState::from_records(&records)?;
    let standings = standings(plan_name, &plan, &state, options, permissions);
    Ok((plan, standings))
}

/// The spec dopv builds a node from (credentials resolved from the plan).
pub fn spec_for(plan: &Plan, plan_name: &str, node: &dop_core::plan::Node, port: u16) -> NodeSpec {
    NodeSpec {
        plan: plan_name.to_string(),
        node: node.clone(),
        ssh_port: port,
        credentials: node
            .credentials
            .iter()
            .filter_map(|c| plan.credential(c).cloned())
            .collect(),
        puppet_challenge: None,
    }
}

/// The SSH port of an infrastructure (22 unless it says otherwise).
pub fn ssh_port(plan: &Plan, infrastructure: &str) -> u16 {
    plan.infrastructure(infrastructure)
        .and_then(|i| i.ssh_port)
        .unwrap_or(22)
}

fn standing(
    plan_name: &str,
    plan: &Plan,
    name: &str,
    record: Option<&NodeRecord>,
    options: &ProviderOptions,
    permissions: Permissions,
) -> Standing {
    let planned = plan.node(name);
    let mut out = Standing {
        node: name.to_string(),
        in_plan: planned.is_some(),
        state: SyncState::InSync,
        action: None,
        drift: Vec::new(),
        pending: Vec::new(),
        refreshed_ms: record.and_then(|r| r.refreshed_ms),
        read_error: record.and_then(|r| r.read_error.clone()),
    };
    let (kind, infrastructure, port): (ProviderKind, &str, u16) = match (planned, record) {
        (Some(node), _) => match plan.infrastructure(&node.infrastructure) {
            Some(infra) => (
                infra.provider,
                &node.infrastructure,
                ssh_port(plan, &infra.name),
            ),
            None => return out,
        },
        (None, Some(r)) => (r.provider, &r.desired.infrastructure, r.ssh_port),
        (None, None) => return out,
    };
    let provider =
        match provider::for_infrastructure(kind, infrastructure, plan_name, plan, options) {
            Ok(p) => p,
            Err(e) => {
                out.state = SyncState::Unknown;
                out.read_error.get_or_insert_with(|| e.to_string());
                return out;
            }
        };
    if let Some(r) = record {
        let deployed = spec_for(plan, plan_name, &r.desired, r.ssh_port);
        if let Some(actual) = &r.actual {
            out.drift = actual.drift(&provider.expected(&deployed));
        }
        if let Some(node) = planned {
            out.pending = changed_keys(&r.desired, node);
        }
    }
    // A node never read is taken as its record says: deployed ones exist.
    let assumed = Actual {
        exists: record.is_some_and(|r| r.status != Status::Creating),
        ..Actual::default()
    };
    let actual = record.and_then(|r| r.actual.as_ref()).unwrap_or(&assumed);
    let spec = planned.map(|n| spec_for(plan, plan_name, n, port));
    let kind_of = |field: &str, from: &serde_json::Value, to: &serde_json::Value| {
        provider.change_kind_of(field, from, to)
    };
    let view = NodeView {
        name,
        planned: planned.map(|n| serde_json::to_value(n).unwrap_or_default()),
        record,
        actual,
        expected: spec.as_ref().map(|s| provider.expected(s)),
        kind_of: &kind_of,
    };
    out.action = planner::plan_node(&view, permissions);
    out.state = if out.read_error.is_some() {
        SyncState::Unknown
    } else {
        match &out.action {
            None => SyncState::InSync,
            Some(a) if a.reason == Reason::Missing || !out.drift.is_empty() => SyncState::Drifted,
            Some(_) => SyncState::Pending,
        }
    };
    out
}

/// The plan keys in which `planned` differs from the entry a node was deployed from.
fn changed_keys(deployed: &dop_core::plan::Node, planned: &dop_core::plan::Node) -> Vec<String> {
    let (old, new) = (
        serde_json::to_value(deployed).unwrap_or_default(),
        serde_json::to_value(planned).unwrap_or_default(),
    );
    crate::planner::changed_fields(&old, &new)
        .into_iter()
        .map(|(field, _, _)| field)
        .filter(|field| !NOT_DEPLOYED.contains(&field.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::NodeRecord;

    fn plan(nodes: &str) -> Plan {
        let text =
            format!("name: p\ninfrastructures: {{metal: {{type: baremetal}}}}\nnodes:\n{nodes}");
        dop_core::load_str(&text, None, &dop_core::LookupSettings::default())
            .plan
            .expect("a valid plan")
    }

    /// A record of `node` deployed from `plan`, read back as the provider expects it.
    fn deployed(plan: &Plan, node: &str) -> NodeRecord {
        let desired = plan.node(node).unwrap().clone();
        let spec = spec_for(plan, "p", &desired, 22);
        NodeRecord {
            status: Status::Deployed,
            actual: Some(crate::providers::baremetal::Baremetal.expected(&spec)),
            desired,
            ssh_port: 22,
            provider: ProviderKind::Baremetal,
            iteration: 1,
            generation: 1,
            refreshed_ms: Some(5),
            read_error: None,
            updated_ms: 1,
            error: None,
        }
    }

    use crate::provider::Provider as _;

    #[test]
    fn each_node_gets_the_word_its_records_call_for() {
        let old = plan(
            "  same: {infrastructure: metal}\n  changed: {infrastructure: metal}\n  \
             gone: {infrastructure: metal}\n  dropped: {infrastructure: metal}\n  \
             unreadable: {infrastructure: metal}\n",
        );
        let new = plan(
            "  same: {infrastructure: metal}\n  changed: {infrastructure: metal, fqdn: changed.example.com}\n  \
             gone: {infrastructure: metal}\n  unreadable: {infrastructure: metal}\n  \
             added: {infrastructure: metal}\n",
        );
        let mut state = DopvState::default();
        for n in ["same", "changed", "gone", "dropped", "unreadable"] {
            state.nodes.insert(n.to_string(), deployed(&old, n));
        }
        // Removed behind dopv's back.
        state.nodes.get_mut("gone").unwrap().actual = Some(Actual::default());
        state.nodes.get_mut("unreadable").unwrap().read_error =
            Some("the provider is unavailable".into());

        let options = ProviderOptions::new(std::path::PathBuf::from("/nonexistent"));
        let all = standings("p", &new, &state, &options, Permissions::default());
        let words: Vec<(&str, &str, bool)> = all
            .iter()
            .map(|s| (s.node.as_str(), s.state.name(), s.actionable()))
            .collect();
        assert_eq!(
            words,
            [
                ("same", "in_sync", false),
                ("changed", "pending", true),
                ("gone", "drifted", true),
                ("unreadable", "unknown", false),
                ("added", "pending", true),
                // Removing a node needs --destructive: pending, and held back.
                ("dropped", "pending", false),
            ]
        );
        let by_name = |n: &str| all.iter().find(|s| s.node == n).unwrap();
        assert_eq!(by_name("changed").pending, ["fqdn"]);
        assert_eq!(by_name("gone").drift[0].field, "exists");
        assert_eq!(
            by_name("gone").action.as_ref().unwrap().reason,
            Reason::Missing
        );
        assert_eq!(
            by_name("dropped").action.as_ref().unwrap().reason,
            Reason::RemovedFromPlan
        );
        assert_eq!(by_name("unreadable").refreshed_ms, Some(5));

        let destructive = Permissions {
            destructive: true,
            interruptive: false,
        };
        let all = standings("p", &new, &state, &options, destructive);
        assert!(all
            .iter()
            .find(|s| s.node == "dropped")
            .unwrap()
            .actionable());
    }
}
