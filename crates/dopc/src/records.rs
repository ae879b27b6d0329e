//! dopc's records in the store's application records ([`dop_store::Records`]): executions by
//! number (`execution/<20-digit number>`, so key order is number order) and monitor settings by
//! plan (`monitor/<plan>`); and the API tokens in the document `dopc-tokens`
//! (`<store>/dopc-tokens.json`, checked with one `stat` per request, rewritten by
//! `dopc token …` while a server runs).

use std::collections::BTreeMap;

use dop_store::{Result, Store};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The kinds of records dopc keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Executions, keyed by their number.
    Execution,
    /// Monitor settings set through the API, keyed by plan name.
    Monitor,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Execution => "execution/",
            Kind::Monitor => "monitor/",
        }
    }

    /// The key a record is stored under.
    fn key(self, name: &str) -> String {
        match (self, name.parse::<u64>()) {
            (Kind::Execution, Ok(n)) => execution_key(n),
            _ => format!("{}{name}", self.prefix()),
        }
    }
}

fn execution_key(number: u64) -> String {
    format!("{}{number:020}", Kind::Execution.prefix())
}

/// The counter of execution numbers.
const NEXT_EXECUTION: &str = "next/execution";

/// One record.
pub fn get<T: DeserializeOwned>(store: &Store, kind: Kind, name: &str) -> Result<Option<T>> {
    store.records().get(&kind.key(name))
}

/// Every record of a kind, in key order (executions: by number).
pub fn list<T: DeserializeOwned>(store: &Store, kind: Kind) -> Result<Vec<T>> {
    Ok(store
        .records()
        .scan(kind.prefix())?
        .into_iter()
        .map(|(_, v)| v)
        .collect())
}

/// Writes records (`None` removes one) in one durable step.
pub fn write<T: Serialize>(
    store: &Store,
    kind: Kind,
    records: &[(String, Option<T>)],
) -> Result<()> {
    let keyed: Vec<(String, Option<&T>)> = records
        .iter()
        .map(|(name, value)| (kind.key(name), value.as_ref()))
        .collect();
    store.records().write(&keyed)
}

/// Stores a new execution under the next number (1, 2, …, never reused) and returns it.
pub fn add_execution<T: Serialize>(store: &Store, make: impl FnOnce(u64) -> T) -> Result<(u64, T)> {
    store
        .records()
        .add_numbered(NEXT_EXECUTION, execution_key, make)
}

/// The tokens document's name.
pub const TOKENS: &str = "dopc-tokens";

/// The tokens document: token hash → record.
pub type Tokens = BTreeMap<String, serde_json::Value>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executions_list_in_number_order_and_the_layout_on_disk_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for _ in 0..11 {
            add_execution(&store, |n| n).unwrap();
        }
        let numbers: Vec<u64> = list(&store, Kind::Execution).unwrap();
        assert_eq!(numbers, (1..=11).collect::<Vec<_>>(), "10 sorts after 9");
        write(&store, Kind::Monitor, &[("web".to_string(), Some(5u64))]).unwrap();
        assert_eq!(get::<u64>(&store, Kind::Monitor, "web").unwrap(), Some(5));
        // The keys stores of earlier versions hold.
        assert_eq!(
            store
                .records()
                .get::<u64>("execution/00000000000000000010")
                .unwrap(),
            Some(10)
        );
        assert_eq!(store.records().get::<u64>("monitor/web").unwrap(), Some(5));
        assert_eq!(
            store.document_path(TOKENS).unwrap(),
            dir.path().join("dopc-tokens.json")
        );
    }
}
