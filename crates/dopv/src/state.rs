//! dopv's records in the store: per node what was deployed (the plan entry, its iteration and
//! a generation that changes on every (re)deploy) and what the provider last reported; and the
//! disk DB, which outlives the nodes so data disks survive an undeploy without `--rmdisk`.

use std::collections::BTreeMap;

use dop_core::plan::{Node, ProviderKind};
use dop_store::StateRecords;
use serde::{Deserialize, Serialize};

use crate::actual::Actual;

/// Key prefix of node records.
pub const NODE_PREFIX: &str = "node/";
/// Key prefix of the disk DB (one record per node: its disks).
pub const DISKS_PREFIX: &str = "disks/";

/// Where a node's deployment stands. Every status but `deployed` is one a run leaves only when
/// it fails or is killed; the next `sync` finishes what it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// A create (or the create half of a redeploy) started and did not finish.
    Creating,
    /// Deployed as `desired` says.
    Deployed,
    /// An in-place change started and did not finish (`desired` is still the old entry).
    Updating,
    /// A destroy started and did not finish.
    Destroying,
    /// The last create failed; what it had built was rolled back.
    Failed,
}

impl Status {
    /// Whether a run that stopped half-way through the node may have left parts of it with the
    /// provider even when the provider does not report a node: a create killed before the node
    /// was complete, a destroy killed before it was done, a rollback that failed. Removing such
    /// a node asks the provider to clean up rather than only forgetting it.
    pub fn may_have_left_parts(self) -> bool {
        matches!(self, Status::Creating | Status::Destroying | Status::Failed)
    }
}

/// What dopv knows about one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Where its deployment stands.
    pub status: Status,
    /// The plan entry it was deployed from (or is being deployed from).
    pub desired: Node,
    /// The SSH port its infrastructure gave it.
    pub ssh_port: u16,
    /// The provider of its infrastructure.
    pub provider: ProviderKind,
    /// The plan iteration `desired` comes from.
    pub iteration: u64,
    /// Changes on every (re)deploy; dopi compares it with the one its state was made on.
    pub generation: u64,
    /// What the provider last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<Actual>,
    /// When the provider was last asked, in milliseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refreshed_ms: Option<u64>,
    /// Why the provider could not be asked at the last look (`actual` is then older): the
    /// node's standing is unknown, never taken for gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_error: Option<String>,
    /// When this record last changed.
    pub updated_ms: u64,
    /// Why the last action on the node failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A data disk in the disk DB.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRecord {
    /// The disk's name in the plan.
    pub name: String,
    /// The provider's id for it (the local provider: the image file).
    pub id: String,
    /// The pool it lives in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Its size in bytes.
    pub size: u64,
    /// The node it belongs to.
    pub node: String,
}

/// dopv's state of a plan.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DopvState {
    /// The store's state serial it was read at.
    pub serial: u64,
    /// Node records by node name.
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Disks by node name.
    pub disks: BTreeMap<String, Vec<DiskRecord>>,
}

impl DopvState {
    /// Reads the records; one that cannot be read is an error naming its key.
    pub fn from_records(records: &StateRecords) -> Result<DopvState, String> {
        let mut state = DopvState {
            serial: records.serial,
            ..DopvState::default()
        };
        for (key, value) in &records.records {
            let unreadable =
                |e: serde_json::Error| format!("the dopv record '{key}' is unreadable: {e}");
            if let Some(node) = key.strip_prefix(NODE_PREFIX) {
                let record = serde_json::from_value(value.clone()).map_err(unreadable)?;
                state.nodes.insert(node.to_string(), record);
            } else if let Some(node) = key.strip_prefix(DISKS_PREFIX) {
                let disks = serde_json::from_value(value.clone()).map_err(unreadable)?;
                state.disks.insert(node.to_string(), disks);
            }
        }
        Ok(state)
    }
}

/// The store change that writes a node record.
pub fn node_change(name: &str, record: Option<&NodeRecord>) -> (String, Option<serde_json::Value>) {
    (
        format!("{NODE_PREFIX}{name}"),
        record.map(|r| serde_json::to_value(r).unwrap_or_default()),
    )
}

/// The store change that writes a node's disks (an empty list removes the entry).
pub fn disks_change(name: &str, disks: &[DiskRecord]) -> (String, Option<serde_json::Value>) {
    (
        format!("{DISKS_PREFIX}{name}"),
        (!disks.is_empty()).then(|| serde_json::to_value(disks).unwrap_or_default()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actual::SshEndpoint;

    /// dopi reads dopv's records through `dop_store::deployment` without depending on dopv:
    /// this holds the two formats together.
    #[test]
    fn dopi_reads_generation_and_address_of_a_record() {
        let plan = dop_core::load_str(
            "name: p\ninfrastructures: {l: {type: local}}\nnodes: {n: {infrastructure: l}}\n",
            None,
            &dop_core::LookupSettings::default(),
        )
        .plan
        .unwrap();
        let record = NodeRecord {
            status: Status::Deployed,
            desired: plan.nodes[0].clone(),
            ssh_port: 2200,
            provider: ProviderKind::Local,
            iteration: 3,
            generation: 42,
            actual: Some(Actual {
                exists: true,
                ssh: Some(SshEndpoint {
                    address: "127.0.9.9".into(),
                    port: 2200,
                }),
                ..Actual::default()
            }),
            refreshed_ms: None,
            read_error: None,
            updated_ms: 1,
            error: None,
        };
        let (key, value) = node_change("n", Some(&record));
        let records = StateRecords {
            serial: 1,
            records: [(key, value.unwrap())].into_iter().collect(),
        };
        let deployed = dop_run::deployment::deployed(&records);
        let n = &deployed["n"];
        assert_eq!(n.generation, 42);
        let ssh = n.ssh.as_ref().unwrap();
        assert_eq!((ssh.address.as_str(), ssh.port), ("127.0.9.9", 2200));
        assert_eq!(
            DopvState::from_records(&records).unwrap().nodes["n"],
            record
        );
    }
}
