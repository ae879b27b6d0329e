//! What dopi needs from dopv's state, read without depending on dopv: per deployed node, the
//! generation (it changes on every (re)deploy) and where its sshd listens. dopv's node records
//! (`node/<name>` under [`App::Dopv`](dop_store::App::Dopv)) carry these fields among others; a
//! test in dopv holds the two in step.

use std::collections::BTreeMap;

use serde::Deserialize;

use dop_store::StateRecords;

/// Where a node's sshd listens, as dopv last saw it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct SshAt {
    /// Its address.
    pub address: String,
    /// Its port.
    pub port: u16,
}

#[derive(Deserialize)]
struct Actual {
    #[serde(default)]
    ssh: Option<SshAt>,
}

#[derive(Deserialize)]
struct Record {
    generation: u64,
    #[serde(default)]
    actual: Option<Actual>,
}

/// A node dopv deployed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployed {
    /// Changes on every (re)deploy.
    pub generation: u64,
    /// Where its sshd listens, when dopv knows.
    pub ssh: Option<SshAt>,
}

/// The nodes in dopv's records (unreadable records are left out: dopv reports those).
pub fn deployed(records: &StateRecords) -> BTreeMap<String, Deployed> {
    records
        .records
        .iter()
        .filter_map(|(key, value)| {
            let node = key.strip_prefix("node/")?;
            let record = Record::deserialize(value).ok()?;
            Some((
                node.to_string(),
                Deployed {
                    generation: record.generation,
                    ssh: record.actual.and_then(|a| a.ssh),
                },
            ))
        })
        .collect()
}
